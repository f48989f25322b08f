"""Swin, ConvNeXt and DeiT classifiers: taps, stages, steps, EMA, kernels, weights.

The whole-step tests run the test variants (``tiny_swin``, ``tiny_convnext``, ``tiny_deit``:
the same classes as ``swin_t``/``convnext_t``/``deit_s`` with narrow settings, 32 px images);
the real architectures run once each, one no_grad forward of one 224 px image (32 px for the
CIFAR ConvNeXt).
"""

import copy
import os
import sys

import pytest
import torch

from adautomix_fast import AdAutoMix
from adautomix_fast.errors import UsageError
from adautomix_fast.models import (
    ARCH_SPECS,
    build_classifier,
    default_cifar_stem,
    export_state_dict,
    library_model,
    load_pretrained,
    load_pretrained_model,
)
from adautomix_fast.models.convnext import ConvNeXtClassifier
from adautomix_fast.models.deit import DeiTClassifier
from adautomix_fast.models.swin import SwinClassifier
from adautomix_fast.step.ema import ema_update_, ema_update_reference, momentum_tensor, teacher_pairs
from adautomix_fast.step.fused import fused_losses
from adautomix_fast.step.segmented_bn import convert_batchnorm, set_segment_size

TINY = {"tiny_swin": False, "tiny_convnext": True, "tiny_deit": False}   # arch -> CIFAR stem
SIZE = {"tiny_swin": 32, "tiny_convnext": 16, "tiny_deit": 32}            # DeiT: its fixed size
B, CLASSES = 6, 5


def make(arch, **kw):
    torch.manual_seed(0)
    return build_classifier(arch, CLASSES, TINY.get(arch, False), **kw)


def images(b=B, size=32, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def arch_images(arch, b=B, seed=0):
    return images(b, SIZE[arch], seed)


# ---------------------------------------------------------------------------- taps and stages
@pytest.mark.parametrize("arch", list(TINY))
def test_tap_shape_stages_compose_and_heads(arch):
    m = make(arch).eval()
    spec = ARCH_SPECS[arch]
    x = arch_images(arch)
    state = m.stem_to_stage3(x)
    tap = m.tap_features(state)
    side = spec.tap_side(SIZE[arch], TINY[arch])
    assert tuple(tap.shape) == (B, spec.tap_channels, side, side) == (B, m.stage3_channels, side, side)
    with torch.no_grad():
        # stages compose: any split point gives the same pooled features as the whole trunk
        whole = m.pool(m.forward_stages(x))
        for k in range(1, m.num_stages):
            torch.testing.assert_close(m.pool(m.forward_stages(m.forward_stages(x, 0, k), k)), whole)
        torch.testing.assert_close(m.stage3_to_pooled(state), whole)
        one, mix = m(x)
    assert one.shape == mix.shape == (B, CLASSES) and m.feature_dim == m.head_one.in_features
    # stage boundaries are tensors with the batch first (ManifoldMix mixes them)
    for k in range(1, m.num_stages):
        assert m.forward_stages(x, 0, k).shape[0] == B


def test_swin_tap_is_layernorm_of_merged_map_and_boundaries_are_nchw_views():
    m = make("tiny_swin").eval()
    x = images()
    with torch.no_grad():
        nhwc = x
        for j in range(7):                      # torchvision's features[0..6]: up to merging 3
            nhwc = m.features[j](nhwc)
        state = m.stem_to_stage3(x)
        # the state is the merged map itself, NCHW-shaped, a view of the NHWC memory
        assert torch.equal(state, nhwc.permute(0, 3, 1, 2))
        assert state.is_contiguous(memory_format=torch.channels_last)
        tap = m.tap_features(state)
        mean, var = tap.mean(1), tap.var(1, unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)
        expected = torch.nn.functional.layer_norm(nhwc, (nhwc.shape[-1],), eps=1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(tap, expected)
        # the trunk continues from the un-normalised map (the released norm2 is on the tap only)
        rest = m.features[7](nhwc)
        torch.testing.assert_close(m.pool(m.forward_stages(state, m.tap_stage)), m.norm(rest).mean(dim=(1, 2)))


def test_deit_tap_is_block_half_patch_tokens_and_trunk_keeps_class_token():
    m = make("tiny_deit").eval()
    x = images()
    with torch.no_grad():
        state = m.stem_to_stage3(x)
        assert tuple(state.shape) == (B, 1 + 8 * 8, 16)        # class token + 8x8 patches
        # the released tap (out_indices 5 of 12): the tokens after half the blocks
        half = m.forward_stages(x, 0, 1)
        for block in m.blocks[:len(m.blocks) // 2]:
            half = block(half)
        torch.testing.assert_close(state, half)
        tap = m.tap_features(state)
        # patch token (r, c) is the map's pixel (r, c): the released reshape(B, h, w, C).permute
        torch.testing.assert_close(tap[:, :, 2, 5], state[:, 1 + 2 * 8 + 5])
        # the class token changes the output: the trunk continues from the whole sequence
        altered = state.clone()
        altered[:, 0] += 1.0
        assert not torch.allclose(m.stage3_to_pooled(altered), m.stage3_to_pooled(state))
        # timm's own forward of the same modules gives the same features
        import timm.models.vision_transformer as vit
        net = vit.VisionTransformer(**ARCH_SPECS["tiny_deit"].options, num_classes=0)
        net.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("head_")}, strict=False)
        torch.testing.assert_close(m.pooled(x), net(x))


def test_convnext_cifar_stem_and_pooling_match_torchvision():
    m = make("tiny_convnext").eval()
    assert tuple(m.features[0][0].weight.shape[-2:]) == (3, 3) and m.features[0][0].stride == (1, 1)
    lib = library_model("tiny_convnext", CLASSES, cifar_stem=True).eval()
    lib.load_state_dict(export_state_dict(m))
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], lib(x))


@pytest.mark.parametrize("arch,cls,size,tap", [
    ("swin_t", SwinClassifier, 224, (768, 7)),
    ("convnext_t", ConvNeXtClassifier, 224, (384, 14)),
    ("deit_s", DeiTClassifier, 224, (384, 14)),
])
def test_real_architectures_tap_shapes(arch, cls, size, tap):
    m = build_classifier(arch, 100, False).eval()
    assert type(m) is cls and m.stage3_channels == ARCH_SPECS[arch].tap_channels == tap[0]
    with torch.no_grad():
        f = m.tap_features(m.stem_to_stage3(torch.randn(1, 3, size, size)))
    assert (tuple(f.shape) == (1, tap[0], tap[1], tap[1])
            == (1, tap[0], ARCH_SPECS[arch].tap_size, ARCH_SPECS[arch].tap_size))


def test_convnext_t_cifar_tap_is_8x8():
    m = build_classifier("convnext_t", 100, True).eval()
    with torch.no_grad():
        assert tuple(m.stem_to_stage3(torch.randn(1, 3, 32, 32)).shape) == (1, 384, 8, 8)


def test_stems_and_sizes_refused_in_one_line():
    for arch in ("tiny_swin", "tiny_deit"):
        with pytest.raises(UsageError, match="has no CIFAR stem"):
            build_classifier(arch, 3, True)
        assert default_cifar_stem(32, arch) is False
    assert default_cifar_stem(32, "tiny_convnext") and default_cifar_stem(32) and not default_cifar_stem(224, "r18")
    with pytest.raises(UsageError, match="unknown --arch 'vit_h'"):
        build_classifier("vit_h", 3, False)
    from adautomix_fast.models import check_image_size
    with pytest.raises(UsageError, match="224 px images only.*--img-size 224"):
        check_image_size("deit_s", 32)
    check_image_size("swin_t", 224)
    check_image_size("tiny_swin", 16)                            # a 1x1 tap: small, but real pixels
    # Swin's tap must tile the image (the merges would pad it otherwise); ConvNeXt without its
    # CIFAR stem needs a 2x2 stage-3 map for the last downsampling.
    with pytest.raises(UsageError, match=r"swin_t needs an image size that is a multiple of 32"
                                         r".*--img-size 224 as its presets do") as e1:
        check_image_size("swin_t", 16)
    with pytest.raises(UsageError, match="multiple of 32"):
        check_image_size("swin_t", 100)
    with pytest.raises(UsageError,
                       match=r"convnext_t without the CIFAR stem needs images of at least 32 px.*--cifar-stem") as e2:
        check_image_size("convnext_t", 16, cifar_stem=False)
    check_image_size("convnext_t", 16)                          # automatic: the CIFAR stem at 16 px
    for e in (e1, e2):
        assert "\n" not in str(e.value)


def test_the_refused_sizes_are_the_ones_the_trunks_cannot_take():
    """What check_image_size refuses fails or pads in the trunk itself; what it accepts runs."""
    with torch.no_grad():
        with pytest.raises(RuntimeError):     # ConvNeXt's 2x2 downsampling of a 1x1 stage-3 map
            build_classifier("tiny_convnext", CLASSES, False).forward_stages(images(1, 16))
        assert build_classifier("tiny_convnext", CLASSES, False).forward_stages(images(1, 32)).shape[-1] == 1
        # Swin at 24 px (not a multiple of 16): stage 3's map is padded, the tap is 2x2 of 1.5 px
        swin = make("tiny_swin")
        assert swin.stem_to_stage3(images(1, 24)).shape[-1] == 2 and 24 / 16 != 2
        assert swin.stem_to_stage3(images(1, 32)).shape[-1] == 32 // 16


@pytest.mark.parametrize("method", ["adautomix", "automix", "mixup", "vanilla"])
@pytest.mark.parametrize("arch,drop", [("tiny_swin", None), ("tiny_convnext", 0.25), ("tiny_deit", 0.1)])
def test_classifiers_are_built_with_the_configured_drop_path(method, arch, drop):
    """--drop-path (or the architecture's published rate) reaches every classifier each method
    builds (student and teacher; the baselines' one classifier)."""
    from adautomix_fast.config import resolve
    from adautomix_fast.models import drop_path_rate
    from adautomix_fast.registry import build_model
    cfg = resolve(dict(dataset="digits", arch=arch, img_size=SIZE[arch], method=method, drop_path=drop))
    model = build_model(cfg, CLASSES, TINY[arch])
    expected = drop_path_rate(arch, drop)
    nets = [model.student] + ([model.teacher] if model.has_teacher else [])
    for net in nets:
        rates = _drop_rates(net)
        assert max(rates) == pytest.approx(expected), (method, rates)
    if drop is None:                                            # the test variants publish no rate
        assert expected == 0.0


def _drop_rates(net):
    """The stochastic-depth probabilities of a trunk (torchvision StochasticDepth, timm DropPath;
    timm builds a zero-rate block's as nn.Identity, hence [0.0] when there is none)."""
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth
    rates = [m.p for m in net.modules() if isinstance(m, StochasticDepth)]
    rates += [m.drop_prob for m in net.modules() if isinstance(m, DropPath)]
    return rates or [0.0]


def test_missing_timm_is_a_one_line_error(monkeypatch):
    import adautomix_fast.models.deit as deit
    monkeypatch.setitem(sys.modules, "timm", None)       # import timm -> ImportError
    with pytest.raises(UsageError, match="pip install timm") as info:
        deit.build_deit("tiny_deit", 0.0)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- one step
@pytest.mark.parametrize("arch", list(TINY))
def test_reference_and_fused_losses_and_gradients_agree(arch):
    torch.manual_seed(0)
    spec = ARCH_SPECS[arch]
    ref = AdAutoMix(arch, CLASSES, cifar_stem=TINY[arch], mix_samples=3, lam_concat=spec.lam_concat,
                       upsample=spec.upsample)
    assert ref.generator.in_channels == spec.tap_channels and ref.generator.upsample == "nearest"
    fused = copy.deepcopy(ref)
    convert_batchnorm(fused)
    set_segment_size(fused, B)
    x, y = arch_images(arch), torch.randint(0, CLASSES, (B,), generator=torch.Generator().manual_seed(1))
    plan = ref.sample_plan(B, generator=torch.Generator().manual_seed(2))
    a = ref.step_losses(x, y, plan)
    b = fused_losses(fused, x, y, plan)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5, msg=k)
    a["loss"].backward()
    b["loss"].backward()
    ga = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    gb = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    assert set(ga) == set(gb) and any(n.startswith("generator.") for n in ga)
    assert not any(n.startswith("teacher.") for n in ga)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------------------- EMA and kernels
@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("channels_last", [False, True])
def test_ema_op_runs_over_every_parameter(arch, channels_last):
    student = make(arch)
    teacher = copy.deepcopy(student)
    if channels_last:
        student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    ema, src = teacher_pairs(teacher, student)
    assert len(ema) == len(list(student.parameters()))
    expected = [0.9 * e + 0.1 * s for e, s in zip(ema, src)]
    ema_update_(ema, src, momentum_tensor(0.9, "cpu"))            # the C++ op (validates layouts)
    for e, x in zip(ema, expected):
        torch.testing.assert_close(e, x)
    ema_update_reference(ema, src, momentum_tensor(0.0, "cpu"))    # and its twin: copy
    for e, s in zip(ema, src):
        assert torch.equal(e, s)


@pytest.mark.parametrize("arch", [a for a, s in ARCH_SPECS.items() if not s.test_only])
def test_kernel_limits_hold_for_every_published_tap(arch):
    from adautomix_fast.kernels._launch import attention_config, mix_config
    spec = ARCH_SPECS[arch]
    attention_config(spec.gen_dim, torch.float32)               # raises beyond D = 512
    attention_config(spec.gen_dim, torch.bfloat16)
    side = spec.tap_size
    mix_config(5, 3, side, side, spec.image_size)                # up to N = 5, raises beyond its tiles
    if spec.cifar_stem:
        mix_config(5, 3, spec.cifar_tap_size, spec.cifar_tap_size, 32)
        # the automatic CIFAR stem goes up to 64 px (Tiny-ImageNet): twice the side
        side = spec.tap_side(64, True)
        mix_config(5, 3, side, side, 64)


@pytest.mark.parametrize("arch", ["tiny_swin", "tiny_deit", "resnet20"])
def test_triton_generator_kernels_on_the_tap(arch):
    """The generator with the Triton kernels (interpreter) equals its PyTorch math on the tap."""
    torch.manual_seed(0)
    spec = ARCH_SPECS[arch]
    model = AdAutoMix(arch, CLASSES, cifar_stem=False, mix_samples=3, lam_concat=True, upsample="nearest")
    x = images(4)
    plan = model.sample_plan(4, generator=torch.Generator().manual_seed(3))
    feats = model.teacher.tap_features(model.teacher.stem_to_stage3(x)).detach().requires_grad_(True)
    out = {}
    for kernels in ("torch", "triton"):
        model.generator.kernels = kernels
        f = feats.detach().clone().requires_grad_(True)
        m = model.generator.mask_logits(f, plan.index_gen, plan.lam_gen)
        x_mix = model.generator.mix(m, x, plan.index_gen)
        x_mix.square().sum().backward()
        out[kernels] = (x_mix.detach(), f.grad)
    assert out["torch"][0].shape == x.shape and spec.gen_dim == model.generator.dim
    for a, b in zip(out["torch"], out["triton"]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- export and weights
@pytest.mark.parametrize("arch", list(TINY))
def test_export_loads_into_the_library_constructor(arch):
    model = AdAutoMix(arch, CLASSES, cifar_stem=TINY[arch], mix_samples=2)
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    from adautomix_fast.run.checkpoint import export_torchvision
    sd = export_torchvision(model)
    lib = library_model(arch, CLASSES, cifar_stem=TINY[arch]).eval()
    lib.load_state_dict(sd)                                       # strict: every key, every shape
    x = arch_images(arch, 2)
    with torch.no_grad():
        torch.testing.assert_close(lib(x), model.teacher.eval()(x)[0])


@pytest.mark.parametrize("arch", ["tiny", "tiny_swin", "tiny_convnext", "tiny_deit"])
def test_pretrained_file_loads_trunk_not_head(arch, tmp_path):
    torch.manual_seed(1)
    cifar = arch in ("tiny", "tiny_convnext")
    lib = library_model(arch, 1000, cifar_stem=cifar)             # a library model, 1000 classes
    path = tmp_path / "weights.pth"
    torch.save(lib.state_dict(), path)
    m = make(arch) if arch != "tiny" else build_classifier("tiny", CLASSES, True)
    head_before = m.head_one.weight.clone()
    info = load_pretrained(m, str(path))
    head = ARCH_SPECS[arch].head
    assert info["skipped"] == sorted(k for k in lib.state_dict() if k.startswith(head + "."))
    own = m.state_dict()
    for k, v in lib.state_dict().items():
        if not k.startswith(head + "."):
            assert torch.equal(own[k], v), k
    assert torch.equal(m.head_one.weight, head_before)            # heads start fresh


def test_pretrained_reaches_student_and_teacher_not_generator(tmp_path):
    torch.manual_seed(0)
    src = build_classifier("tiny_convnext", 10, True)
    torch.save(export_state_dict(src), tmp_path / "exported.pth")
    model = AdAutoMix("tiny_convnext", CLASSES, cifar_stem=True, mix_samples=2)
    gen_before = copy.deepcopy(model.generator.state_dict())
    load_pretrained_model(model, str(tmp_path / "exported.pth"))
    for name in ("student", "teacher"):
        net = getattr(model, name)
        assert torch.equal(net.features[5][0].block[0].weight, src.features[5][0].block[0].weight), name
    for k, v in model.generator.state_dict().items():
        assert torch.equal(v, gen_before[k])
    # one of this engine's checkpoints works too (its teacher)
    torch.save({"format": "adautomix_fast", "model": model.state_dict()}, tmp_path / "ckpt.pt")
    other = build_classifier("tiny_convnext", 3, True)
    load_pretrained(other, str(tmp_path / "ckpt.pt"))
    assert torch.equal(other.features[0][0].weight, model.teacher.features[0][0].weight)


def test_bad_pretrained_is_one_line_and_changes_nothing(tmp_path):
    m = make("tiny_swin")
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(UsageError, match="no such file") as e1:
        load_pretrained(m, str(tmp_path / "absent.pth"))
    torch.save(library_model("tiny_convnext", 10).state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(UsageError, match=r"does not match --arch tiny_swin: missing features\.0\.2\.weight"
                                         r".*unexpected features\.0\.1\.weight.*shape features\.0\.0\.weight") as e2:
        load_pretrained(m, str(tmp_path / "convnext.pth"))
    wrong = library_model("tiny_swin", 10).state_dict()
    wrong["features.1.0.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(UsageError, match=r"shape features\.1\.0\.mlp\.0\.weight \[3, 3\] vs") as e3:
        load_pretrained(m, str(tmp_path / "shape.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(UsageError, match="not a readable state dict") as e4:
        load_pretrained(m, str(tmp_path / "junk.pth"))
    for e in (e1, e2, e3, e4):
        assert "\n" not in str(e.value)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_weight_names_need_the_local_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    m = build_classifier("r18", 10, False)
    with pytest.raises(UsageError, match=r"needs resnet18-f37072fd\.pth.*torch hub cache.*--pretrained /path/to") as e:
        load_pretrained(m, "imagenet")
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="not a torchvision weight name"):
        load_pretrained(m, "ResNet18_Weights.NOPE")
    # a cached file is used without any download
    (tmp_path / "checkpoints").mkdir()
    torch.save(library_model("r18", 1000).state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    assert load_pretrained(m, "ResNet18_Weights.IMAGENET1K_V1")["loaded"] > 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ADAUTOMIX_LONG_TESTS") != "1",
                    reason="compiling the whole Swin step takes ~6 min on 2 CPU cores: set ADAUTOMIX_LONG_TESTS=1")
def test_compiled_fused_step_follows_reference_steps_for_swin():
    """Three compiled fused steps (fullgraph, Inductor CPU) equal three reference steps on the
    tiny Swin (window attention, shifted windows, patch merging, the LayerNorm'd tap), with no
    recompilation after warm-up. Opt-in: 6m20s with a cold Inductor cache on 2 EPYC cores."""
    from adautomix_fast import ReferenceStep, Schedule, build_optimizer, resolve
    from adautomix_fast.step.fused import FusedStep
    from adautomix_fast.step.precision import Precision
    cfg = resolve(dict(dataset="digits", arch="tiny_swin", mix_samples=3, batch_size=B, epochs=1, lam_concat=True,
                       upsample="nearest", amp=False))   # fp32 on every CPU: the tolerances are fp32's
    torch.manual_seed(0)
    ref_model = AdAutoMix("tiny_swin", CLASSES, cifar_stem=False, mix_samples=3, lam_concat=True,
                          upsample="nearest")
    fused_model = copy.deepcopy(ref_model)
    schedule = Schedule(cfg, steps_per_epoch=3)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    ref = ReferenceStep(ref_model, build_optimizer(ref_model, cfg), schedule, precision)
    fused = FusedStep(fused_model, build_optimizer(fused_model, cfg), schedule, precision, compile=True)
    x, y = arch_images("tiny_swin"), torch.randint(0, CLASSES, (B,), generator=torch.Generator().manual_seed(1))
    for i in range(3):
        plan = ref_model.sample_plan(B, generator=torch.Generator().manual_seed(10 + i))
        a, b = ref(x, y, plan), fused(x, y, plan)
        for k in ("loss", "loss_amce", "loss_re", "loss_gen", "loss_k", "cos"):
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5, msg=f"step {i} {k}")
    for (k, va), (_, vb) in zip(ref_model.state_dict().items(), fused_model.state_dict().items()):
        torch.testing.assert_close(vb, va, atol=1e-4, rtol=1e-4, msg=k)
    assert fused.recompiles_after_warmup() == 0
