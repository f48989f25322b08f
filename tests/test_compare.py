"""`python -m adautomix_fast.compare`: several methods, same data and budget, one report."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

from adautomix_fast import compare

TRAIN = ["--arch", "tiny", "--img-size", "16", "--epochs", "1", "--batch-size", "200", "--workers", "0", "--no-amp"]


def test_compare_trains_each_method_once_and_writes_the_report(tmp_path, capsys):
    argv = ["--methods", "vanilla,mixup", "--output", str(tmp_path), "--name", "c"] + TRAIN
    assert compare.main(argv) == 0
    folder = tmp_path / "c"
    rows = list(csv.DictReader(open(folder / "comparison.csv")))
    assert [r["method"] for r in rows] == ["vanilla", "mixup"]
    data = json.loads((folder / "comparison.json").read_text())
    for r in data["runs"]:
        log = [json.loads(line) for line in open(os.path.join(r["folder"], "log.jsonl"))]
        epochs = [e for e in log if e["type"] == "epoch"]
        # the row is the run's own numbers: last epoch's top-1, the median of its last epochs
        assert r["headline_top1"] == epochs[-1]["student_one_top1"] and r["teacher_top1"] is None
        assert r["headline_top1_median_last10"] == statistics.median(e["student_one_top1"] for e in epochs[-10:])
        assert r["peak_memory_mib"] > 0 and r["train_img_per_s"] > 0
        start = log[0]
        assert start["method"] == r["method"]
    md = (folder / "comparison.md").read_text()
    assert "| vanilla |" in md and "| mixup |" in md
    assert (folder / "accuracy_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in data["runs"]:
        assert r["train_s_per_epoch"] == pytest.approx(r["train_time_s"] / r["epochs"]) and r["train_s_per_epoch"] > 0
    # A second call reuses finished runs instead of training again.
    sizes = {m: os.path.getsize(folder / "runs" / m / "log.jsonl") for m in ("vanilla", "mixup")}
    assert compare.main(argv) == 0
    assert "already trained" in capsys.readouterr().out
    assert sizes == {m: os.path.getsize(folder / "runs" / m / "log.jsonl") for m in ("vanilla", "mixup")}


@pytest.mark.parametrize("argv,message", [
    (["--methods", "mixup,nope"], "unknown ['nope']"),
    (["--methods", "mixup", "--method", "cutmix"], "--method is set by compare itself"),
    (["--methods", "mixup,mixup"], "lists a method twice"),
])
def test_bad_compare_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    assert compare.main(argv + ["--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_bad_training_flag_stops_at_the_first_method(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adautomix_fast.compare", "--methods", "vanilla,mixup",
                           "--output", str(tmp_path), "--name", "c", "--arch", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown --arch 'nope'" in proc.stderr and "[2/2]" not in proc.stdout
    assert not any(tmp_path.iterdir())   # nothing half-written: the comparison folder goes too


def test_a_method_option_goes_only_to_the_methods_that_take_it():
    argv = ["--arch", "tiny", "--beta", "0.5", "--no-lam-concat", "--lam-margin=0.1", "--epochs", "1"]
    assert compare.for_method(argv, "mixup", ["mixup", "adautomix"]) == ["--arch", "tiny", "--epochs", "1"]
    assert compare.for_method(argv, "automix", ["automix", "adautomix"]) == \
        ["--arch", "tiny", "--no-lam-concat", "--lam-margin=0.1", "--epochs", "1"]
    assert compare.for_method(argv, "adautomix", ["mixup", "adautomix"]) == argv
    planned = compare.plan_runs(compare.parse_args(["--methods", "mixup,adautomix"] + argv)[0], argv)
    assert [p.cfg.beta for p in planned] == [0.3, 0.5]      # mixup keeps the declared default


def test_a_method_option_no_compared_method_takes_is_one_line(tmp_path, capsys):
    assert compare.main(["--methods", "vanilla,mixup", "--beta", "0.5", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--beta applies to adautomix, which --methods does not compare" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())
