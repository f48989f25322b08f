"""Every --method through the CLI: both step implementations, its own heads in the logs, exact
resume, evaluation and export of a baseline."""

from __future__ import annotations

import pytest
import torch

from adautomix_fast.registry import METHODS
from adautomix_fast.train import main

from cli_helpers import read_log
from optional import skip_without_requirements

TINY = ["--arch", "tiny", "--img-size", "16", "--workers", "0", "--batch-size", "200", "--no-amp"]
TEACHER_METHODS = tuple(name for name, cls in METHODS.items() if cls.has_teacher)


# AdAutoMix's own CLI runs (both implementations, compiled) are in test_cli.py and test_distributed.py.
CASES = [(m, impl) for m in METHODS for impl in ("reference", "fused") if (m, impl) != ("adautomix", "fused")]


@pytest.mark.parametrize("method,impl", CASES)
def test_every_method_trains_an_epoch_through_the_cli(method, impl, tmp_path, capsys):
    # The fused runs are captured as one graph by dynamo and run without code generation
    # (backend "eager"; the Inductor-compiled steps are tested in test_methods.py), so all the
    # methods stay quick. Batches of 400: 3 steps per epoch.
    skip_without_requirements(method)
    extra = ["--compile-backend", "eager"] if impl == "fused" else []
    code = main(TINY + ["--method", method, "--impl", impl, "--epochs", "1", "--log-interval", "1",
                        "--batch-size", "400", "--output", str(tmp_path), "--run-name", "r"] + extra)
    out = capsys.readouterr().out
    assert code == 0
    log = read_log(tmp_path / "r")
    start, epoch = log[0], [r for r in log if r["type"] == "epoch"][-1]
    assert start["method"] == method and start["impl"] == impl
    heads = {k[:-5] for k in epoch if k.endswith("_top1") and k != "best_top1"}
    if method in TEACHER_METHODS:
        assert heads == {"teacher_one", "teacher_mix", "student_one", "student_mix"}
    else:
        assert heads == {"student_one"}                # heads a method does not have are not reported
        assert "teacher_one" not in out
    assert (epoch["images"] == 360
            and 0 <= epoch[f"{'teacher' if method in TEACHER_METHODS else 'student'}_one_top1"] <= 100)
    train = [r for r in log if r["type"] == "train"]
    assert train and all(r["loss"] == r["loss"] for r in train)        # finite (NaN != NaN)
    if impl == "fused":
        assert train[-1]["recompiles_after_warmup"] == 0 and train[-1]["nonfinite_steps"] == 0


@pytest.mark.parametrize("method", ["cutmix", "automix"])
def test_a_method_resumes_exactly(method, tmp_path, capsys):
    args = TINY + ["--method", method, "--epochs", "2", "--log-interval", "1", "--output", str(tmp_path)]
    assert main(args + ["--run-name", "full"]) == 0
    assert main(args + ["--run-name", "split", "--stop-after", "1"]) == 0
    assert main(["--resume", str(tmp_path / "split")]) == 0
    capsys.readouterr()
    full = [r for r in read_log(tmp_path / "full") if r["type"] == "train"]
    split = [r for r in read_log(tmp_path / "split") if r["type"] == "train"]
    drop = ("img_per_s", "epoch")
    assert [{k: v for k, v in r.items() if k not in drop} for r in full] == \
           [{k: v for k, v in r.items() if k not in drop} for r in split]      # every logged term, bit for bit
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint-last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_baseline_evaluates_and_exports_its_classifier(tmp_path, capsys):
    assert main(TINY + ["--method", "mixup", "--epochs", "1", "--output", str(tmp_path), "--run-name", "m"]) == 0
    export = tmp_path / "mixup.pth"
    capsys.readouterr()
    assert main(["--resume", str(tmp_path / "m"), "--eval-only", "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert "student_one" in out and "teacher_one" not in out and "student_mix" not in out
    sd = torch.load(export, weights_only=True)
    ckpt = torch.load(tmp_path / "m" / "checkpoint-last.pt", weights_only=True)["model"]
    assert torch.equal(sd["fc.weight"], ckpt["student.head_one.weight"])
    assert not any(k.startswith(("head_", "teacher")) for k in sd)


def test_automix_refuses_more_than_two_images(tmp_path, capsys):
    assert main(TINY + ["--method", "automix", "--mix-samples", "3", "--output", str(tmp_path)]) == 2
    assert "AutoMix mixes two images" in capsys.readouterr().err


def test_a_baseline_refuses_adautomix_only_switches(tmp_path, capsys):
    assert main(TINY + ["--method", "mixup", "--random-mix-samples", "--output", str(tmp_path)]) == 2
    assert "applies to adautomix only" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["adautomix", "cutmix"])
def test_training_pictures_and_tensorboard_leave_training_unchanged(method, tmp_path, capsys):
    """--vis-every draws the method's mixed samples and the curves at epoch ends, --tensorboard
    mirrors every record; neither changes a single logged number of the training."""
    args = TINY + ["--method", method, "--epochs", "2", "--log-interval", "1", "--output", str(tmp_path)]
    assert main(args + ["--run-name", "plain", "--vis-every", "0"]) == 0
    assert main(args + ["--run-name", "drawn", "--vis-every", "1", "--tensorboard"]) == 0
    capsys.readouterr()
    plain, drawn = tmp_path / "plain", tmp_path / "drawn"
    for name in ("mix-epoch0001.png", "mix-epoch0002.png", "curves.png"):
        assert (drawn / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert not (plain / name).exists()
    strip = lambda log: [{k: v for k, v in r.items() if k not in ("img_per_s", "train_time_s", "time",
                                                                     "peak_memory_mib")} for r in log[1:]]
    assert strip(read_log(plain)) == strip(read_log(drawn))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(drawn / "tensorboard"))
    events.Reload()
    headline = "teacher_one" if method in TEACHER_METHODS else "student_one"
    epochs = [r for r in read_log(drawn) if r["type"] == "epoch"]
    scalars = events.Scalars(f"epoch/{headline}_top1")
    assert [s.step for s in scalars] == [r["step"] for r in epochs]
    assert [round(s.value, 4) for s in scalars] == [round(r[f"{headline}_top1"], 4) for r in epochs]
    assert len(events.Scalars("train/loss")) == len([r for r in read_log(drawn) if r["type"] == "train"])
