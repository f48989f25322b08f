"""Where a comparison trains: the local scheduler over a device list (fake devices: the pinning is
an environment variable, the trainings run on the CPU), submitit's local executor end to end
(the same pickled jobs as on SLURM, preempted with SIGUSR1, requeued and resumed), the sbatch
script of the SLURM launcher (sbatch and srun faked on PATH), --collect and --dry-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from adautomix_fast import compare
from adautomix_fast.errors import UsageError
from adautomix_fast.launch import jobs as joblib, local, slurm
from adautomix_fast.run import records

submitit = pytest.importorskip("submitit")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--dataset", "digits", "--arch", "tiny", "-j", "0", "--vis-every", "0", "--batch-size", "100"]


def run_compare(tmp_path, *argv, env=None, name="c") -> subprocess.CompletedProcess:
    where = [] if argv[0] == "--collect" else ["--output", str(tmp_path), "--name", name]
    cmd = [sys.executable, "-m", "adautomix_fast.compare", *where, *argv]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)


def log_records(folder, kind) -> list[dict]:
    return [r for r in records.read_jsonl(os.path.join(folder, "log.jsonl")) if r.get("type") == kind]


# ---------------------------------------------------------------------------- the device scheduler
PROBE = r"""
import json, os, sys, time
start = time.time()
time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "w") as f:
    json.dump({"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
               "forwarded": os.environ.get("ADAUTOMIX_SIGNALS_FORWARDED")}, f)
sys.exit(int(sys.argv[3]))
"""


def test_the_scheduler_pins_each_run_to_one_device_and_never_shares_one(tmp_path):
    tasks = [local.Task(f"t{i}", f"task {i}", [sys.executable, "-c", PROBE, str(tmp_path / f"t{i}.json"), "1.5",
                                               "3" if i == 2 else "0"])
             for i in range(7)]
    started, finished = [], {}
    with local.DeviceScheduler(["5", "7", "9"], str(tmp_path / "logs")) as scheduler:
        assert scheduler.run(tasks, lambda t: started.append((t.name, t.device)),
                             lambda t, code: finished.__setitem__(t.name, code)) is None
    # every task ran, in order of submission, each where the scheduler says
    assert [name for name, _ in started] == [f"t{i}" for i in range(7)]
    seen = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name, _ in started}
    assert {name: s["device"] for name, s in seen.items()} == dict(started)
    assert {s["device"] for s in seen.values()} == {"5", "7", "9"}          # all devices used
    assert all(s["forwarded"] == "1" for s in seen.values())                 # repeats of a signal are copies
    # at most one run per device at any moment; three at once at the start
    for device in ("5", "7", "9"):
        spans = sorted((s["start"], s["end"]) for s in seen.values() if s["device"] == device)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
    first = sorted(seen.values(), key=lambda s: s["start"])[:3]
    assert max(s["start"] for s in first) < min(s["end"] for s in first)
    # the failed task is reported with its status and the others ran on
    assert finished == {f"t{i}": 3 if i == 2 else 0 for i in range(7)}
    assert (tmp_path / "logs" / "t0.log").exists()


def test_a_stop_signal_reaches_every_running_task_and_no_further_task_starts(tmp_path):
    sleeper = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\ntime.sleep(60)\n"
    tasks = [local.Task(f"t{i}", f"task {i}", [sys.executable, "-c", sleeper]) for i in range(4)]
    started, finished = [], {}

    def on_start(task):
        started.append(task.name)
        if len(started) == 2:     # both devices busy: a scheduler's SIGTERM for this process
            time.sleep(1.0)       # (the children have set their handlers)
            os.kill(os.getpid(), signal.SIGTERM)

    with local.DeviceScheduler(["0", "1"], str(tmp_path / "logs")) as scheduler:
        signum = scheduler.run(tasks, on_start, lambda t, code: finished.__setitem__(t.name, code))
    assert signum == signal.SIGTERM
    assert started == ["t0", "t1"] and finished == {"t0": 143, "t1": 143}


@pytest.mark.parametrize("text, message", [
    ("0,0", "lists a GPU twice"), ("a,b", "comma list of GPU indices"), ("", "comma list of GPU indices")])
def test_bad_gpu_lists_are_one_line_errors(text, message):
    with pytest.raises(UsageError, match=message):
        local.parse_gpus(text)


def test_gpus_all_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(local, "visible_gpu_count", lambda: 0)
    with pytest.raises(UsageError, match="no CUDA GPU is visible"):
        local.parse_gpus("all")
    monkeypatch.setattr(local, "visible_gpu_count", lambda: 3)
    assert local.parse_gpus("all") == ["0", "1", "2"]


def test_compare_on_two_fake_gpus_trains_every_run_once_and_a_rerun_trains_nothing(tmp_path):
    argv = ["--methods", "vanilla,mixup", "--seeds", "0,1", "--gpus", "0,1", *TRAIN, "--epochs", "1"]
    out = run_compare(tmp_path, *argv)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "c"
    devices = {}
    for name in ("vanilla-s0", "mixup-s0", "vanilla-s1", "mixup-s1"):
        record = joblib.read_record(str(folder), name)
        assert record["status"] == "done" and record["code"] == 0 and record["launcher"] == "local"
        devices[name] = record["device"]
        assert (folder / "logs" / f"{name}.log").read_text().count("final top-1") == 1
        assert len(log_records(folder / "runs" / name, "start")) == 1
    assert set(devices.values()) == {"cuda:0", "cuda:1"}
    table = json.loads((folder / "comparison.json").read_text())
    assert [m["method"] for m in table["methods"]] == ["vanilla", "mixup"]
    assert all(m["n_seeds"] == 2 for m in table["methods"])
    # the same command again: nothing trains
    again = run_compare(tmp_path, *argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already trained") == 4 and "started" not in again.stdout
    assert all(len(log_records(folder / "runs" / n, "start")) == 1 for n in devices)


# ---------------------------------------------------------------------------- submitit, local executor
def test_slurm_local_runs_the_jobs_a_stopped_comparison_resumes_and_a_rerun_trains_nothing(tmp_path):
    """Two methods, two seeds through submitit's local executor: first interrupted after one of
    two epochs (--stop-after 1: every run left with a checkpoint), --collect lists them as
    pending; the same command without the stop resumes each from its checkpoint; once more, it
    trains nothing."""
    base = ["--methods", "vanilla,mixup", "--seeds", "0,1", "--launcher", "slurm-local", *TRAIN, "--epochs", "2"]
    first = run_compare(tmp_path, *base, "--stop-after", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "c"
    names = ("vanilla-s0", "mixup-s0", "vanilla-s1", "mixup-s1")
    assert all(joblib.run_state(str(folder / "runs" / n)) == "partial" for n in names)
    assert all(re.fullmatch(r"\d+", joblib.read_record(str(folder), n)["job_id"]) for n in names)
    collected = run_compare(tmp_path, "--collect", str(folder))
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert collected.stdout.count("interrupted, resumes from its checkpoint") == 4
    assert "no run has finished yet" in collected.stdout

    second = run_compare(tmp_path, *base)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("(resumes its checkpoint)") == 4
    for n in names:
        starts = log_records(folder / "runs" / n, "start")
        assert [s["resume_epoch"] for s in starts] == [None, 1]        # resumed, not retrained
        assert [e["epoch"] for e in log_records(folder / "runs" / n, "epoch")] == [1, 2]
        assert joblib.read_record(str(folder), n)["launcher"] == "slurm-local"
    table = json.loads((folder / "comparison.json").read_text())
    assert all(m["n_seeds"] == 2 and m["epochs"] == 2 for m in table["methods"])
    assert table["pending"] == []

    third = run_compare(tmp_path, *base)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("already trained") == 4 and "job " not in third.stdout
    # --collect gives the same table
    assert run_compare(tmp_path, "--collect", str(folder)).returncode == 0
    assert json.loads((folder / "comparison.json").read_text())["methods"] == table["methods"]


def test_a_preempted_slurm_job_checkpoints_is_requeued_and_resumes_exactly(tmp_path):
    """SIGUSR1 to the job (what SLURM sends before the time limit): the training stops at its
    batch with a checkpoint, submitit requeues the same job, which resumes at that batch."""
    folder = tmp_path / "c"
    run = folder / "runs" / "vanilla"
    cmd = [sys.executable, "-m", "adautomix_fast.compare", "--output", str(tmp_path), "--name", "c",
           "--methods", "vanilla", "--launcher", "slurm-local", *TRAIN, "--epochs", "3", "--log-interval", "1"]
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        pid = None
        while pid is None or len(log_records(run, "train")) < 3:
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not start training"
            lock = run / "run.lock"
            match = re.search(r"\bpid (\d+)\b", lock.read_text()) if lock.exists() else None
            pid = int(match.group(1)) if match else None
            time.sleep(0.05)
        os.kill(pid, signal.SIGUSR1)           # the job's task: it runs the training in its process
        assert proc.wait(timeout=300) == 0, (tmp_path / "out.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stops = log_records(run, "stop")
    starts = log_records(run, "start")
    assert [s["signal"] for s in stops] == ["SIGUSR1"]
    assert [(s["resume_epoch"], s["resume_batch"]) for s in starts] == [
        (None, None), (stops[0]["epoch"], stops[0]["batch_in_epoch"])]
    assert [e["epoch"] for e in log_records(run, "epoch")] == [1, 2, 3]
    logs = "".join(p.read_text() for p in (folder / "slurm").glob("*_log.err"))
    assert "Requeued job" in logs
    assert joblib.read_record(str(folder), "vanilla")["status"] == "done"


# ---------------------------------------------------------------------------- SLURM: the sbatch script
@pytest.fixture
def fake_slurm(tmp_path):
    """sbatch and srun on PATH: sbatch keeps a copy of each script it is given and answers as SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nn=$(ls "$FAKE_SBATCH_DIR" | wc -l)\ncp "$1" "$FAKE_SBATCH_DIR/$n.sh"\n'
                                    'echo "Submitted batch job $((4242 + n))"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        os.chmod(bin_dir / tool, 0o755)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_DIR": str(scripts)}, scripts


def test_the_slurm_launcher_submits_one_job_array_with_the_asked_directives(tmp_path, fake_slurm):
    env, scripts = fake_slurm
    argv = ["--methods", "vanilla,mixup", "--seeds", "0,1", "--launcher", "slurm", "--slurm-partition", "gpu",
            "--slurm-time", "1-02:00:00", "--slurm-account", "lab", "--slurm-gpus-per-job", "2",
            "--slurm-sbatch=--qos=high", "--slurm-sbatch", "#SBATCH --constraint a100", "--slurm-mem", "64G",
            "--slurm-setup", "module load cuda", *TRAIN, "--epochs", "1"]
    out = run_compare(tmp_path, *argv, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (script,) = scripts.iterdir()              # one submission: the array
    text = script.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, re.M))
    assert directives["array"] == "0-3%4"
    assert directives["partition"] == "gpu" and directives["account"] == "lab"
    assert directives["time"] == str(26 * 60) and directives["gpus-per-node"] == "2"
    assert directives["ntasks-per-node"] == "1" and directives["nodes"] == "1" and directives["mem"] == "64G"
    assert directives["signal"] == "USR1@120"              # the engine's preemption signal, before the limit
    assert directives["qos"] == "high" and directives["constraint"] == "a100"
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in text and "module load cuda" in text
    assert re.search(r"^srun .*-m submitit\.core\._submit ", text, re.M)
    folder = tmp_path / "c"
    ids = [joblib.read_record(str(folder), n)["job_id"] for n in ("vanilla-s0", "mixup-s0", "vanilla-s1", "mixup-s1")]
    assert ids == ["4242_0", "4242_1", "4242_2", "4242_3"]
    assert f"--collect {folder}" in out.stdout
    # the same command while the jobs are queued submits nothing (SLURM's state unknown here)
    again = run_compare(tmp_path, *argv, env=env)
    assert again.returncode == 0 and len(list(scripts.iterdir())) == 1
    assert again.stdout.count("not submitted again") == 4
    collected = run_compare(tmp_path, "--collect", str(folder))
    assert collected.stdout.count("not started, job 4242_") == 4


def test_the_training_job_pickles_and_its_checkpoint_is_the_same_job(tmp_path):
    import pickle
    job = slurm.TrainingJob(str(tmp_path), joblib.Job("mixup", 1, "mixup-s1", ["--epochs", "2"]), gpus=2)
    copy = pickle.loads(pickle.dumps(job))
    again = copy.checkpoint().function
    assert isinstance(again, slurm.TrainingJob)
    assert (again.folder, again.job, again.gpus) == (job.folder, job.job, 2)


@pytest.mark.parametrize("text, minutes", [("240", 240), ("30:30", 31), ("12:00:00", 720), ("2-00", 2880),
                                           ("1-12:30", 2190), ("1-00:00:01", 1441)])
def test_slurm_times(text, minutes):
    assert slurm.parse_time(text) == minutes


@pytest.mark.parametrize("argv, message", [
    (["--slurm-time", "12:60:00", "--launcher", "slurm"], "--slurm-time"),
    (["--slurm-partition", "gpu"], "applies to --launcher slurm"),
    (["--gpus", "0", "--launcher", "slurm"], "--gpus places runs"),
    (["--launcher", "slurm", "--slurm-sbatch=--array=0-3"], "compare sets --array itself"),
    (["--launcher", "slurm", "--slurm-gpus-per-job", "0"], "must be 1 or more"),
])
def test_bad_launcher_flags_are_one_line_errors_and_write_nothing(argv, message, tmp_path, capsys):
    assert compare.main(["--output", str(tmp_path), "--methods", "vanilla", *TRAIN, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- dry run
def test_the_dry_run_prints_the_jobs_and_their_gpu_hours_and_writes_nothing(tmp_path, capsys):
    code = compare.main(["--paper", "1", "--column", "cifar100-r18", "--seeds", "0,1,2", "--launcher", "slurm",
                         "--slurm-partition", "gpu", "--dry-run", "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\| \w+ seed \d \| new \|", line)]
    assert len(rows) == 27                                    # nine methods, three seeds
    # 800 epochs of 500 steps; AdAutoMix's step costs more than plain training's
    assert all("| 400000 |" in r for r in rows)
    hours = {r.split(" seed")[0][2:]: float(r.split("|")[5].replace(",", "")) for r in rows}
    assert hours["adautomix"] > hours["vanilla"] > 0
    total = float(re.search(r"expected ([\d,.]+) GPU-hours", out).group(1).replace(",", ""))
    assert total == pytest.approx(sum(float(r.split("|")[5].replace(",", "")) for r in rows), rel=0.05)
    assert "#SBATCH --array=0-26%27" in out and "#SBATCH --partition=gpu" in out
    assert list(tmp_path.iterdir()) == []


def test_the_estimate_counts_every_step_and_prefers_a_measured_time(tmp_path):
    from adautomix_fast.launch import estimate
    from adautomix_fast.train import build_config, get_args_parser

    def cfg(*flags):
        return build_config(get_args_parser().parse_args(list(flags)), None)

    # 800 epochs of 500 steps; ME-ADA's set doubles before epochs 10 and 20 (1-based): 9 + 2 x 10 + 4 x 181 epochs
    assert estimate.steps_of(cfg("--preset", "cifar100-r18"), None) == 400_000
    assert estimate.steps_of(cfg("--preset", "table11-meada"), None) == 500 * (9 + 2 * 10 + 4 * 181)
    assert estimate.steps_of(cfg("--preset", "cifar100-r18", "--epochs", "2"), 5000) == 100
    e = estimate.Estimator()
    plain = e.estimate(cfg("--preset", "cifar100-r18", "--method", "vanilla"), None)
    ada = e.estimate(cfg("--preset", "cifar100-r18"), None)
    assert plain["s_per_step"] == pytest.approx(estimate.PLAIN_S_PER_STEP)      # the reference setting itself
    assert ada["s_per_step"] / plain["s_per_step"] == pytest.approx(0.2418 / 0.1584)
    bigger = e.estimate(cfg("--preset", "imagenet-r50", "--method", "vanilla"), None)
    assert bigger["s_per_step"] > 10 * plain["s_per_step"]                      # FLOPs and batch scale it
    # a run of the method that has trained an epoch: its own time per step
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"type": "start", "steps_per_epoch": 10}) + "\n"
                                   + json.dumps({"type": "epoch", "epoch": 1, "train_time_s": 4.0}) + "\n")
    measured = estimate.measured_s_per_step(str(run))
    assert measured == pytest.approx(0.4)
    assert e.estimate(cfg("--preset", "cifar100-r18"), None, measured)["hours"] == pytest.approx(400_000 * 0.4 / 3600)


def test_a_job_of_several_gpus_runs_torchrun_on_its_node(tmp_path, monkeypatch):
    from adautomix_fast import torchrun
    calls = []
    monkeypatch.setattr(torchrun, "main", lambda argv: calls.append(argv) or 0)
    job = slurm.TrainingJob(str(tmp_path), joblib.Job("mixup", 0, "mixup", ["--epochs", "2"]), gpus=4)
    assert job._train(["--resume", "R"]) == 0
    assert calls == [["--standalone", "--nproc_per_node=4", "-m", "adautomix_fast.train", "--resume", "R"]]


def test_a_failed_run_is_reported_with_its_status_and_the_finished_ones_are_tabulated(tmp_path, capsys):
    """The report from the run folders and the job records: a job that ended with an error is a
    failed row, one stopped with a checkpoint is pending, one never started is pending."""
    assert compare.main(["--methods", "vanilla", *TRAIN, "--epochs", "1", "--output", str(tmp_path),
                         "--name", "c"]) == 0                               # vanilla trained
    folder = str(tmp_path / "c")
    # the comparison of four methods that the other three runs' launchers recorded
    joblib.update_record(folder, "mixup", launcher="slurm", job_id="77_1", status="failed", code=1)
    joblib.update_record(folder, "cutmix", launcher="slurm", job_id="77_2", status="stopped", code=138)
    plan = joblib.read_plan(folder)
    plan["argv"] = [a if a != "vanilla" else "vanilla,mixup,cutmix,fmix" for a in plan["argv"]]
    joblib.write_plan(folder, plan)
    capsys.readouterr()
    assert compare.main(["--collect", folder]) == 1                          # a failed run: status 1
    out = capsys.readouterr().out
    assert "failed: training exited with 1" in out
    assert "not finished: cutmix (not started, job 77_2); fmix (not started)" in out
    table = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert [r["method"] for r in table["runs"]] == ["vanilla", "mixup"]
    assert [p["name"] for p in table["pending"]] == ["cutmix", "fmix"]


def test_the_slurm_launcher_without_sbatch_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert compare.main(["--methods", "vanilla", "--launcher", "slurm", *TRAIN, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no sbatch on this machine" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_gpu_indices_are_of_the_gpus_this_process_sees(monkeypatch):
    monkeypatch.setattr(local, "visible_gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")           # e.g. a SLURM allocation without cgroups
    assert local.parse_gpus("all") == ["2", "3"] and local.parse_gpus("1") == ["3"]
    with pytest.raises(UsageError, match="shows 2 GPUs"):
        local.parse_gpus("0,5")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local.parse_gpus("all") == ["0", "1"]


def test_signals_a_training_does_not_stop_on_reach_it_as_sigterm():
    assert local.for_training(signal.SIGHUP) == local.for_training(signal.SIGQUIT) == signal.SIGTERM
    assert [local.for_training(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)] == [
        signal.SIGTERM, signal.SIGUSR1, signal.SIGINT]


def test_bad_input_on_the_gpus_is_one_line_exit_2_and_leaves_no_folder(tmp_path):
    out = run_compare(tmp_path, "--methods", "vanilla,mixup", "--gpus", "0", "--dataset", "cifar10", "--data-dir",
                      str(tmp_path / "missing"), "--arch", "tiny", "-j", "0", "--epochs", "1")
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "missing" in errors[0]
    assert "mixup" not in out.stdout.split("failed")[-1]                 # the second run never started
    assert not (tmp_path / "c").exists()


def test_a_refused_sbatch_is_one_line_and_leaves_no_folder(tmp_path, fake_slurm):
    env, _ = fake_slurm
    sbatch = os.path.join(env["PATH"].split(os.pathsep)[0], "sbatch")
    with open(sbatch, "w") as f:
        f.write("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpux' >&2\nexit 1\n")
    out = run_compare(tmp_path, "--methods", "vanilla", "--launcher", "slurm", "--slurm-partition", "gpux", *TRAIN,
                      env=env)
    assert out.returncode == 2
    # sbatch's own line, then compare's one line (no traceback)
    assert out.stderr.strip().splitlines()[-1] == (
        "error: sbatch refused the job array: sbatch: error: invalid partition specified: gpux; check the --slurm-* "
        "flags")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "c").exists()


def test_the_dry_run_shows_the_script_that_is_submitted(tmp_path, fake_slurm):
    env, scripts = fake_slurm
    argv = ["--methods", "vanilla,mixup", "--launcher", "slurm", "--slurm-partition", "gpu", *TRAIN]
    dry = run_compare(tmp_path, *argv, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert run_compare(tmp_path, *argv, env=env).returncode == 0
    (script,) = scripts.iterdir()
    submitted = script.read_text().strip()
    assert submitted in dry.stdout


def test_collect_reads_the_command_where_it_ran(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "short.yaml").write_text("epochs: 1\n")
    monkeypatch.chdir(work)
    assert compare.main(["--methods", "vanilla", *TRAIN, "--config", "short.yaml", "--name", "c"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert compare.main(["--collect", str(work / "runs" / "c")]) == 0
    assert "| vanilla |" in capsys.readouterr().out


def test_a_stop_signal_for_compare_stops_the_local_jobs_at_their_batch_and_the_command_resumes(tmp_path):
    folder = tmp_path / "c"
    run = folder / "runs" / "vanilla"
    argv = ["--methods", "vanilla", "--launcher", "slurm-local", *TRAIN, "--epochs", "3", "--log-interval", "1"]
    cmd = [sys.executable, "-m", "adautomix_fast.compare", "--output", str(tmp_path), "--name", "c", *argv]
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(log_records(run, "train")) < 3:
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not start training"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)                 # compare's PID alone
        assert proc.wait(timeout=300) == 143, (tmp_path / "out.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert [s["signal"] for s in log_records(run, "stop")] == ["SIGTERM"]
    assert joblib.run_state(str(run)) == "partial"
    assert joblib.read_record(str(folder), "vanilla")["status"] == "stopped"
    again = run_compare(tmp_path, *argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [e["epoch"] for e in log_records(run, "epoch")][-1] == 3
    assert len(log_records(run, "start")) == 2
