"""``python -m adautomix_fast.evaluate`` end to end on digits checkpoints: every suite, the files it
writes and their agreement, the corruption readers on generated files in both layouts, the
compare report, and bad input (one line, exit 2, nothing written)."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from adautomix_fast.evaluate.cli import main
from adautomix_fast.evaluate.context import load_run
from adautomix_fast.evaluate.plots import read_data
from adautomix_fast.step.precision import resolve_precision

from cli_helpers import read_log, single_error_line
from optional import skip_without

pytestmark = pytest.mark.slow   # trains two runs (about 10-60 s on 2 cores, depending on load)

FAST = ["--workers", "0", "--no-progress", "--batch-size", "20"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two one-epoch digits runs of the test architecture (seeds 0 and 1), made once (about 10 s
    each on 2 quiet cores)."""
    from adautomix_fast.train import main as train

    out = tmp_path_factory.mktemp("eval-runs")
    for seed in (0, 1):
        code = train(["--arch", "tiny", "--epochs", "1", "--batch-size", "100", "--workers", "0", "--seed", str(seed),
                      "--output", str(out), "--run-name", f"seed{seed}"])
        assert code == 0
    return out / "seed0", out / "seed1"


def evaluate(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def png_ok(path):
    with Image.open(path) as im:
        im.verify()
    return read_data(path)


def digits_val(n, run=None):
    """The first n digits validation images as the run sees them (uint8 [n,H,W,3] at its image
    size: the loader resizes uint8 images, so this is exact) and their labels."""
    from adautomix_fast.data import build_loaders

    size = load_run(str(run)).config["img_size"] if run is not None else None
    _, val, info = build_loaders("digits", None, 1, eval_batch_size=n, workers=0, image_size=size)
    x, y = next(iter(val))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (info.mean, info.std))
    pixels = (x * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy(), y.numpy()


def reference_logits(run_dir, images_u8):
    """The teacher_one logits of the run's checkpoint on uint8 images, computed directly in fp32
    (the suites these are compared with run with --no-amp: the same precision on every CPU)."""
    from adautomix_fast.data.transforms import NORMALIZATION

    run = load_run(str(run_dir))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["digits"])
    x = (torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return run.model.eval_logits(x, ("teacher_one",))["teacher_one"]


# Logits whose top two are closer than this may be ranked either way by another CPU's fp32
# kernels, or by the same CPU at another batch size (different convolution algorithms): 1e-4 is
# a thousand times the fp32 rounding of logits of this size (|z| < 10, epsilon 6e-8).
NEAR_TIE = 1e-4


def top1_bounds(logits, labels):
    """(lowest, highest) top-1 in % that an evaluation of these logits may report: images whose
    top-two logits nearly tie count as wrong for the lowest and right for the highest. Asserts
    that such images are few, so that the bounds still test something."""
    top2 = logits.topk(2, dim=1).values
    tied = (top2[:, 0] - top2[:, 1] < NEAR_TIE).numpy()
    right = (logits.argmax(1).numpy() == labels) & ~tied
    assert tied.mean() <= 0.25, f"{tied.sum()} of {len(tied)} images nearly tie: not data to check accuracy on"
    return 100 * right.mean(), 100 * (right | tied).mean()


def assert_top1(reported, logits, labels):
    low, high = top1_bounds(logits, labels)
    assert low - 1e-9 <= reported <= high + 1e-9, (reported, low, high)


# ---------------------------------------------------------------------------- every suite
def test_every_suite_end_to_end_writes_agreeing_results_report_and_pictures(runs, capsys):
    skip_without("pytorch_grad_cam", "imagecorruptions")     # Grad-CAM panels, synthesised corruptions
    run = runs[0]
    code, out, err = evaluate([run, "--suite", "all", "--limit", 40, "--corruptions", "gaussian_noise,contrast",
                               "--severities", "1,5", "--cam-images", 3, "--no-amp", *FAST], capsys)
    assert code == 0, err
    folder = run / "eval-all-teacher_one-correct"
    assert f"evaluation written to {folder}" in out
    data = json.loads((folder / "results.json").read_text())
    report = (folder / "report.md").read_text()
    assert list(data["results"]) == ["accuracy", "calibration", "fgsm", "pgd", "corruption", "occlusion", "cam"]
    assert data["head"] == "teacher_one" and data["protocol"] == "correct" and data["data"]["images"] == 40
    assert data["run"]["checkpoint"].endswith("checkpoint-last.pt") and data["versions"]["torchmetrics"]
    r = data["results"]

    # accuracy: every head, and the headline equals the checkpoint's predictions computed here
    images, labels = digits_val(40, run)
    assert_top1(r["accuracy"]["top1"], reference_logits(run, images), labels)
    assert set(r["accuracy"]["heads"]) == {"teacher_one", "teacher_mix", "student_one", "student_mix"}
    assert f"| teacher_one | {r['accuracy']['top1']:.2f} | {r['accuracy']['top5']:.2f} |" in report

    # calibration: the bins count every image; the diagram shows exactly these bins
    cal = r["calibration"]
    assert sum(cal["bins"]["count"]) == 40 and cal["ece"] == cal["ece_correct"]
    assert cal["top1"] == pytest.approx(r["accuracy"]["top1"])
    curve = png_ok(folder / "reliability.png")["curves"][0]
    assert curve["count"] == cal["bins"]["count"] and curve["ece"] == pytest.approx(cal["ece"])
    assert f"**{cal['ece']:.2f}%**" in report

    # attacks: clean top-1 is the accuracy, attacked top-1 no higher
    for name in ("fgsm", "pgd"):
        assert r[name]["clean_top1"] == pytest.approx(r["accuracy"]["top1"])
        assert (0 <= r[name]["top1"] <= r[name]["clean_top1"]
                and r[name]["error"] == pytest.approx(100 - r[name]["top1"]))
    assert r["pgd"]["steps"] == 10

    # corruption: the 2 x 2 table, means of it, the heat map shows the same numbers
    cor = r["corruption"]
    assert cor["source"] == "synthesised" and cor["cells"] == 4 and cor["images"]["contrast/5"] == 40
    assert cor["synthesised_at"] == 32 and data["data"]["image_size"] == 16      # made at 32 px, boxed back
    cells = [cor["top1"][c][s] for c in ("gaussian_noise", "contrast") for s in ("1", "5")]
    assert (cor["mean_all"] == pytest.approx(np.mean(cells))
            and cor["clean_top1"] == pytest.approx(r["accuracy"]["top1"]))
    heat = png_ok(folder / "corruption.png")
    assert heat["top1"] == [[cor["top1"][c][s] for s in ("1", "5")] for c in ("gaussian_noise", "contrast")]

    # occlusion: ratio 0 is the clean accuracy; the curve is the table
    occ = r["occlusion"]
    assert occ["patch"] == 1 and occ["cells"] == 256 and occ["masked_patches"][3] == 77   # 16 px digits
    assert occ["top1"][0] == pytest.approx(r["accuracy"]["top1"])
    assert png_ok(folder / "occlusion.png")["curves"][0]["top1"] == occ["top1"]

    # Grad-CAM: the panel's labels are the first images'
    cam = png_ok(folder / "gradcam.png")
    assert [c["label"] for c in cam["clean"]] == labels[:3].tolist() == [c["label"] for c in r["cam"]["clean"]]
    assert r["cam"]["mixer"] == "generator"
    for picture in ("reliability.png", "occlusion.png", "corruption.png", "gradcam.png"):
        assert f"]({picture})" in report
    assert not [p for p in os.listdir(run) if p.startswith(".")]          # no temporary folder left


def test_official_protocol_on_every_image_and_overwrite_rules(runs, capsys):
    run = runs[0]
    args = [run, "--suite", "fgsm,calibration", "--protocol", "official", *FAST]
    code, _, err = evaluate(args, capsys)
    assert code == 0, err
    folder = run / "eval-calibration+fgsm-teacher_one-official"
    data = json.loads((folder / "results.json").read_text())
    assert data["data"]["images"] == 360 and data["results"]["calibration"]["images"] == 360
    cal = data["results"]["calibration"]
    assert cal["ece"] == cal["ece_official"] and data["results"]["fgsm"]["protocol"] == "official"
    # An existing evaluation folder is not overwritten without --overwrite ...
    code, _, err = evaluate(args, capsys)
    assert code == 2 and "--overwrite" in single_error_line(err)
    # ... is replaced with it (nothing else left behind) ...
    code, _, _ = evaluate(args + ["--overwrite", "--limit", 20], capsys)
    assert code == 0 and json.loads((folder / "results.json").read_text())["data"]["images"] == 20
    # ... and --timestamp makes a new one beside it.
    code, out, _ = evaluate(args + ["--timestamp", "--limit", 20], capsys)
    assert code == 0 and "eval-calibration+fgsm-teacher_one-official-" in out
    assert not [p for p in os.listdir(run) if p.startswith(".")]


# ---------------------------------------------------------------------------- corruption files
def write_cifar_c(folder, images, labels, corruptions, shape_override=None):
    """A CIFAR-C folder: severities 1-4 are the clean images, severity 5 is all black."""
    os.makedirs(folder, exist_ok=True)
    black = np.zeros_like(images)
    for c in corruptions:
        stack = np.concatenate([images] * 4 + [black])
        if shape_override is not None:
            stack = np.zeros((len(stack), *shape_override, 3), np.uint8)
        np.save(os.path.join(folder, f"{c}.npy"), stack)
    np.save(os.path.join(folder, "labels.npy"), np.tile(labels, 5))


def per_severity_logits(run, images):
    """teacher_one logits of the clean images (severities 1-4 of the files below) and of the black
    ones (severity 5)."""
    return reference_logits(run, images), reference_logits(run, np.zeros_like(images))


def test_cifar_c_layout_gives_per_severity_accuracy(runs, tmp_path, capsys):
    run = runs[0]
    images, labels = digits_val(30, run)
    write_cifar_c(tmp_path / "c", images, labels, ("fog", "saturate"))
    code, _, err = evaluate([run, "--suite", "corruption", "--corruption-dir", tmp_path / "c", "--corruptions",
                             "fog,saturate", "--out", tmp_path / "ev", "--no-amp", *FAST], capsys)
    assert code == 0, err
    cor = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]["corruption"]
    clean, black = per_severity_logits(run, images)
    assert cor["layout"] == "CIFAR-C (.npy)" and cor["images_per_cell"] == 30
    for c in ("fog", "saturate"):
        for s in "1234":
            assert_top1(cor["top1"][c][s], clean, labels)
        assert_top1(cor["top1"][c]["5"], black, labels)
        # the same images in every clean cell: the same score, whatever the CPU
        assert len({cor["top1"][c][s] for s in "1234"}) == 1
    assert cor["per_severity"]["5"] == pytest.approx(np.mean([cor["top1"][c]["5"] for c in ("fog", "saturate")]))
    fog = cor["top1"]["fog"]
    # fog is standard, saturate is not
    assert cor["mean_standard"] == pytest.approx(np.mean([fog[s] for s in "12345"]))


def test_imagenet_c_layout_gives_per_severity_accuracy(runs, tmp_path, capsys):
    run = runs[0]
    images, labels = digits_val(20, run)
    for s, pixels in ((1, images), (2, np.zeros_like(images))):
        for i, (image, label) in enumerate(zip(pixels, labels)):
            folder = tmp_path / "inc" / "snow" / str(s) / str(label)        # digits classes are "0".."9"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    code, _, err = evaluate([run, "--suite", "corruption", "--corruption-dir", tmp_path / "inc",
                             "--corruptions", "snow", "--severities", "1,2", "--out", tmp_path / "ev", "--no-amp",
                             *FAST], capsys)
    assert code == 0, err
    cor = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]["corruption"]
    clean, black = per_severity_logits(run, images)
    assert cor["layout"] == "ImageNet-C (folders)" and cor["images"] == {"snow/1": 20, "snow/2": 20}
    assert_top1(cor["top1"]["snow"]["1"], clean, labels)
    assert_top1(cor["top1"]["snow"]["2"], black, labels)


# ---------------------------------------------------------------------------- bad input
def bad_input_cases(tmp_path, run):
    images, labels = digits_val(10, run)
    write_cifar_c(tmp_path / "small", images, labels, ("fog",), shape_override=(28, 28))
    write_cifar_c(tmp_path / "partial", images, labels, ("fog",))
    write_cifar_c(tmp_path / "badlabels", images, labels, ("fog",))
    np.save(tmp_path / "badlabels" / "labels.npy", np.zeros((7,), np.int64))
    (tmp_path / "inc" / "snow" / "1" / "3").mkdir(parents=True)
    Image.fromarray(images[0]).save(tmp_path / "inc" / "snow" / "1" / "3" / "a.png")
    (tmp_path / "empty").mkdir()
    corr = ["--suite", "corruption", "--corruption-dir"]
    return [
        ([run, *corr, tmp_path / "missing"], "no such folder"),
        ([run, *corr, tmp_path / "empty"], "neither the CIFAR-C layout"),
        ([run, *corr, tmp_path / "partial"], "missing gaussian_noise.npy"),
        ([run, *corr, tmp_path / "small", "--corruptions", "fog"],
         "images are 28x28 but the checkpoint was trained on 16x16"),
        ([run, *corr, tmp_path / "badlabels", "--corruptions", "fog"], "expected labels of shape [5n]"),
        ([run, *corr, tmp_path / "inc", "--corruptions", "snow"], "missing folder snow/2"),
        ([run, "--head", "teacher_two"],
         "no such head; choose one of teacher_one, teacher_mix, student_one, student_mix"),
        ([run, "--suite", "accuracy,speed"], "--suite: unknown speed"),
        ([run, "--corruptions", "rain"], "--corruptions: unknown rain"),
        ([run, "--occlusion-patch", "3", "--suite", "occlusion"], "does not divide the image size 16"),
        ([tmp_path / "nowhere"], "no such run folder or checkpoint file"),
        ([tmp_path / "empty"], "has no checkpoint-last.pt"),
        ([run, runs_second(run)], "pass --compare"),
    ]


def runs_second(run):
    return os.path.join(os.path.dirname(run), "seed1")


def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys):
    run = runs[0]
    before = sorted(os.listdir(run))
    for args, message in bad_input_cases(tmp_path, run):
        code, _, err = evaluate([*args, *FAST], capsys)
        assert code == 2, (args, err)
        assert message in single_error_line(err), (message, err)
        assert sorted(os.listdir(run)) == before, args


# ---------------------------------------------------------------------------- compare
def test_compare_two_runs_in_one_report(runs, tmp_path, capsys):
    args = ["--compare", *runs, "--suite", "calibration,occlusion", "--limit", 30, "--out", tmp_path / "cmp", *FAST]
    code, out, err = evaluate(args, capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "cmp" / "results.json").read_text())
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert [r["name"] for r in data["runs"]] == ["seed0", "seed1"] and [r["seed"] for r in data["runs"]] == [0, 1]
    single = [json.loads((run / "eval-calibration+occlusion-teacher_one-correct" / "results.json").read_text())
              for run in runs]                                             # each run keeps its own evaluation
    eces = [s["results"]["calibration"]["ece"] for s in single]
    assert [r["suites"]["calibration"]["ECE"] for r in data["runs"]] == pytest.approx(eces)
    method = data["methods"]["adautomix (tiny)"]
    assert method["runs"] == ["seed0", "seed1"]
    assert method["suites"]["calibration"]["ECE"]["mean"] == pytest.approx(np.mean(eces))
    # the headline: the median of the last epochs of each summary.csv (one epoch here)
    finals = []
    for run in runs:
        with open(run / "summary.csv", newline="") as f:
            finals.append(float(list(csv.DictReader(f))[-1]["teacher_one_top1"]))
    assert [r["last_epochs"]["median"] for r in data["runs"]] == pytest.approx(finals)
    assert method["median_last_epochs"]["mean"] == pytest.approx(np.mean(finals))
    assert len(png_ok(tmp_path / "cmp" / "reliability.png")["curves"]) == 2
    occ = png_ok(tmp_path / "cmp" / "occlusion.png")["curves"]
    assert [c["top1"] for c in occ] == [s["results"]["occlusion"]["top1"] for s in single]
    assert "seed0" in report and "seed1" in report and "Mean over seeds" in report
    # A second comparison reuses the runs' evaluations.
    code, out, _ = evaluate(args[:-len(FAST) - 2] + ["--out", tmp_path / "cmp2", *FAST], capsys)
    assert code == 0 and out.count("reusing") == 2
    # ... but not an evaluation made in another precision: it says so in one line.
    other = "--no-amp" if resolve_precision(None, "bf16", "cpu").amp else "--amp"
    code, _, err = evaluate(args[:-len(FAST) - 2] + ["--out", tmp_path / "cmp3", other, *FAST], capsys)
    assert code == 2 and "other settings" in single_error_line(err)


@pytest.fixture(scope="session")
def mixup_run(runs):
    """A one-epoch mixup baseline run beside the AdAutoMix ones (one head: student_one)."""
    from adautomix_fast.train import main as train

    out = runs[0].parent
    assert train(["--method", "mixup", "--arch", "tiny", "--epochs", "1", "--batch-size", "100", "--workers", "0",
                  "--output", str(out), "--run-name", "mixup"]) == 0
    return out / "mixup"


def test_a_baseline_run_is_evaluated_on_its_own_head_and_compared_by_method(runs, mixup_run, tmp_path, capsys):
    skip_without("pytorch_grad_cam")
    code, _, err = evaluate([mixup_run, "--suite", "accuracy,calibration,cam", "--limit", 20, "--cam-images", 2, *FAST],
                            capsys)
    assert code == 0, err
    data = json.loads((mixup_run / "eval-accuracy+calibration+cam-student_one-correct" / "results.json").read_text())
    assert (data["head"] == "student_one" and data["run"]["heads"] == ["student_one"]
            and data["run"]["method"] == "mixup")
    assert list(data["results"]["accuracy"]["heads"]) == ["student_one"] and data["results"]["cam"]["mixer"] == "mixup"
    code, _, err = evaluate([mixup_run, "--head", "teacher_one", *FAST], capsys)
    assert code == 2 and "no such head; choose one of student_one" in single_error_line(err)
    code, _, err = evaluate(["--compare", runs[0], mixup_run, "--suite", "calibration", "--limit", 20,
                             "--out", tmp_path / "cmp", *FAST], capsys)
    assert code == 0, err
    cmp = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(cmp["methods"]) == {"adautomix (tiny)", "mixup (tiny)"}
    assert [r["head"] for r in cmp["runs"]] == ["teacher_one", "student_one"]


def test_default_precision_is_the_trainings_so_every_head_scores_as_logged(runs, tmp_path, capsys):
    """Without --amp/--no-amp the suite uses the training's precision rule for this machine, so
    each head's top-1 equals the run's last logged evaluation; --no-amp is fp32 anywhere."""
    expected = resolve_precision(None, "bf16", "cpu")
    # The training's own evaluation batches (its batch size), so that each image is scored by the
    # same kernels as in the log: another batch size may round near-tied logits the other way.
    batch = load_run(str(runs[0])).config["batch_size"]
    code, out, _ = evaluate([runs[0], "--suite", "accuracy", "--out", tmp_path / "default", "--workers", 0,
                             "--batch-size", batch], capsys)
    assert code == 0 and expected.reason in out
    with open(tmp_path / "default" / "results.json") as f:
        result = json.load(f)
    assert (result["precision"], result["precision_reason"], result["amp"]) == (expected.label, expected.reason,
                                                                               expected.amp)
    logged = [r for r in read_log(runs[0]) if r["type"] == "epoch"][-1]
    for head, scores in result["results"]["accuracy"]["heads"].items():
        assert scores["top1"] == pytest.approx(logged[f"{head}_top1"]), head

    code, out, _ = evaluate([runs[0], "--suite", "accuracy", "--out", tmp_path / "fp32", "--workers", 0, "--no-amp"],
                            capsys)
    with open(tmp_path / "fp32" / "results.json") as f:
        assert code == 0 and json.load(f)["precision"] == "fp32"


# ---------------------------------------------------------------------------- checkpoints and leftovers
def test_a_run_folder_with_only_its_best_checkpoint_names_checkpoint_best(runs, tmp_path, capsys):
    folder = tmp_path / "pruned"            # e.g. checkpoint-last.pt deleted to save space
    folder.mkdir()
    shutil.copy(runs[0] / "checkpoint-best.pt", folder / "checkpoint-best.pt")
    code, _, err = evaluate([folder, *FAST], capsys)
    assert code == 2
    assert single_error_line(err) == (f"error: {folder} has no checkpoint-last.pt but has checkpoint-best.pt: "
                                      "pass --checkpoint best")
    assert os.listdir(folder) == ["checkpoint-best.pt"]
    code, _, err = evaluate([folder, "--checkpoint", "best", "--suite", "accuracy", "--limit", 20, *FAST], capsys)
    assert code == 0, err


def start_endless_evaluation(run, dest, log) -> subprocess.Popen:
    """An evaluation into ``dest`` that runs until it is killed (PGD of a million steps)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "adautomix_fast.evaluate", str(run), "--suite", "pgd",
                                 "--pgd-steps", "1000000", "--out", str(dest), *FAST], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT)


def wait_until_evaluating(proc: subprocess.Popen, log, timeout: float = 300.0) -> str:
    """Wait for the evaluation's first line, printed once its staging folder is made and held;
    returns its output so far."""
    deadline = time.monotonic() + timeout
    while "evaluating " not in log.read_text():
        if proc.poll() is not None:
            pytest.fail(f"the evaluation ended (rc {proc.returncode}) before it began:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the evaluation to begin")
        time.sleep(0.05)
    return log.read_text()


def staging_folders(parent) -> set[str]:
    return {p for p in os.listdir(parent) if p.startswith(".ev.tmp-")}


def test_a_killed_evaluations_staging_folder_is_removed_by_the_next_and_a_live_ones_is_kept(runs, tmp_path, capsys):
    dest = tmp_path / "ev"
    # Folders of other names: another destination's, and one mkdtemp never makes.
    decoys = {".other.tmp-abcdefgh", ".ev.tmp-keep"}
    for name in decoys:
        (tmp_path / name).mkdir()
    killed = start_endless_evaluation(runs[0], dest, tmp_path / "killed.log")
    wait_until_evaluating(killed, tmp_path / "killed.log")
    killed.kill()                           # SIGKILL: no clean-up runs
    killed.wait()
    (stale,) = staging_folders(tmp_path) - decoys
    live = start_endless_evaluation(runs[0], dest, tmp_path / "live.log")
    try:
        out = wait_until_evaluating(live, tmp_path / "live.log")
        live.send_signal(signal.SIGSTOP)    # alive and holding its folder, and it stays where it is
        assert f"removed {tmp_path / stale}, left by an evaluation that was killed" in out
        (held,) = staging_folders(tmp_path) - decoys
        assert held != stale
        # A concurrent evaluation into the same destination keeps the live one's folder.
        code, out, err = evaluate([runs[0], "--suite", "accuracy", "--limit", 20, "--out", dest, *FAST], capsys)
        assert code == 0 and "removed" not in out, err
        assert (tmp_path / held).is_dir()
    finally:
        live.kill()                         # ends a stopped process too
        live.wait()
    code, out, err = evaluate([runs[0], "--suite", "accuracy", "--limit", 20, "--out", dest, "--overwrite", *FAST],
                              capsys)
    assert code == 0 and f"removed {tmp_path / held}" in out, err
    assert {p for p in os.listdir(tmp_path) if p.startswith(".")} == decoys
