"""`compare --paper T --column C`: a published column as a comparison (its methods, its preset and
epochs) and the measured numbers beside the published ones in comparison.md/.csv/.json and
paper.png; every mismatch a one-line error."""

from __future__ import annotations

import argparse
import csv
import json
import os

import pytest

from adautomix_fast import compare, published, reproduce
from adautomix_fast.errors import UsageError
from adautomix_fast.registry import METHODS

TRAIN = ["--dataset", "digits", "--arch", "tiny", "-j", "0", "--vis-every", "0", "--batch-size", "100"]


def test_a_column_gives_its_methods_its_preset_and_its_epochs():
    s = reproduce.select("1", "cifar100-r18", None)
    assert s.methods == ["vanilla", "mixup", "cutmix", "saliencymix", "fmix", "puzzlemix", "resizemix", "automix",
                         "adautomix"]
    assert s.flags == ["--preset", "cifar100-r18"]                  # the preset's own 800 epochs
    s11 = reproduce.select("table11", None, None)                   # one column: no --column needed
    assert s11.methods == ["vanilla", "mixup", "dada", "meada", "samix", "adautomix"]
    assert s11.flags == ["--preset", "cifar100-r18", "--epochs", "200"]
    r = reproduce.select("released-cifar-cnn", "cifar100-r18-400", ["adautomix", "vanilla"])
    assert r.methods == ["adautomix", "vanilla"] and r.flags[-2:] == ["--epochs", "400"]
    assert "co-mixup" in r.not_in_engine and "attentive-cutmix" in r.not_in_engine
    # a method beside the column's rows: trained, without a published number
    beside = reproduce.select("11", None, ["adautomix", "sada"])
    assert beside.methods == ["adautomix", "sada"]
    rows = reproduce.annotate([{"method": "sada", "n_seeds": 1, "headline_top1_median_last10": 50.0}], beside)
    assert rows[-1] == {"method": "sada", "published": None, "measured": 50.0, "measured_std": None, "n_seeds": 1,
                        "in_engine": True, "compared": True, "difference": None}


@pytest.mark.parametrize("paper, column, methods, message", [
    ("1", None, None, "has 9 columns; choose one with --column"),
    ("1", "cifar10-r18", None, "no such column; its columns: cifar100-r18, cifar100-rx50"),
    ("4", None, None, "no such table"),
    ("8", None, None, "rows are ablation settings"),
    ("6", "cifar100-r18", None, "reports ece"),
    ("released-imagenet", "imagenet-r101", None, "no preset for its setting"),
])
def test_a_column_that_does_not_fit_is_one_line(paper, column, methods, message):
    with pytest.raises(UsageError, match=message) as info:
        reproduce.select(paper, column, methods)
    assert "\n" not in str(info.value)


def test_column_without_paper_is_one_line(tmp_path, capsys):
    assert compare.main(["--column", "cifar100-r18", "--output", str(tmp_path)]) == 2
    assert "give the table with --paper" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def selectable_columns():
    for t in published.TABLES.values():
        if not t.rows_are_methods:
            continue
        for c in t.columns:
            if c.statistic == "top1" and c.preset is not None:
                yield t.key, c.name


@pytest.mark.parametrize("table, column", list(selectable_columns()))
def test_every_trainable_published_column_resolves_to_runs_of_its_setting(table, column):
    s = reproduce.select(table, column, None)
    args = argparse.Namespace(methods=s.methods, seeds=[0], subset=None)
    planned = compare.plan_runs(args, list(s.flags))
    assert [p.method for p in planned] == s.methods and s.methods
    for p in planned:
        assert (p.cfg.dataset, p.cfg.arch, p.cfg.epochs) == (s.column.dataset, s.column.arch, s.column.epochs)
        assert reproduce.setting_difference(s, p.cfg) == ""


def test_annotate_puts_the_mean_over_seeds_beside_the_published_number():
    s = reproduce.select("11", None, ["vanilla", "mixup"])
    entries = [{"method": "vanilla", "n_seeds": 2, "headline_top1_median_last10": 70.0,
                "headline_top1_median_last10_std": 1.5},
               {"method": "mixup", "n_seeds": 0}]
    rows = {r["method"]: r for r in reproduce.annotate(entries, s)}
    assert rows["vanilla"]["published"] == 76.42
    assert rows["vanilla"]["difference"] == pytest.approx(70.0 - 76.42)
    assert rows["vanilla"]["measured_std"] == 1.5
    assert rows["mixup"]["measured"] is None and rows["mixup"]["difference"] is None
    assert list(rows) == ["vanilla", "mixup", "dada", "meada", "samix", "adautomix"]   # the table's order
    md = "\n".join(reproduce.markdown(list(rows.values()), s, ""))
    assert "| vanilla | 70.00 ± 1.50 | 76.42 | -6.42 | 2 |" in md
    assert "| mixup | not trained yet | 78.52 | - | 0 |" in md
    assert "| dada | not in this comparison | 78.86 | - | 0 |" in md


def test_a_paper_comparison_on_digits_reports_measured_published_and_difference(tmp_path, capsys):
    """Table 11's setting with its data set and budget changed to digits for a test: trained end to
    end, the published column beside, the changed setting said in one line."""
    code = compare.main(["--paper", "11", "--methods", "vanilla,mixup", *TRAIN, "--epochs", "1",
                         "--output", str(tmp_path), "--name", "p"])
    assert code == 0
    out = capsys.readouterr().out
    assert "table11, column cifar100-r18: vanilla, mixup" in out
    assert "note: the runs' setting is not the column's (dataset digits, not cifar100; arch tiny, not r18; " \
           "epochs 1, not 200)" in out
    folder = tmp_path / "p"
    md = (folder / "comparison.md").read_text()
    assert "## Against the published numbers" in md and "The runs' setting is not the column's" in md
    with open(folder / "comparison.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    for method, pub in (("vanilla", 76.42), ("mixup", 78.52)):
        assert float(rows[method]["published"]) == pub
        measured = float(rows[method]["headline_top1_median_last10"])
        assert float(rows[method]["difference"]) == pytest.approx(measured - pub)
    paper = json.loads((folder / "comparison.json").read_text())["paper"]
    assert paper["table"] == "table11" and paper["column"] == "cifar100-r18" and paper["epochs"] == 200
    assert paper["mismatch"].startswith("dataset digits")
    assert [r["method"] for r in paper["rows"]][:2] == ["vanilla", "mixup"]
    assert (folder / "paper.png").stat().st_size > 0
    assert all(m in METHODS for m in paper["published"])
    assert os.path.exists(folder / "plan.json")
