"""Real images end to end: a short AdAutoMix run on real CIFAR-10 learns well above chance, draws
its mixed samples and passes ``evaluate --suite calibration``.

Runs where ``$ADAUTOMIX_DATA/cifar10`` holds the real CIFAR-10 in any layout the engine reads
(``.ci/run`` extracts it there when the machine has the archive); skipped with the reason
otherwise (``conftest.real_data``).

How the bound was chosen: three runs of exactly this test's recipe (seeds 0, 1, 2; torch 2.14.1,
2-core AMD EPYC with AVX2, fp32) ended with the headline head (the EMA teacher's one-hot head) at
26.80%, 27.80% and 30.25% on the 2,000 test images (after epochs 1 and 2: 22.65-24.05% and
24.70-28.30%). The test asks for 20%: 6.8 points below the lowest, so that another CPU's rounding
or another seed's draw does not fail it, and twice chance (10%), which a run that does not learn
(a broken mix, labels that do not follow the images, a teacher left at its random start) stays
near.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from adautomix_fast.evaluate.cli import main as evaluate
from adautomix_fast.train import main as train

from cli_helpers import read_log

pytestmark = pytest.mark.slow   # about 1 minute on 2 quiet cores

ARCH = "tiny"   # the test network: AdAutoMix's resnet20 teacher was at 14-20% after 100-200 steps (docs/results.md)
SUBSET = 2000            # class-balanced training images (--train-subset)
BATCH = 50
EPOCHS = 3               # 40 steps each: 120 steps
TEST_PER_CLASS = 200     # evaluation images per class, where the data is held as class folders
# The released schedule's window (about 1,000 steps from the start) would leave a 120-step teacher
# at its random start; scaled by docs/results.md's rule it would fall below 0: the digits demo's
# short-run schedule instead.
EMA = ["--ema-start", "0.9", "--ema-end", "0.99"]
TOP1_BOUND = 20.0


def _smaller_test_split(root: str, folder) -> str:
    """``root`` with its test split cut to TEST_PER_CLASS images per class, as links (the training
    split is linked whole, so the run reads the real layout and draws its subset from it); a layout
    without class folders (the pickles) is returned as it is."""
    splits = [s for s in ("test", "val") if os.path.isdir(os.path.join(root, s))]
    if not os.path.isdir(os.path.join(root, "train")) or not splits:
        return root
    folder.mkdir(parents=True)
    os.symlink(os.path.join(root, "train"), folder / "train")
    for cls in sorted(os.listdir(os.path.join(root, splits[0]))):
        source = os.path.join(root, splits[0], cls)
        if not os.path.isdir(source):
            continue
        (folder / "test" / cls).mkdir(parents=True)
        for name in sorted(os.listdir(source))[:TEST_PER_CLASS]:
            os.symlink(os.path.join(source, name), folder / "test" / cls / name)
    return str(folder)


def train_recipe(data: str, output: str, seed: int = 0) -> int:
    """The test's run (also how its bound was measured, over seeds)."""
    return train(["--dataset", "cifar10", "--data-dir", data, "--arch", ARCH, "--method", "adautomix",
                  "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--train-subset", str(SUBSET), *EMA,
                  "--seed", str(seed), "--workers", "0", "--vis-every", "1", "--output", output, "--run-name", "real"])


def test_adautomix_learns_real_cifar10_draws_its_mixes_and_is_evaluated(real_data, tmp_path, capsys):
    data = _smaller_test_split(real_data("cifar10"), tmp_path / "cifar10")
    code = train_recipe(data, str(tmp_path / "runs"))
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    run = tmp_path / "runs" / "real"
    log = read_log(run)
    start = next(r for r in log if r["type"] == "start")
    assert f"subset of {SUBSET} of 50000 training images" in start["data_layout"]
    epochs = [r for r in log if r["type"] == "epoch"]
    assert len(epochs) == EPOCHS
    top1 = epochs[-1]["teacher_one_top1"]
    assert top1 >= TOP1_BOUND, f"teacher top-1 {top1:.2f}% after {EPOCHS} epochs on real CIFAR-10 (bound {TOP1_BOUND}%)"
    # the masks are measured on real images: finite, and a share of the image in [0, 1]
    assert 0 <= epochs[-1]["mask_spread"] <= 0.5 and 0 <= epochs[-1]["mask_lambda_gap"] <= 1

    # the mixed-sample picture of real images, one per epoch
    for epoch in range(1, EPOCHS + 1):
        with Image.open(run / f"mix-epoch{epoch:04d}.png") as im:
            im.verify()
    with Image.open(run / f"mix-epoch{EPOCHS:04d}.png") as im:
        assert min(im.size) >= 200   # a grid of images, not an empty figure

    # in the training evaluation's batches: the same sums, so the same top-1
    code = evaluate([str(run), "--suite", "calibration", "--batch-size", str(BATCH), "--workers", "0", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    results = json.loads((run / "eval-calibration-teacher_one-correct" / "results.json").read_text())
    cal = results["results"]["calibration"]
    images = results["data"]["images"]
    assert images in (10 * TEST_PER_CLASS, 10000) and sum(cal["bins"]["count"]) == images
    assert cal["top1"] == pytest.approx(top1, abs=0.01)   # the same teacher on the same test images
    assert 0 <= cal["ece"] <= 100
