"""bench.step's Swin-T and CIFAR ConvNeXt-T shapes: their recipe reaches every impl
(CPU, test variants of the architectures; no time asserted)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # bench/ is a folder of the repo, not an installed package
    sys.path.insert(0, ROOT)

from adautomix_fast.models import drop_path_rate  # noqa: E402
from bench import step  # noqa: E402

# shape -> (test variant of its architecture, image size)
VARIANTS = {"swin": ("tiny_swin", 32), "convnext-cifar": ("tiny_convnext", 16)}


def test_shapes_are_the_published_architectures_with_their_recipes():
    swin = step.case_for("swin", torch.device("cpu"))
    conv = step.case_for("convnext-cifar", torch.device("cpu"))
    assert (swin.arch, swin.image_size, swin.cifar_stem) == ("swin_t", 224, False)
    assert (conv.arch, conv.image_size, conv.cifar_stem) == ("convnext_t", 32, True)
    for case, preset in ((swin, "cifar100-swin_t"), (conv, "cifar100-convnext_t")):
        cfg, published = case.config(), step.resolve({}, preset)
        for k in ("optimizer", "lr", "gen_lr", "min_lr", "weight_decay", "warmup_epochs", "lr_per_step", "clip_grad",
                  "label_smoothing", "gen_train_prob", "upsample", "lam_concat", "mix_samples"):
            assert getattr(cfg, k) == getattr(published, k), (case.shape, k)
        # the architecture's published rate (None), which is the preset's
        assert drop_path_rate(cfg.arch, cfg.drop_path) == published.drop_path
    # the ResNet shapes keep the engine's SGD
    assert step.case_for("cifar", torch.device("cpu")).config().optimizer == "sgd"


@pytest.mark.parametrize("shape", list(VARIANTS))
def test_vanilla_floor_uses_the_recipe_optimizer(shape):
    arch, size = VARIANTS[shape]
    case = step.case_for(shape, torch.device("cpu"), arch=arch, image_size=size, batch_size=4)
    cfg, model, params = step._vanilla_model(case)
    opt = step._vanilla_optimizer(cfg, model, params)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, excluded = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and len(decayed) + len(excluded) == len(params)
    table = {"tiny_swin": "relative_position_bias_table", "tiny_convnext": "layer_scale"}[arch]
    assert any(table in n for n in excluded) and not any(table in n for n in decayed)
    assert all(n.endswith(".weight") for n in decayed)


@pytest.mark.parametrize("shape", list(VARIANTS))
def test_step_bench_runs_the_new_shapes(shape, tmp_path):
    arch, size = VARIANTS[shape]
    argv = ["--device", "cpu", "--shapes", shape, "--impls", "vanilla,reference", "--arch", arch, "--image-size",
            str(size), "--batch-size", "4", "--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--no-write"]
    assert step.main(argv) == 0
