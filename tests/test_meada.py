"""ME-ADA: the generation pass against a direct re-implementation of the official loop
(github.com/garyzhao/ME-ADA, ``ModelMEADA.maximize``) on a tiny model, across the two input
normalisations, and the uint8 images it stores; the method's epoch-start phase in the trainer
(when it runs, the bank's growth, the schedule over epochs of growing length, exact resume from a
stop in the middle of a generation pass) and its refusals. The generation pass runs outside the
training step: the step is vanilla's, which the registry walks run through both implementations."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from adautomix_fast.data import build_loaders
from adautomix_fast.data.appended import check_appended, grown_loader, growth_problem, plain_loader
from adautomix_fast.errors import UsageError
from adautomix_fast.methods.meada import MEADA, ascend, engine_step_size, entropy, meada_objective, phase_epochs
from adautomix_fast.run.appended import restore_appended
from adautomix_fast.run.phase import epoch_sizes, to_uint8_hwc
from adautomix_fast.step.schedules import Schedule

from cli_helpers import read_log, run_cli, single_error_line

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)     # CIFAR-100's, as the engine's


class TinyNet(nn.Module):
    """A network of pixels in [0, 1]: (logits, penultimate features)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, pixels):
        emb = F.adaptive_avg_pool2d(F.relu(self.conv(pixels)), 1).flatten(1)
        return self.fc(emb), emb


def official_maximize(net, pixels, y, lr_max=20.0, loops_adv=15, eta=10.0, gamma=1.0):
    """The official loop on [-1, 1] inputs: a fresh SGD on the input, descent on -loss."""
    inputs = (pixels - 0.5) / 0.5

    def network(x):
        return net(x * 0.5 + 0.5)

    inputs_embedding = network(inputs)[-1].detach().clone()
    inputs_max = inputs.detach().clone()
    inputs_max.requires_grad_(True)
    optimizer = torch.optim.SGD(params=[inputs_max], lr=lr_max, momentum=0.0, weight_decay=0.0)
    for _ in range(loops_adv):
        logits, emb = network(inputs_max)
        out = F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)
        loss = (nn.CrossEntropyLoss()(logits, y) + eta * (-1.0 * out.sum(dim=1)).mean()
                - gamma * nn.MSELoss()(emb, inputs_embedding))
        net.zero_grad()
        optimizer.zero_grad()
        (-loss).backward()
        optimizer.step()
    return inputs_max.detach() * 0.5 + 0.5           # pixels, before the clamp


def test_the_ascent_equals_the_official_loop_in_the_engines_normalisation():
    torch.manual_seed(0)
    net = TinyNet().double().eval()
    pixels = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    want = official_maximize(net, pixels, y)
    m = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)

    def classify(x):
        return net(x * s + m)

    x_adv = ascend(classify, (pixels - m) / s, y, engine_step_size(STD))
    torch.testing.assert_close(x_adv * s + m, want, rtol=1e-9, atol=1e-10)
    assert (want - pixels).abs().max() > 1e-3                          # the images moved
    stored = to_uint8_hwc(x_adv.float(), MEAN, STD)
    official = want.float().clamp(0.0, 1.0).mul(255).byte().permute(0, 2, 3, 1)   # ToPILImage's conversion
    assert stored.dtype == torch.uint8 and stored.shape == (6, 8, 8, 3)
    assert (stored.int() - official.int()).abs().max() <= 1   # float32 vs float64 at a truncation edge
    assert (stored == official).float().mean() > 0.99


def test_the_ascent_raises_the_objective():
    torch.manual_seed(1)
    net = TinyNet().eval()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    before = meada_objective(*net(x), net(x)[1].detach(), y)
    x_adv = ascend(lambda z: net(z), x, y, torch.full((3,), 0.5), steps=5)
    after = meada_objective(*net(x_adv), net(x)[1].detach(), y)
    assert after > before
    assert all(p.grad is None for p in net.parameters())               # the network is not trained


def test_entropy_is_maximal_for_uniform_logits():
    assert torch.isclose(entropy(torch.zeros(4, 10)), torch.log(torch.tensor(10.0)))
    assert entropy(torch.tensor([[50.0, 0.0, 0.0]])) < 1e-6


# ---------------------------------------------------------------------------- when the phase runs
def test_generation_rounds_follow_the_official_condition():
    assert phase_epochs(10, 2, 100) == (9, 19)            # the starts of epochs 10 and 20 (1-based)
    assert phase_epochs(10, 2, 15) == (9,)
    assert phase_epochs(1, 2, 3) == (0, 1)
    assert phase_epochs(10, 0, 100) == ()
    assert phase_epochs(10, 5, 9) == ()
    model = SimpleNamespace(phase_epochs=lambda epochs: phase_epochs(10, 2, epochs), phase_growth=2)
    assert epoch_sizes(model, 50_000, 25) == [50_000] * 9 + [100_000] * 10 + [200_000] * 6


def test_the_schedule_runs_over_epochs_of_growing_length():
    cfg = SimpleNamespace(epochs=4, lr=0.1, min_lr=0.0, gen_lr=None, gen_min_lr=None, warmup_epochs=0,
                          warmup_ratio=1e-5, lr_per_step=False, ema_start=0.999, ema_end=0.999999, ema_warmup=0.1)
    grown = Schedule(cfg, steps_per_epoch=10, epoch_lengths=(10, 20, 40, 40))
    assert grown.total_steps == 110 and grown.epoch_starts == [0, 10, 30, 70, 110]
    # Per epoch: the rate of an epoch is the cosine at epoch / epochs, whatever its length.
    flat = Schedule(cfg, steps_per_epoch=10)
    for epoch, (start, end) in enumerate(zip(grown.epoch_starts, grown.epoch_starts[1:])):
        assert {grown.lrs(s)[0] for s in range(start, end)} == {flat.lrs(10 * epoch)[0]}
    # Per step: progress over the whole run's 110 steps; the warm-up counts the epochs as they are.
    cfg.lr_per_step, cfg.warmup_epochs = True, 1.5
    assert Schedule(cfg, 10, (10, 20, 40, 40)).progress(55) == 0.5
    assert Schedule(cfg, 10, (10, 20, 40, 40)).warmup_steps == 20
    assert Schedule(cfg, 10, (10, 10, 10, 10)).warmup_steps == Schedule(cfg, 10).warmup_steps == 15
    assert Schedule(cfg, 10, (10, 10, 10, 10)).lrs(17) == Schedule(cfg, 10).lrs(17)


def test_phase_batch_is_the_ascent_on_the_students_features_and_leaves_the_weights():
    torch.manual_seed(0)
    model = MEADA("tiny", 10, cifar_stem=True, steps=3, std=STD).eval()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def classify(z):
        features = model.student.pooled(z)
        return model.student.head_one(features), features

    want = ascend(classify, x, y, engine_step_size(STD).float(), steps=3)
    torch.testing.assert_close(model.phase_batch(x, y), want)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------- the bank through the CLI
RUN = ["--method", "meada", "--arch", "tiny", "--workers", "0", "--train-subset", "300", "--batch-size", "50",
       "--epochs", "2", "--meada-every", "1", "--meada-steps", "2", "--vis-every", "0"]


def test_each_round_appends_one_image_per_image_of_the_current_set(tmp_path, capsys):
    code, out, err = run_cli(RUN + ["--output", str(tmp_path), "--run-name", "run"], capsys)
    assert code == 0, err
    assert "generation at the start of epochs 1, 2" in out
    phases = [r for r in read_log(tmp_path / "run") if r["type"] == "phase"]
    assert [(r["epoch"], r["images_added"], r["train_images"]) for r in phases] == [(1, 300, 600), (2, 600, 1200)]
    epochs = [r for r in read_log(tmp_path / "run") if r["type"] == "epoch"]
    assert [r["step"] for r in epochs] == [12, 12 + 24]             # 600 / 50, then 1200 / 50 batches
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    bank = ckpt["bank"]
    assert bank["images"].shape == (900, 16, 16, 3) and bank["images"].dtype == torch.uint8
    assert bank["rounds"] == [0, 1] and bank["pending"] is None
    train, _, _ = build_loaders("digits", None, 50, workers=0, image_size=16, train_subset=300)
    base_labels = torch.tensor(train.dataset.source.labels)
    # Round 1 follows the data set's order; round 2 the data set's, then round 1's images.
    assert torch.equal(bank["labels"][:300], base_labels)
    assert torch.equal(bank["labels"][300:], torch.cat([base_labels, base_labels]))
    # The first round's images are the data set's own, moved by the ascent.
    plain = next(iter(plain_loader(train, 300)))[0]
    own = to_uint8_hwc(plain, (0.5,) * 3, (0.5,) * 3)     # digits' normalisation (mean = std = 0.5)
    moved = (bank["images"][:300].int() - own.int()).abs()
    assert moved.float().mean() > 1.0


def test_a_stop_during_a_generation_pass_resumes_to_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    args = RUN + ["--output", str(tmp_path)]
    assert run_cli(args + ["--run-name", "whole"], capsys)[0] == 0
    real = MEADA.phase_batch
    calls = []

    def stop_at_the_third_batch_of_round_two(self, x, y):
        calls.append(x.shape[0])
        if len(calls) == 6 + 3:     # round 1: 300 images in 6 batches of 50
            signal.raise_signal(signal.SIGTERM)
        return real(self, x, y)

    monkeypatch.setattr(MEADA, "phase_batch", stop_at_the_third_batch_of_round_two)
    code, _, err = run_cli(args + ["--run-name", "stopped"], capsys)
    monkeypatch.undo()
    line = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert code == 128 + signal.SIGTERM, err
    assert line.startswith("stopped by SIGTERM during the ME-ADA generation before epoch 2, 150 of 600 images"), line
    ckpt = torch.load(tmp_path / "stopped" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["bank"]["pending"]["epoch"] == 1
    assert ckpt["bank"]["pending"]["images"].shape[0] == 150 and ckpt["bank"]["images"].shape[0] == 300
    assert run_cli(["--resume", str(tmp_path / "stopped")], capsys)[0] == 0
    done = torch.load(tmp_path / "stopped" / "checkpoint-last.pt", weights_only=True)
    whole = torch.load(tmp_path / "whole" / "checkpoint-last.pt", weights_only=True)
    assert torch.equal(done["bank"]["images"], whole["bank"]["images"])
    assert torch.equal(done["bank"]["labels"], whole["bank"]["labels"])
    assert all(torch.equal(done["model"][k], whole["model"][k]) for k in whole["model"])
    assert done["global_step"] == whole["global_step"] == 36


# ---------------------------------------------------------------------------- refusals
def test_a_run_that_cannot_grow_its_training_set_is_refused_in_one_line(tmp_path, capsys):
    cfg = SimpleNamespace(method="meada")
    train, _, info = build_loaders("digits", None, 50, workers=0)
    with pytest.raises(UsageError, match="runs in one process"):
        restore_appended(cfg, SimpleNamespace(enabled=True), train, info, None, None)
    assert "DALI" in growth_problem(object())
    files = SimpleNamespace(dataset=SimpleNamespace(source=[("a.jpg", 0)]))
    assert growth_problem(files) is not None
    assert restore_appended(SimpleNamespace(method="vanilla"), SimpleNamespace(enabled=True), train, info, None,
                            None) is train
    code, _, err = run_cli(["--method", "meada", "--data-backend", "dali", "--output", str(tmp_path)], capsys)
    assert code == 2 and single_error_line(err)


def test_appended_images_of_another_size_or_class_count_are_named():
    images, labels = torch.zeros(4, 16, 16, 3, dtype=torch.uint8), torch.tensor([0, 1, 2, 3])
    assert check_appended(images, labels, 16, 10) is None
    assert "this run trains on (32, 32, 3)" in check_appended(images, labels, 32, 10)
    assert "3 classes" in check_appended(images, labels, 16, 3)
    assert "4 appended images but 3 labels" in check_appended(images, labels[:3], 16, 10)


def test_the_grown_loader_keeps_the_order_rule_over_the_grown_set():
    train, _, _ = build_loaders("digits", None, 50, workers=0, image_size=16, train_subset=100)
    images = torch.randint(0, 256, (100, 16, 16, 3), dtype=torch.uint8)
    grown = grown_loader(train, images, torch.arange(100) % 10)
    assert len(grown) == 4 and len(train) == 2
    grown.set_epoch(3)
    seen = torch.cat([y for _, y in grown])
    assert seen.shape == (200,)
    grown.set_epoch(3, start_batch=2)
    assert torch.equal(torch.cat([y for _, y in grown]), seen[100:])
