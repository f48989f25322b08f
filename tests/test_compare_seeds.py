"""`compare --seeds` and `--subset`: every method once per seed, the mean and the sample standard
deviation over the seeds, the protocol at the top of the report, the subset passed to every run,
and a half-finished comparison continued by the same command."""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys

import pytest
import torch

from adautomix_fast import compare
from adautomix_fast.run import records
from adautomix_fast.train import get_args_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--dataset", "digits", "--arch", "tiny", "-j", "0", "--vis-every", "0", "--batch-size", "100"]
# The training's --train-subset (compare --subset passes it on); written before the flag existed.
HAS_SUBSET = any("--train-subset" in a.option_strings for a in get_args_parser()._actions)


def epochs_of(folder) -> list[dict]:
    return [r for r in records.read_jsonl(os.path.join(folder, "log.jsonl")) if r.get("type") == "epoch"]


def starts_of(folder) -> list[dict]:
    return [r for r in records.read_jsonl(os.path.join(folder, "log.jsonl")) if r.get("type") == "start"]


# ---------------------------------------------------------------------------- aggregation, no training
def row(method, seed, top1, **extra):
    return {"method": method, "seed": seed, "headline_head": "student_one", "headline_top1": top1,
            "teacher_top1": None, "epochs": 3, "curve": [(1, top1 / 2), (2, top1)], "error": None, **extra}


def test_mean_and_sample_standard_deviation_over_seeds():
    rows = [row("mixup", 0, 70.0), row("mixup", 1, 72.0), row("mixup", 2, 74.0),
            row("vanilla", 0, 60.0), {"method": "vanilla", "seed": 1, "error": "training exited with 1"},
            row("adautomix", 0, 80.0, mask_spread=0.10, mask_lambda_gap=0.30),
            row("adautomix", 1, 81.0, mask_spread=0.20, mask_lambda_gap=0.10)]
    mixup, vanilla, ada = compare.aggregate(rows)
    assert [mixup["method"], vanilla["method"], ada["method"]] == ["mixup", "vanilla", "adautomix"]
    assert mixup["seeds"] == [0, 1, 2] and mixup["n_seeds"] == 3 and mixup["failed"] == []
    assert mixup["headline_top1"] == pytest.approx(72.0)
    assert mixup["headline_top1_std"] == pytest.approx(2.0)       # n - 1: the population's would be 1.633
    assert mixup["headline_top1_values"] == [70.0, 72.0, 74.0]
    assert mixup["teacher_top1"] is None and mixup["teacher_top1_std"] is None    # no teacher: no number
    # a failed seed is listed, not averaged; one finished seed has no deviation
    assert vanilla["seeds"] == [0] and vanilla["failed"] == [{"seed": 1, "error": "training exited with 1"}]
    assert vanilla["headline_top1"] == 60.0 and vanilla["headline_top1_std"] is None
    # the masks' diagnostics, where the runs logged them: their last-epoch means
    assert ada["mask_spread"] == pytest.approx(0.15) and ada["mask_lambda_gap"] == pytest.approx(0.20)
    assert ada["mask_spread_std"] == pytest.approx(statistics.stdev([0.1, 0.2]))
    assert "mask_spread" not in mixup

    table = compare.mean_table([mixup, vanilla]).splitlines()
    assert table[2].startswith("| mixup | 0, 1, 2 | 72.00 ± 2.00 | ")
    assert table[3].startswith("| vanilla | 0 (1 failed) | 60.00 | ")   # one seed: no ±

    curves = {c["method"]: c for c in compare.mean_curves(rows)}
    assert curves["mixup"]["epochs"] == [1, 2] and curves["mixup"]["mean"] == pytest.approx([36.0, 72.0])
    assert (curves["mixup"]["low"], curves["mixup"]["high"]) == ([35.0, 70.0], [37.0, 74.0])


def test_the_csv_and_json_give_every_seed_and_the_mean_and_std(tmp_path):
    rows = [row("mixup", 0, 70.0), row("mixup", 1, 74.0, mask_spread=0.5), row("vanilla", 0, 60.0),
            row("vanilla", 1, 61.0)]
    compare.write_outputs(str(tmp_path), rows, {"seeds": [0, 1]})
    table = {r["method"]: r for r in csv.DictReader(open(tmp_path / "comparison.csv"))}
    assert list(table) == ["mixup", "vanilla"]
    assert (float(table["mixup"]["headline_top1"]), float(table["mixup"]["headline_top1_std"])) == \
        pytest.approx((72.0, statistics.stdev([70.0, 74.0])))
    assert (table["vanilla"]["headline_top1_s0"], table["vanilla"]["headline_top1_s1"]) == ("60.0", "61.0")
    methods = {m["method"]: m for m in json.loads((tmp_path / "comparison.json").read_text())["methods"]}
    assert methods["mixup"]["mask_spread"] == 0.5 and "mask_spread" not in methods["vanilla"]
    md = (tmp_path / "comparison.md").read_text()
    assert "| mixup | 0, 1 | 72.00 ± 2.83 |" in md and "| mixup | 1 | 74.00 |" in md


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0,x"], "--seeds '0,x': expected a comma list of non-negative whole numbers"),
    (["--seeds", "-1"], "--seeds '-1': expected a comma list"),
    (["--seeds", "0,1,0"], "lists a seed twice"),
    (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds both given"),
    (["--subset", "0"], "--subset '0': expected a number of training images, 1 or more"),
    (["--subset", "many"], "--subset 'many'"),
    (["--subset", "100", "--train-subset", "100"], "--subset and --train-subset both given"),
])
def test_bad_seeds_and_subsets_are_one_line_errors_and_write_nothing(argv, message, tmp_path, capsys):
    assert compare.main(["--methods", "vanilla", "--output", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("present,argv,message", [
    ("vanilla", ["--seeds", "0"], "holds a comparison without --seeds (runs/vanilla)"),
    ("vanilla-s0", [], "holds a comparison over seeds (runs/vanilla-s0)"),
])
def test_a_folder_of_the_other_layout_is_refused(present, argv, message, tmp_path, capsys):
    (tmp_path / "c" / "runs" / present).mkdir(parents=True)
    assert compare.main(["--methods", "vanilla", "--output", str(tmp_path), "--name", "c"] + TRAIN + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert os.listdir(tmp_path / "c" / "runs") == [present]


def test_the_subset_is_passed_to_every_run(monkeypatch):
    """--subset N reaches every training as --train-subset N (checked on the flags compare
    resolves and starts each run with; end to end below once the training has the flag)."""
    from adautomix_fast import train
    seen = []
    real = train.get_args_parser

    class Recording:
        def parse_args(self, flags):
            seen.append(list(flags))
            if not HAS_SUBSET:      # a training without the flag: resolve the rest
                i = flags.index("--train-subset")
                flags = flags[:i] + flags[i + 2:]
            return real().parse_args(flags)

    monkeypatch.setattr(compare, "get_args_parser", Recording)   # the name compare resolves with
    args, train_argv = compare.parse_args(["--methods", "vanilla,mixup", "--seeds", "0,1", "--subset", "300"] + TRAIN)
    planned = compare.plan_runs(args, train_argv)
    assert [(p.method, p.seed, p.name) for p in planned] == [
        ("vanilla", 0, "vanilla-s0"), ("mixup", 0, "mixup-s0"), ("vanilla", 1, "vanilla-s1"), ("mixup", 1, "mixup-s1")]
    assert len(seen) == 4
    for flags, p in zip(seen, planned):
        assert flags[flags.index("--train-subset") + 1] == "300" and flags.count("--train-subset") == 1
        assert flags[flags.index("--seed") + 1] == str(p.seed) and p.flags == flags


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """compare --seeds 0,1 --methods vanilla,mixup on digits, one epoch each (four runs)."""
    out = tmp_path_factory.mktemp("compare-seeds")
    argv = ["--seeds", "0,1", "--methods", "vanilla,mixup", "--output", str(out), "--name", "c", *TRAIN,
            "--epochs", "1"]
    proc = subprocess.run([sys.executable, "-m", "adautomix_fast.compare", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, argv, proc.stdout


def test_seeds_train_every_method_once_per_seed_and_report_means_per_seed_values_and_the_protocol(seeded):
    out, argv, stdout = seeded
    folder = out / "c"
    assert sorted(os.listdir(folder / "runs")) == ["mixup-s0", "mixup-s1", "vanilla-s0", "vanilla-s1"]
    # seed after seed, so that a comparison cut short still holds every method
    order = [line.split(":")[0] for line in stdout.splitlines() if line.startswith("[")]
    assert order == ["[1/4] vanilla seed 0", "[2/4] mixup seed 0", "[3/4] vanilla seed 1", "[4/4] mixup seed 1"]
    top1 = {}
    for method in ("vanilla", "mixup"):
        for seed in (0, 1):
            run = folder / "runs" / f"{method}-s{seed}"
            config = (run / "config.yaml").read_text()
            assert f"\nseed: {seed}\n" in config and f"\nmethod: {method}\n" in config
            top1[method, seed] = epochs_of(run)[-1]["student_one_top1"]
    # the seeds are different trainings (else the deviation would measure nothing)
    assert top1["vanilla", 0] != top1["vanilla", 1] or top1["mixup", 0] != top1["mixup", 1]

    md = (folder / "comparison.md").read_text()
    for (method, seed), value in top1.items():
        assert f"| {method} | {seed} | {value:.2f} |" in md                     # the per-seed row
    for method in ("vanilla", "mixup"):
        values = [top1[method, 0], top1[method, 1]]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert f"| {method} | 0, 1 | {mean:.2f} ± {std:.2f} |" in md            # the mean row

    table = {r["method"]: r for r in csv.DictReader(open(folder / "comparison.csv"))}
    assert float(table["mixup"]["headline_top1_s1"]) == top1["mixup", 1]
    assert float(table["vanilla"]["headline_top1_std"]) == pytest.approx(
        statistics.stdev([top1["vanilla", 0], top1["vanilla", 1]]))
    data = json.loads((folder / "comparison.json").read_text())
    assert [(r["method"], r["seed"], os.path.basename(r["folder"])) for r in data["runs"]] == [
        ("vanilla", 0, "vanilla-s0"), ("mixup", 0, "mixup-s0"), ("vanilla", 1, "vanilla-s1"), ("mixup", 1, "mixup-s1")]
    assert [m["n_seeds"] for m in data["methods"]] == [2, 2]
    for name in ("accuracy_curves.png", "efficiency.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The protocol block comes first and says what the numbers were measured on.
    protocol = md[md.index("## Protocol"):md.index("## Mean over seeds")]
    assert md.index("## Protocol") < md.index("| method |")
    ckpt = torch.load(folder / "runs" / "vanilla-s0" / "checkpoint-last.pt", weights_only=True)
    precision = starts_of(folder / "runs" / "mixup-s1")[0]["precision"]
    for words in ("- Data: digits (bundled with scikit-learn); "
                  f"{ckpt['train_size']} training images, fingerprint {ckpt['train_fingerprint']}, "
                  "the same in every run",
                  "- Network: tiny", "- Budget: 1 epoch of batch size 100 per run", "in all (4 runs,", "- Seeds: 0, 1",
                  f"Python {platform.python_version()}, torch {torch.__version__}, torchvision ",
                  f"- Device: CPU ({compare.cpu_model()}", f"- Precision: {precision} (",
                  "- Training flags: `--dataset digits --arch tiny -j 0 --vis-every 0 --batch-size 100 --epochs 1`"):
        assert words in protocol, (words, protocol)
    command = next(line for line in protocol.splitlines() if line.startswith("- Command: "))
    assert command == f"- Command: `python -m adautomix_fast.compare {shlex.join(argv)}`"


@pytest.mark.parametrize("change,words", [
    (["--epochs", "2"], "epochs 1, not 2"),
    pytest.param(["--epochs", "1", "--subset", "200"], "train_subset None, not 200",
                 marks=pytest.mark.skipif(not HAS_SUBSET, reason="no --train-subset"))])
def test_other_training_settings_for_a_comparison_folder_are_refused_in_one_line(seeded, change, words, capsys):
    out, argv, _ = seeded
    folder = out / "c"
    before = {p: os.path.getmtime(p) for p in [folder / "comparison.md"] + list((folder / "runs").iterdir())}
    assert compare.main(argv[:-2] + change) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"vanilla-s0 was trained with other settings ({words})" in err
    assert before == {p: os.path.getmtime(p) for p in [folder / "comparison.md"] + list((folder / "runs").iterdir())}


def test_a_missing_run_is_the_only_one_trained_again(seeded, tmp_path, capsys):
    out, argv, _ = seeded
    shutil.copytree(out / "c", tmp_path / "c")
    runs = tmp_path / "c" / "runs"
    shutil.rmtree(runs / "mixup-s1")
    sizes = {r: os.path.getsize(runs / r / "log.jsonl") for r in ("vanilla-s0", "mixup-s0", "vanilla-s1")}
    argv = [str(tmp_path) if a == str(out) else a for a in argv]
    assert compare.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines == ["[1/4] vanilla seed 0: already trained", "[2/4] mixup seed 0: already trained",
                     "[3/4] vanilla seed 1: already trained", "[4/4] mixup seed 1: training"]
    assert sizes == {r: os.path.getsize(runs / r / "log.jsonl") for r in sizes}
    assert len(epochs_of(runs / "mixup-s1")) == 1
    assert "| mixup | 1 |" in (tmp_path / "c" / "comparison.md").read_text()


def test_a_half_finished_comparison_resumes_its_interrupted_run_and_trains_the_missing_seed(tmp_path, capsys):
    """Seed 0 finished, seed 1 stopped after its first of two epochs (as a preempted run
    leaves it): the same comparison again reuses seed 0, resumes seed 1 where it stopped and
    reports both seeds."""
    base = ["--methods", "vanilla", "--output", str(tmp_path), "--name", "c", *TRAIN, "--epochs", "2"]
    assert compare.main(base + ["--seeds", "0"]) == 0
    runs = tmp_path / "c" / "runs"
    subprocess.run([sys.executable, "-m", "adautomix_fast.train", *TRAIN, "--epochs", "2", "--method", "vanilla",
                    "--seed", "1", "--output", str(runs), "--run-name", "vanilla-s1", "--stop-after", "1"],
                   cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert len(epochs_of(runs / "vanilla-s1")) == 1
    done = os.path.getsize(runs / "vanilla-s0" / "log.jsonl")
    capsys.readouterr()

    assert compare.main(base + ["--seeds", "0,1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines == ["[1/2] vanilla seed 0: already trained", "[2/2] vanilla seed 1: resuming"]
    assert os.path.getsize(runs / "vanilla-s0" / "log.jsonl") == done
    starts = starts_of(runs / "vanilla-s1")
    assert len(starts) == 2 and starts[-1]["resume_epoch"] == 1      # continued after its first epoch
    assert [e["epoch"] for e in epochs_of(runs / "vanilla-s1")] == [1, 2]
    (entry,) = json.loads((tmp_path / "c" / "comparison.json").read_text())["methods"]
    assert entry["seeds"] == [0, 1] and entry["epochs_values"] == [2, 2] and entry["headline_top1_std"] is not None


@pytest.mark.skipif(not HAS_SUBSET, reason="the training has no --train-subset yet")
def test_a_subset_is_the_same_class_balanced_images_in_every_run(tmp_path):
    argv = ["--seeds", "0,1", "--methods", "vanilla,mixup", "--subset", "200", "--output", str(tmp_path),
            "--name", "c", *TRAIN, "--epochs", "1"]
    assert compare.main(argv) == 0
    runs = tmp_path / "c" / "runs"
    prints = set()
    for run in sorted(runs.iterdir()):
        ckpt = torch.load(run / "checkpoint-last.pt", weights_only=True)
        assert ckpt["config"]["train_subset"] == 200 and ckpt["train_size"] == 200
        prints.add(ckpt["train_fingerprint"])
    assert len(prints) == 1
    md = (tmp_path / "c" / "comparison.md").read_text()
    assert (f"a class-balanced subset of 200 training images (--subset), 200 read, fingerprint {prints.pop()}, "
            "the same in every run") in md
