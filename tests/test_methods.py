"""The baselines' mixing functions against well-kept libraries (MixUp, CutMix: torchvision v2 and
timm, given the same draws) or against direct loop/numpy definitions (FMix, ResizeMix,
ManifoldMix, SaliencyMix); the sampling laws; every method's model through both steps."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adautomix_fast.config import resolve
from adautomix_fast.methods.base import pair_mixed_cross_entropy, sample_beta
from adautomix_fast.methods.cutmix import box_lambda, cutmix_box, paste_box
from adautomix_fast.methods.fmix import fmix_mask, spectrum_scale
from adautomix_fast.methods.manifoldmix import MIX_POINTS, ManifoldPlan, manifold_pooled
from adautomix_fast.methods.mixup import mixup
from adautomix_fast.methods.pairmix import no_repeat_permutation
from adautomix_fast.methods.resizemix import ResizeMix, resize_paste
from adautomix_fast.models import build_classifier
from adautomix_fast.registry import METHODS, build_model
from adautomix_fast.step.base import make_plan_generator
from adautomix_fast.step.fused import FusedStep
from adautomix_fast.step.optim import build_optimizer
from adautomix_fast.step.precision import Precision
from adautomix_fast.step.reference import ReferenceStep
from adautomix_fast.step.schedules import Schedule

from optional import skip_without_requirements

K = 7  # classes


def images(b=6, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randint(0, K, (b,), generator=g)


def soft_ce(logits, targets):
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


# ---------------------------------------------------------------------------- MixUp
def test_mixup_equals_torchvision_v2_given_the_same_draw():
    from torchvision.transforms import v2
    x, y = images()
    lam = 0.37
    ref = v2.MixUp(alpha=1.0, num_classes=K)
    ref.make_params = lambda flat_inputs: dict(lam=lam)
    x_ref, y_ref = ref(x.clone(), y)
    perm = torch.arange(x.shape[0]).roll(1)           # torchvision's partner: the batch rolled by one
    out = mixup(x, torch.tensor(lam), perm)
    torch.testing.assert_close(out, x_ref, atol=1e-6, rtol=1e-6)
    # label weights: our hard mixed loss equals CE with the library's soft targets
    z = torch.randn(x.shape[0], K)
    torch.testing.assert_close(pair_mixed_cross_entropy(z, y, perm, torch.tensor(lam)), soft_ce(z, y_ref),
                               atol=1e-6, rtol=1e-6)


def test_mixup_equals_timm_given_the_same_draw():
    from timm.data import Mixup
    x, y = images(b=6)
    lam = 0.81
    ref = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=K)
    ref._params_per_batch = lambda: (lam, False)
    x_ref, y_ref = ref(x.clone(), y)
    perm = torch.arange(x.shape[0]).flip(0)            # timm's partner: the batch reversed
    torch.testing.assert_close(mixup(x, torch.tensor(lam), perm), x_ref, atol=1e-6, rtol=1e-6)
    z = torch.randn(x.shape[0], K)
    torch.testing.assert_close(pair_mixed_cross_entropy(z, y, perm, torch.tensor(lam)), soft_ce(z, y_ref),
                               atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- CutMix
@pytest.mark.parametrize("seed", range(6))
def test_cutmix_equals_torchvision_v2_on_its_own_draws(seed):
    """torchvision draws lambda and the centre; replaying the same draws, our box, pasted image
    and recomputed lambda are the library's."""
    from torchvision.transforms import v2
    x, y = images(b=5, h=20, w=24, seed=seed)
    ref = v2.CutMix(alpha=1.0, num_classes=K)
    torch.manual_seed(seed)
    x_ref, y_ref = ref(x.clone(), y)
    torch.manual_seed(seed)                            # replay: Beta sample, then r_x (width), r_y (height)
    lam = float(torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()))
    r_x = int(torch.randint(24, size=(1,)))
    r_y = int(torch.randint(20, size=(1,)))
    box = cutmix_box(torch.tensor(lam), torch.tensor([r_y, r_x]), 20, 24)
    perm = torch.arange(5).roll(1)
    torch.testing.assert_close(paste_box(x, perm, box), x_ref)
    lam_box = box_lambda(box, 20, 24)
    z = torch.randn(5, K)
    torch.testing.assert_close(pair_mixed_cross_entropy(z, y, perm, lam_box), soft_ce(z, y_ref), atol=1e-6, rtol=1e-6)
    # the label weight is recomputed from the clipped box, not the drawn lambda
    area = float((box[1] - box[0]) * (box[3] - box[2]))
    assert math.isclose(float(lam_box), 1 - area / (20 * 24), rel_tol=1e-6)


@pytest.mark.parametrize("lam", [0.1536, 0.7296, 0.8236])   # sides int(S sqrt(1 - lam)) even for S = 16, 20
@pytest.mark.parametrize("seed", range(4))
def test_cutmix_equals_timm_given_lambda_on_its_own_centre(seed, lam):
    """timm draws the centre (row, then column); replaying it, our box and image are timm's.
    (For odd box sides timm's upper edge is one pixel further, ``c + (cut + 1) // 2``, than
    OpenMixup's and torchvision's ``c + cut // 2``, which the engine follows; hence even sides.)"""
    from timm.data import Mixup
    x, y = images(b=6, h=16, w=20, seed=seed)
    ref = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K)
    ref._params_per_batch = lambda: (lam, True)
    np.random.seed(seed)
    x_ref, y_ref = ref(x.clone(), y)
    np.random.seed(seed)
    cy, cx = np.random.randint(0, 16), np.random.randint(0, 20)
    box = cutmix_box(torch.tensor(lam, dtype=torch.float64), torch.tensor([cy, cx]), 16, 20)
    perm = torch.arange(6).flip(0)
    torch.testing.assert_close(paste_box(x, perm, box), x_ref)
    z = torch.randn(6, K)
    torch.testing.assert_close(pair_mixed_cross_entropy(z, y, perm, box_lambda(box, 16, 20)), soft_ce(z, y_ref),
                               atol=1e-6, rtol=1e-6)


def test_cutmix_box_is_clipped_at_the_border():
    box = cutmix_box(torch.tensor(0.19), torch.tensor([0, 15]), 16, 16)   # sides int(16 * 0.9) = 14
    assert box.tolist() == [0, 7, 8, 16]
    assert math.isclose(float(box_lambda(box, 16, 16)), 1 - 7 * 8 / 256, rel_tol=1e-6)


# ---------------------------------------------------------------------------- FMix
def fmix_mask_numpy(lam, noise, h, w, decay=3.0):
    """Direct definition in numpy: scaled Gaussian spectrum, inverse real FFT, top-k pixels."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freq = np.sqrt(fx ** 2 + fy ** 2)
    scale = 1.0 / np.maximum(freq, 1.0 / max(h, w)) ** decay
    spectrum = scale * (noise[..., 0] + 1j * noise[..., 1])
    image = np.fft.irfft2(spectrum, s=(h, w))
    k = int(round(lam * h * w))
    mask = np.zeros(h * w)
    mask[np.argsort(-image.reshape(-1), kind="stable")[:k]] = 1
    return mask.reshape(h, w)


@pytest.mark.parametrize("h,w,lam", [(16, 16, 0.3), (32, 32, 0.77), (15, 20, 0.5), (8, 12, 0.05)])
def test_fmix_mask_has_the_requested_area_and_matches_its_definition(h, w, lam):
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(h, w // 2 + 1, 2, generator=g)
    mask = fmix_mask(torch.tensor(lam), noise, h, w)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == round(lam * h * w)                 # exactly round(lambda H W) ones
    np.testing.assert_array_equal(mask.numpy(), fmix_mask_numpy(lam, noise.double().numpy(), h, w))


def test_fmix_masks_are_low_frequency():
    """A Fourier mask is a few smooth blobs: far fewer 0/1 transitions than a random mask of the
    same area."""
    g = torch.Generator().manual_seed(0)
    h = w = 32
    mask = fmix_mask(torch.tensor(0.5), torch.randn(h, w // 2 + 1, 2, generator=g), h, w)
    random_mask = (torch.rand(h, w, generator=g) < 0.5).float()
    edges = lambda m: int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())
    assert edges(mask) * 5 < edges(random_mask)
    assert float(spectrum_scale(h, w)[0, 0]) == pytest.approx(32.0 ** 3)


# ---------------------------------------------------------------------------- ResizeMix
@pytest.mark.parametrize("box", [(2, 10, 3, 12), (0, 5, 11, 16), (7, 16, 0, 16), (4, 5, 4, 5)])
def test_resizemix_pastes_the_whole_partner_resized_nearest(box):
    x, _ = images(b=4, h=16, w=16)
    perm = torch.tensor([2, 0, 3, 1])
    y1, y2, x1, x2 = box
    out = resize_paste(x, perm, torch.tensor(box))
    expected = x.clone()
    expected[:, :, y1:y2, x1:x2] = F.interpolate(x[perm], size=(y2 - y1, x2 - x1), mode="nearest")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_resizemix_tau_stays_in_scope_and_lambda_is_one_minus_area():
    model = ResizeMix("tiny", K, cifar_stem=True, mix_alpha=1.0)
    g = torch.Generator().manual_seed(0)
    x, _ = images(b=4, h=32, w=32)
    for _ in range(50):
        plan = model.sample_plan(4, generator=g, image_size=(32, 32))
        assert 0.1 <= float(plan.tau) <= 0.8
        box = model.box(x, plan)
        _, lam = model.mix(x, plan)
        area = int((box[1] - box[0]) * (box[3] - box[2]))
        assert math.isclose(float(lam), 1 - area / 1024, rel_tol=1e-6)


# ---------------------------------------------------------------------------- ManifoldMix
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_manifoldmix_mixes_the_hidden_state_at_the_drawn_layer(layer):
    torch.manual_seed(0)
    net = build_classifier("tiny", K, cifar_stem=True).eval()
    x, _ = images(b=4)
    lam, perm = torch.tensor(0.3), torch.tensor([1, 2, 3, 0])
    plan = ManifoldPlan(lam, perm, torch.tensor(layer))
    # direct loop: run the stages one by one, mixing right before stage MIX_POINTS[layer]
    h = x
    for i in range(net.num_stages):
        if i == MIX_POINTS[layer]:
            h = lam * h + (1 - lam) * h[perm]
        h = net.forward_stages(h, i, i + 1)
    torch.testing.assert_close(manifold_pooled(net, x, plan), net.pool(h), atol=1e-6, rtol=1e-6)
    assert MIX_POINTS == (0, 2, 3)        # input, after the first and after the second residual stage


# ---------------------------------------------------------------------------- SaliencyMix
def test_saliencymix_centres_the_box_on_the_saliency_peak():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "saliency"):
        pytest.skip("OpenCV without the contrib saliency module")
    from adautomix_fast.methods.saliencymix import SaliencyMix
    x, y = images(b=4, h=16, w=16, seed=4)
    model = SaliencyMix("tiny", K, cifar_stem=True, mix_alpha=0.5)
    plan = model.complete_plan(x, y, model.sample_plan(4, generator=torch.Generator().manual_seed(1),
                                                       image_size=(16, 16)))
    donor = x[plan.perm[0]].numpy().transpose(1, 2, 0).astype(np.float32)
    ok, smap = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(donor)
    row, col = np.unravel_index(np.argmax((smap * 255).astype("uint8")), smap.shape)
    assert plan.center.tolist() == [row, col]
    out, lam = model.mix(x, plan)
    box = cutmix_box(plan.lam, plan.center, 16, 16)
    torch.testing.assert_close(out, paste_box(x, plan.perm, box))
    assert math.isclose(float(lam), float(box_lambda(box, 16, 16)), rel_tol=1e-6)


# ---------------------------------------------------------------------------- sampling laws
@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_beta_draws_have_the_beta_moments(alpha):
    u = sample_beta(alpha, (40_000,), torch.Generator().manual_seed(0), torch.device("cpu")).double()
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1.0 / (4 * (2 * alpha + 1))) < 0.01
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0


def test_no_repeat_permutations_are_permutations_mostly_without_fixed_points():
    g = torch.Generator().manual_seed(0)
    fixed = 0
    for _ in range(300):
        p = no_repeat_permutation(6, g, torch.device("cpu"))
        assert sorted(p.tolist()) == list(range(6))
        fixed += int((p == torch.arange(6)).any())
    # a plain permutation of 6 has a fixed point with probability ~0.63; after 10 draws ~0.01
    assert fixed < 15


@pytest.mark.parametrize("method", ["mixup", "cutmix", "fmix", "resizemix", "manifoldmix"])
def test_every_plan_is_reproducible_from_the_generator_and_has_valid_permutations(method):
    cfg = resolve(dict(arch="tiny", method=method, batch_size=8, amp=False))
    model = build_model(cfg, K, True)
    a = model.sample_plan(8, torch.Generator().manual_seed(5), image_size=(16, 16))
    b = model.sample_plan(8, torch.Generator().manual_seed(5), image_size=(16, 16))
    for ta, tb in zip(a, b):
        assert torch.equal(ta, tb)
    assert sorted(a.perm.tolist()) == list(range(8))


# ---------------------------------------------------------------------------- both steps, every method
def _steps(method, compile=False, backend="inductor"):
    cfg = resolve(dict(arch="tiny", method=method, batch_size=8, epochs=2, amp=False))
    torch.manual_seed(0)
    ref_model = build_model(cfg, K, True)
    fused_model = copy.deepcopy(ref_model)
    schedule = Schedule(cfg, steps_per_epoch=3)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    ref = ReferenceStep(ref_model, build_optimizer(ref_model, cfg), schedule, precision,
                        plan_generator=make_plan_generator(torch.device("cpu"), 0))
    fused = FusedStep(fused_model, build_optimizer(fused_model, cfg), schedule, precision, compile=compile,
                      backend=backend)
    return ref, fused


def _assert_same_step(ref, fused, steps, atol):
    g = torch.Generator().manual_seed(9)
    for i in range(steps):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, K, (8,), generator=g)
        plan = ref.model.complete_plan(x, y, ref.model.sample_plan(8, torch.Generator().manual_seed(100 + i),
                                                                image_size=(16, 16)))
        a, b = ref(x, y, plan), fused(x, y, plan)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=atol, msg=lambda m: f"step {i} {k}: {m}")
    for (n1, p1), (n2, p2) in zip(ref.model.state_dict().items(), fused.model.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, atol=atol * 10, rtol=atol * 10, msg=lambda m: f"{n1}: {m}")


@pytest.mark.parametrize("method", list(METHODS))
def test_fused_step_equals_reference_for_every_method(method):
    skip_without_requirements(method)
    ref, fused = _steps(method)
    _assert_same_step(ref, fused, 2, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vanilla", "mixup", "cutmix"])
def test_compiled_fused_step_equals_reference(method):
    ref, fused = _steps(method, compile=True)
    _assert_same_step(ref, fused, 3, 1e-4)
    assert fused.recompiles_after_warmup() == 0


def test_baselines_have_one_head_and_no_teacher():
    cfg = resolve(dict(arch="tiny", method="cutmix", amp=False))
    model = build_model(cfg, K, True)
    assert model.HEADS == ("student_one",) and not model.has_teacher
    assert model.student.head_mix is None
    assert not any(k.startswith(("teacher.", "generator.")) for k in model.state_dict())
    model.eval()
    assert set(model.eval_logits(torch.randn(2, 3, 16, 16))) == {"student_one"}
