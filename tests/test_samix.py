"""SAMix: its mix block against a transcription of OpenMixup's ``PixelMixBlock.forward`` with the
SAMix config's options (given the same weights and inputs), its mask loss against OpenMixup's
"L1+Variance" formula, the lambda encoding, its published settings, and a comparison run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adautomix_fast import compare
from adautomix_fast.config import resolve
from adautomix_fast.methods.samix import SAMix, SAMixBlock, mask_l1_variance_loss, rescale_lambda
from adautomix_fast.registry import build_model


# ---------------------------------------------------------------------------- OpenMixup, transcribed
def openmixup_rescale_lam_mult(lam, k=1):
    k += 1
    lam = float(lam)
    return 1 / (k - 2 / 3) * (4 / 3 * math.pow(lam, 3) - 2 * lam ** 2 + k * lam)


def openmixup_samix_mask(block: SAMixBlock, x, lam, index, scale_factor):
    """``PixelMixBlock.forward`` with the SAMix CIFAR config (lam_mul True, lam_residual True,
    lam_mul_k 0.25, x_qk_concat True, x_v_concat False, value ConvNeck, use_scale True, bilinear),
    on ``block``'s weights: query/key ConvModules (1x1, bias) and the value neck."""
    n, _, h, w = x.size()
    x_lam, x_lam_ = x, x[index, :]
    lam_rescale = openmixup_rescale_lam_mult(lam, block.lam_k)
    x_lam = x_lam * (1 + lam_rescale * 1.0)
    x_lam_ = x_lam_ * (1 + (1 - lam_rescale) * 1.0)
    v_ = block.value(x_lam_).view(n, 1, -1).permute(0, 2, 1)             # [N, HxW, 1]
    x_lam = torch.cat([x_lam, x_lam_], dim=1)
    x_lam_ = x_lam
    q_x = block.query(x_lam).view(n, block.dim, -1).permute(0, 2, 1)     # [N, HxW, C/r]
    k_x = block.key(x_lam_).view(n, block.dim, -1)                       # [N, C/r, HxW]
    pairwise_weight = torch.matmul(q_x, k_x) / block.dim ** 0.5
    pairwise_weight = pairwise_weight.softmax(dim=-1)
    mask_lam_ = torch.matmul(pairwise_weight.type(torch.float32), v_.type(torch.float32)).view(n, 1, h, w)
    mask_lam_ = F.interpolate(mask_lam_, scale_factor=scale_factor, mode="bilinear")
    mask_lam_ = torch.sigmoid(mask_lam_.type(torch.float32))
    return torch.cat([1 - mask_lam_, mask_lam_], dim=1)


def openmixup_mask_loss(mask, lam, margin=0.1):
    n, k, h, w = mask.size()
    mask = mask[:, 1, :, :].unsqueeze(1)
    m_mean = mask.sum() / (n * h * w)
    return torch.clamp(torch.abs(1 - m_mean - lam) - margin, min=0.).mean() - \
        2 * torch.clamp((torch.sum((mask - m_mean) ** 2) / (n * h * w)), min=0.)


# ---------------------------------------------------------------------------- the block and the loss
@pytest.mark.parametrize("lam", [0.1, 0.37, 0.5, 0.83])
def test_the_mix_block_equals_openmixups_given_the_same_weights(lam):
    torch.manual_seed(0)
    block = SAMixBlock(16)
    for p in block.parameters():          # weights larger than the N(0, 0.01) start, so that masks differ
        torch.nn.init.normal_(p, std=0.3)
    block.train()
    feats = torch.randn(6, 16, 4, 4)
    x = torch.randn(6, 3, 16, 16)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    index = torch.stack([torch.arange(6), perm])
    lam_t = torch.tensor([lam, 1.0 - lam])
    want = openmixup_samix_mask(block, feats, lam, perm, scale_factor=4)
    logits = block.mask_logits(feats, index, lam_t)
    mixed, masks = block.mix(logits, x, index, return_masks=True)
    torch.testing.assert_close(masks, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed, x * want[:, :1] + x[perm] * want[:, 1:], rtol=1e-5, atol=1e-5)
    assert want[:, 1].std() > 1e-3            # the masks are not constant: the comparison means something


def test_the_mask_loss_is_openmixups_l1_plus_variance():
    torch.manual_seed(2)
    m = torch.rand(5, 1, 8, 8)
    masks = torch.cat([1 - m, m], dim=1)
    for lam in (0.2, 0.5, 0.9):
        want = openmixup_mask_loss(masks, lam)
        got = mask_l1_variance_loss(masks, torch.tensor([lam, 1 - lam]), 0.1)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_the_lambda_encoding_is_openmixups_and_fixes_0_half_and_1():
    for lam in (0.0, 0.13, 0.5, 0.77, 1.0):
        got = float(rescale_lambda(torch.tensor(lam, dtype=torch.float64), 0.25))
        assert got == pytest.approx(openmixup_rescale_lam_mult(lam, 0.25), abs=1e-12)
    assert [float(rescale_lambda(torch.tensor(v), 0.25)) for v in (0.0, 0.5, 1.0)] == pytest.approx([0, 0.5, 1])


# ---------------------------------------------------------------------------- settings and runs
def test_the_published_settings_and_the_options_reach_the_model():
    cfg = resolve({"method": "samix", "arch": "tiny", "samix_lam_k": 0.5})
    model = build_model(cfg, 5, cifar_stem=True)
    assert isinstance(model, SAMix) and isinstance(model.generator, SAMixBlock)
    assert (model.mix_alpha, model.lam_margin, model.mask_loss, model.mask_loss_schedule) == (2.0, 0.08, 0.1,
                                                                                              "constant")
    assert model.generator.lam_k == 0.5 and model.generator.upsample == "bilinear"
    assert not {"beta", "lam_concat", "gen_norm"} & {o.name for o in SAMix.all_options()}


def test_a_samix_step_trains_the_block_through_the_teacher_and_the_mask_loss():
    cfg = resolve({"method": "samix", "arch": "tiny"})
    model = build_model(cfg, 5, cifar_stem=True).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    plan = model.sample_plan(8, generator=torch.Generator().manual_seed(0))
    losses = model.step_losses(x, y, plan)
    assert {"loss", "loss_k", "loss_mask"} <= set(losses)
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.generator.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())


def test_samix_and_dada_run_through_compare(tmp_path):
    argv = ["--methods", "dada,samix", "--output", str(tmp_path), "--name", "c", "--arch", "tiny",
            "--epochs", "1", "--batch-size", "200", "--workers", "0", "--no-amp"]
    assert compare.main(argv) == 0
    table = (tmp_path / "c" / "comparison.md").read_text()
    assert "| samix |" in table and "| dada |" in table
