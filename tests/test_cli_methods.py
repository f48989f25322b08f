"""Every --method through the CLI: both step implementations, its own heads in the logs, exact
resume, evaluation and export of a baseline."""

from __future__ import annotations

import json
import os

import pytest
import torch

from adautomix_fast.methods import METHODS
from adautomix_fast.train import main

TINY = ["--arch", "tiny", "--img-size", "16", "--workers", "0", "--batch-size", "200", "--no-amp"]
TEACHER_METHODS = ("adautomix", "automix")


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# AdAutoMix's own CLI runs (both implementations, compiled) are in test_cli.py and test_distributed.py.
CASES = [(m, impl) for m in METHODS for impl in ("reference", "fused") if (m, impl) != ("adautomix", "fused")]


@pytest.mark.parametrize("method,impl", CASES)
def test_every_method_trains_an_epoch_through_the_cli(method, impl, tmp_path, capsys):
    # The fused runs are captured as one graph by dynamo and run without code generation
    # (backend "eager"; the Inductor-compiled steps are tested in test_methods.py), so all the
    # methods stay quick. Batches of 400: 3 steps per epoch.
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
    assert epoch["images"] == 360 and 0 <= epoch[f"{'teacher' if method in TEACHER_METHODS else 'student'}_one_top1"] <= 100
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
