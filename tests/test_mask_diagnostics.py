"""The generator's mask statistics: the formula on hand-made masks, the epoch records of a CLI run,
and their panel in curves.png (docs/training.md, "The generator's masks")."""

import csv
import math

import pytest
import torch

from adautomix_fast.evaluate import plots
from adautomix_fast.evaluate.curves import render_training_curves
from adautomix_fast.methods.generator import mask_statistics
from adautomix_fast.train import main

from cli_helpers import read_log

ONE_EPOCH = ["--arch", "tiny", "-j", "0", "--vis-every", "0", "--epochs", "1", "--batch-size", "100"]


def test_constant_masks_have_no_spread_and_their_gap_is_the_distance_to_lambda():
    lam = torch.tensor([0.25, 0.35, 0.40])
    weights = torch.tensor([0.05, 0.75, 0.20])              # one weight per slot, the same everywhere
    masks = weights.view(1, 3, 1, 1).expand(4, 3, 8, 8)
    stats = mask_statistics(masks, lam)
    assert stats["mask_spread"] == pytest.approx(0.0, abs=1e-7)
    assert stats["mask_lambda_gap"] == pytest.approx((0.20 + 0.40 + 0.20) / 3, abs=1e-6)
    # Masks equal to lambda everywhere (plain mixup): no spread, no gap.
    mixup = lam.view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert mask_statistics(mixup, lam) == pytest.approx({"mask_spread": 0.0, "mask_lambda_gap": 0.0}, abs=1e-7)


def test_half_and_half_masks_have_spread_one_half():
    left = torch.zeros(8, 8)
    left[:, :4] = 1.0
    masks = torch.stack([left, 1.0 - left]).unsqueeze(0).repeat(3, 1, 1, 1)    # [3, 2, 8, 8]
    stats = mask_statistics(masks, torch.tensor([0.5, 0.5]))
    assert stats["mask_spread"] == pytest.approx(0.5)          # population std of half 0, half 1
    assert stats["mask_lambda_gap"] == pytest.approx(0.0, abs=1e-7)
    # Against lambda = (0.3, 0.7) each slot's area is 0.2 away; a quarter-covering mask has
    # spread sqrt(p (1 - p)) with p = 1/4.
    assert mask_statistics(masks, torch.tensor([0.3, 0.7]))["mask_lambda_gap"] == pytest.approx(0.2)
    quarter = torch.zeros(1, 1, 8, 8)
    quarter[..., :4, :4] = 1.0
    assert mask_statistics(quarter, torch.tensor([0.25]))["mask_spread"] == pytest.approx(math.sqrt(3) / 4)


def test_per_image_lambdas_are_taken_per_image():
    masks = torch.full((2, 2, 4, 4), 0.5)
    lam = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    assert mask_statistics(masks, lam)["mask_lambda_gap"] == pytest.approx((0 + 0 + 0.4 + 0.4) / 4)


def _epoch_records(folder):
    return [r for r in read_log(folder) if r["type"] == "epoch"]


def _summary(folder):
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def adautomix_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag")
    assert main(ONE_EPOCH + ["--method", "adautomix", "--output", str(out), "--run-name", "ada"]) == 0
    return out / "ada"


def test_a_generator_run_records_the_mask_statistics_every_epoch(adautomix_run):
    (record,) = _epoch_records(adautomix_run)
    (row,) = _summary(adautomix_run)
    for key in ("mask_spread", "mask_lambda_gap"):
        assert 0.0 <= record[key] <= 1.0, (key, record[key])
        assert float(row[key]) == pytest.approx(record[key])
    assert record["mask_spread"] <= 0.5                          # a std of values in [0, 1]
    # The checkpoint keeps the epoch's records, statistics included (a resumed run rewrites them).
    ckpt = torch.load(adautomix_run / "checkpoint-last.pt", weights_only=True)
    assert ckpt["records"]["log"]["mask_spread"] == record["mask_spread"]


def test_the_statistics_are_drawn_with_the_curves(adautomix_run, tmp_path):
    png = render_training_curves(str(adautomix_run / "summary.csv"), str(tmp_path / "curves.png"))
    data = plots.read_data(png)
    (row,) = _summary(adautomix_run)
    for key in ("mask_spread", "mask_lambda_gap"):
        assert data[key] == [pytest.approx(float(row[key]))]


def test_curves_without_mask_columns_keep_three_panels(tmp_path):
    csv_path = tmp_path / "summary.csv"
    csv_path.write_text("epoch,lr,train_loss,student_one_top1,student_one_top5,best_top1\n"
                        "1,0.1,2.0,40.0,80.0,40.0\n2,0.05,1.5,50.0,90.0,50.0\n")
    data = plots.read_data(render_training_curves(str(csv_path), str(tmp_path / "curves.png")))
    assert "mask_spread" not in data and data["student_one_top1"] == [40.0, 50.0]


def test_methods_without_a_generator_record_no_mask_statistics(tmp_path):
    assert main(ONE_EPOCH + ["--method", "mixup", "--output", str(tmp_path), "--run-name", "mixup"]) == 0
    folder = tmp_path / "mixup"
    (record,) = _epoch_records(folder)
    assert "mask_spread" not in record and "mask_lambda_gap" not in record
    assert "mask_spread" not in _summary(folder)[0]


def test_measuring_leaves_the_training_state_alone():
    """The model's measurement runs in eval mode from its own plan: no buffer, no parameter, no
    training flag and no draw of the default generator changes."""
    from adautomix_fast import AdAutoMix

    torch.manual_seed(0)
    model = AdAutoMix("tiny", 10, cifar_stem=True, mix_samples=3).train()
    x = torch.randn(8, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    plan = model.sample_plan(8, generator=torch.Generator().manual_seed(0))
    stats = model.mask_diagnostics(x, torch.zeros(8, dtype=torch.long), plan)
    assert set(stats) == {"mask_spread", "mask_lambda_gap"}
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model.teacher.training and model.generator.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_run_trains_the_same_with_and_without_the_measurement(adautomix_run, tmp_path, monkeypatch):
    """The measurement draws no number from the training's random streams and changes no buffer:
    the same run with it switched off ends with the same weights and buffers, bit for bit."""
    from adautomix_fast.run.trainer import Trainer

    monkeypatch.setattr(Trainer, "mask_diagnostics", lambda self: {})
    assert main(ONE_EPOCH + ["--method", "adautomix", "--output", str(tmp_path), "--run-name", "off"]) == 0
    assert "mask_spread" not in _epoch_records(tmp_path / "off")[0]
    with_it = torch.load(adautomix_run / "checkpoint-last.pt", weights_only=True)
    without = torch.load(tmp_path / "off" / "checkpoint-last.pt", weights_only=True)
    for k, v in with_it["model"].items():
        assert torch.equal(v, without["model"][k]), k
    for k, v in with_it["rng"]["ranks"][0].items():      # the random streams, where the next step starts
        assert torch.equal(v, without["rng"]["ranks"][0][k]), k
