"""The CIFAR networks: He et al.'s CIFAR ResNets (``resnet20/32/56``) and PreAct-ResNet-18
(``preact_r18``), and ``tiny_preact`` (PreAct-ResNet's class, narrow and shallow).

Their definitions against the published ones (parameter counts, option-A shortcuts, the released
pre-activation block and keys), their taps and stages, the stem rules, the data set's recipe,
every method through both step implementations, the fused step equal to the reference on
``resnet20`` and ``preact_r18`` (losses, gradients, buffers), the export round trip and one CLI
epoch of ``resnet20`` on digits with each step.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from adautomix_fast import AdAutoMix
from adautomix_fast.config import resolve
from adautomix_fast.errors import UsageError
from adautomix_fast.models import (
    ARCH_SPECS,
    build_classifier,
    check_image_size,
    cifar_resnet,
    default_cifar_stem,
    export_state_dict,
    library_model,
    load_pretrained,
    preact_resnet18,
)
from adautomix_fast.models.cifar_resnet import BasicBlock, CifarResNetClassifier, ShortcutA
from adautomix_fast.models.preact_resnet import PreActBlock, PreActResNetClassifier
from adautomix_fast.models.specs import ARCH_NAMES as ARCHS
from adautomix_fast.registry import METHODS, build_model
from adautomix_fast.run.checkpoint import export_torchvision
from adautomix_fast.step.base import make_plan_generator
from adautomix_fast.step.fused import FusedStep, fused_losses
from adautomix_fast.step.optim import build_optimizer
from adautomix_fast.step.precision import Precision
from adautomix_fast.step.reference import ReferenceStep
from adautomix_fast.step.schedules import Schedule
from adautomix_fast.step.segmented_bn import convert_batchnorm, set_segment_size

from cli_helpers import read_log, run_cli, single_error_line
from optional import skip_without_requirements

K = 5   # classes


def images(b, size, seed=0, dtype=torch.float32):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(b, seed=1):
    return torch.randint(0, K, (b,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the definitions
def test_parameter_counts_are_the_published_ones():
    """0.27M / 0.46M / 0.85M (He et al. 2016, Table 6: option A has no shortcut parameters) and
    the released preactresnet18's 11.17M, for 10 classes."""
    counts = {arch: sum(p.numel() for p in library_model(arch, 10, True).parameters())
              for arch in ("resnet20", "resnet32", "resnet56", "preact_r18")}
    assert counts == {"resnet20": 269_722, "resnet32": 464_154, "resnet56": 853_018, "preact_r18": 11_171_146}
    # the classifier: the same trunk with two heads instead of one
    net = build_classifier("resnet20", 10, True)
    assert sum(p.numel() for p in net.parameters()) == counts["resnet20"] + 64 * 10 + 10


def test_the_cifar_resnet_has_three_stages_of_n_blocks_and_option_a_shortcuts():
    for depth, n in ((20, 3), (32, 5), (56, 9)):
        net = cifar_resnet(depth, 10)
        assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3)] == [n, n, n]
        assert [getattr(net, f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3)] == [16, 32, 64]
        strides = [block.conv1.stride[0] for i in (1, 2, 3) for block in getattr(net, f"layer{i}")]
        assert strides == [1] * n + [2] + [1] * (n - 1) + [2] + [1] * (n - 1)
        assert not any("shortcut" in name for name, _ in net.named_parameters())
    with pytest.raises(UsageError, match="depth 6n"):
        cifar_resnet(21)
    # option A: subsample by 2, the new channels zero (8 before, 8 after for 16 -> 32)
    x = torch.randn(2, 16, 8, 8)
    out = ShortcutA(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    # the block adds it before the last ReLU: with conv2 silenced, the block is ReLU(shortcut)
    block = BasicBlock(16, 32, 2).eval()
    torch.nn.init.zeros_(block.bn2.weight)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(out))


@pytest.mark.parametrize("in_planes,planes,stride", [(64, 64, 1), (64, 128, 2)])
def test_the_preact_block_is_the_released_one(in_planes, planes, stride):
    """BN-ReLU-conv-BN-ReLU-conv plus the shortcut: the input itself, or a 1x1 convolution of the
    pre-activated input where the shape changes (the released block)."""
    torch.manual_seed(0)
    block = PreActBlock(in_planes, planes, stride).eval()
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):   # non-trivial statistics and affine parameters
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, in_planes, 8, 8)
        pre = F.relu(block.bn1(x))
        body = block.conv2(F.relu(block.bn2(block.conv1(pre))))
        shortcut = x if stride == 1 else F.conv2d(pre, block.shortcut[0].weight, stride=stride)
        torch.testing.assert_close(block(x), body + shortcut)
    assert (block.shortcut is None) == (stride == 1)


def test_the_state_dict_keys_are_the_reimplementations():
    """Exports load into akamaster's resnet20 and the released preactresnet18 (and their state
    dicts load here): the same module names, the classifier called ``linear``."""
    r20 = set(export_state_dict(build_classifier("resnet20", K, True)))
    per_block = ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                 "bn1.num_batches_tracked", "conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean",
                 "bn2.running_var", "bn2.num_batches_tracked")
    stem = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"}
    blocks = {f"layer{i}.{j}.{k}" for i in (1, 2, 3) for j in range(3) for k in per_block}
    assert r20 == stem | blocks | {"linear.weight", "linear.bias"}
    pre = set(export_state_dict(build_classifier("preact_r18", K, True)))
    assert "conv1.weight" in pre and "bn1.weight" not in pre            # the stem has no norm
    assert {k for k in pre if "shortcut" in k} == {f"layer{i}.0.shortcut.0.weight" for i in (2, 3, 4)}
    assert not any(k.startswith("bn") for k in pre)                       # no norm after the last block
    assert {k for k in pre if k.startswith("linear")} == {"linear.weight", "linear.bias"}
    assert len(pre) == 1 + 8 * (2 * 5 + 2) + 3 + 2                      # 8 blocks: 2 BNs (5 keys), 2 convs


# ---------------------------------------------------------------------------- taps and stages
@pytest.mark.parametrize("arch,stem,size,tap", [
    ("resnet20", True, 32, (64, 8)),
    ("resnet56", True, 16, (64, 4)),
    ("preact_r18", True, 16, (256, 4)),
    ("preact_r18", False, 32, (256, 4)),    # the released stride-2 Tiny-ImageNet stem
    ("tiny_preact", True, 16, (32, 4)),
])
def test_tap_stages_and_pooling(arch, stem, size, tap):
    torch.manual_seed(0)
    m = build_classifier(arch, K, stem).eval()
    spec = ARCH_SPECS[arch]
    x = images(2, size)
    with torch.no_grad():
        state = m.stem_to_stage3(x)
        g_in = m.tap_features(state)
        assert tuple(g_in.shape) == (2, *tap[:1], tap[1], tap[1])
        assert (spec.tap_channels, spec.tap_side(size, stem)) == tap and m.stage3_channels == tap[0]
        # the tap is layer3's output of the plain network (the export's own modules)
        lib = library_model(arch, K, stem).eval()
        lib.load_state_dict(export_state_dict(m))
        h = lib.conv1(x)
        if arch.startswith("resnet"):
            h = F.relu(lib.bn1(h))
        torch.testing.assert_close(state, lib.layer3(lib.layer2(lib.layer1(h))))
        # stages compose at every boundary, and the classifier's head_one is the network's output
        whole = m.pool(m.forward_stages(x))
        for k in range(1, m.num_stages + 1):
            torch.testing.assert_close(m.pool(m.forward_stages(m.forward_stages(x, 0, k), k)), whole)
        torch.testing.assert_close(m.stage3_to_pooled(state), whole)
        torch.testing.assert_close(m(x)[0], lib(x))
    # ManifoldMix: the input, after layer1 and after layer2 (Manifold Mixup's k = 0, 1, 2)
    assert m.mix_points == (0, 2, 3)
    assert [m.forward_stages(x, 0, p).shape[1] for p in m.mix_points[1:]] == \
        [lib.layer1[-1].conv2.out_channels, lib.layer2[-1].conv2.out_channels]
    target = m.cam_target()
    assert target is (m.layer3[-1] if arch.startswith("resnet") else m.layer4[-1])


@pytest.mark.parametrize("arch,stem,size",
                         [("resnet20", True, 32), ("preact_r18", True, 32), ("preact_r18", False, 64)])
def test_the_published_taps_are_8x8(arch, stem, size):
    """The CIFAR ResNets' last stage and PreAct-ResNet-18's layer3 at 32 px (the stride-2 stem:
    at Tiny-ImageNet's 64 px)."""
    m = build_classifier(arch, K, stem).eval()
    with torch.no_grad():
        tap = m.tap_features(m.stem_to_stage3(images(1, size)))
    channels = ARCH_SPECS[arch].tap_channels
    assert tuple(tap.shape) == (1, channels, 8, 8) and ARCH_SPECS[arch].tap_side(size, stem) == 8
    assert channels == {"resnet20": 64, "preact_r18": 256}[arch]


def test_stem_rules_and_one_line_refusals():
    # the CIFAR ResNets: the CIFAR stem at every size, an explicit --no-cifar-stem refused
    assert default_cifar_stem(224, "resnet20") and default_cifar_stem(32, "resnet20")
    assert not default_cifar_stem(224, "preact_r18") and default_cifar_stem(64, "preact_r18")
    with pytest.raises(UsageError, match="resnet20 has only its 3x3 stride-1 CIFAR stem") as e1:
        check_image_size("resnet20", 32, cifar_stem=False)
    check_image_size("preact_r18", 64, cifar_stem=False)
    check_image_size("resnet20", 224)
    # the library API passes cifar_stem=False by default: the network keeps its only stem
    assert build_classifier("resnet20", K, False).cifar_stem is True
    assert build_classifier("preact_r18", K, False).conv1.stride == (2, 2)
    assert build_classifier("preact_r18", K, True).conv1.stride == (1, 1)
    with pytest.raises(UsageError, match="--drop-path applies to the Swin, ConvNeXt and DeiT") as e2:
        build_classifier("resnet20", K, True, drop_path=0.1)
    with pytest.raises(UsageError, match="--drop-path applies"):
        build_classifier("preact_r18", K, True, drop_path=0.1)
    for e in (e1, e2):
        assert "\n" not in str(e.value)
    assert type(build_classifier("resnet32", K, True)) is CifarResNetClassifier
    assert type(build_classifier("preact_r18", K, True)) is PreActResNetClassifier
    # --arch choices are the spec table, the published networks before the test variants
    assert set(ARCHS) == set(ARCH_SPECS) and ARCHS.index("preact_r18") < ARCHS.index("tiny")


@pytest.mark.parametrize("arch", ["resnet20", "resnet56", "preact_r18"])
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "tiny-imagenet"])
def test_the_data_sets_recipe_applies(arch, dataset):
    """Every setting but the architecture is the one the data set's ResNet-18 run takes (the
    CIFAR recipe: SGD lr 0.1, batch 100, N = 3, the generator's published CIFAR settings)."""
    for method in ("adautomix", "mixup"):
        ours = resolve(dict(dataset=dataset, arch=arch, method=method)).identity()
        r18 = resolve(dict(dataset=dataset, arch="r18", method=method)).identity()
        assert ours.pop("arch") == arch and r18.pop("arch") == "r18"
        assert ours == r18


# ---------------------------------------------------------------------------- the steps
def _assert_one_step_each(arch, method, size=16, b=8):
    cfg = resolve(dict(arch=arch, method=method, batch_size=b, epochs=2, img_size=size, amp=False))
    torch.manual_seed(0)
    ref_model = build_model(cfg, K, True)
    fused_model = copy.deepcopy(ref_model)
    schedule = Schedule(cfg, steps_per_epoch=3)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    ref = ReferenceStep(ref_model, build_optimizer(ref_model, cfg), schedule, precision,
                        plan_generator=make_plan_generator(torch.device("cpu"), 0))
    fused = FusedStep(fused_model, build_optimizer(fused_model, cfg), schedule, precision, compile=False)
    x, y = images(b, size), labels(b)
    before = {n: p.detach().clone() for n, p in ref_model.student.named_parameters()}
    plan = ref_model.complete_plan(x, y, ref_model.sample_plan(b, torch.Generator().manual_seed(100),
                                                               image_size=(size, size)))
    a, f = ref(x, y, plan), fused(x, y, plan)
    assert torch.isfinite(a["loss"])
    for k in a:
        torch.testing.assert_close(f[k], a[k], atol=1e-5, rtol=1e-5, msg=k)
    for (n1, p1), (n2, p2) in zip(ref_model.state_dict().items(), fused_model.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p2, p1, atol=1e-4, rtol=1e-4, msg=n1)
    moved = [n for n, p in ref_model.student.named_parameters() if not torch.equal(p, before[n])]
    assert any(k.startswith("layer1.") for k in moved) and any(k.startswith("head_") for k in moved)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_takes_one_step_of_each_implementation_on_resnet20(method):
    skip_without_requirements(method)
    _assert_one_step_each("resnet20", method)


@pytest.mark.parametrize("method", ["adautomix", "automix", "manifoldmix", "mixup", "puzzlemix"])
def test_methods_take_both_steps_on_the_preact_class(method):
    skip_without_requirements(method)
    _assert_one_step_each("tiny_preact", method)


def _fused_equals_reference(arch, size, b, tol):
    torch.manual_seed(0)
    ref = AdAutoMix(arch, K, cifar_stem=True, mix_samples=3)
    assert ref.generator.in_channels == ARCH_SPECS[arch].tap_channels
    fused = copy.deepcopy(ref)
    convert_batchnorm(fused)
    set_segment_size(fused, b)
    x, y = images(b, size, dtype=torch.get_default_dtype()), labels(b)
    plan = ref.sample_plan(b, generator=torch.Generator().manual_seed(2))
    a = ref.step_losses(x, y, plan)
    f = fused_losses(fused, x, y, plan)
    assert set(a) == set(f)
    for k in a:
        torch.testing.assert_close(f[k], a[k], atol=tol, rtol=tol, msg=k)
    a["loss"].backward()
    f["loss"].backward()
    ga = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    gf = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    assert set(ga) == set(gf) and any(n.startswith("generator.") for n in ga)
    assert any(n.startswith("student.layer1.") for n in ga) and not any(n.startswith("teacher.") for n in ga)
    for n in ga:
        torch.testing.assert_close(gf[n], ga[n], atol=tol, rtol=10 * tol, msg=n)
    # buffers: the teacher's and the student's BatchNorm running statistics after the step
    fused_buffers = dict(fused.named_buffers())
    names = [n for n, _ in ref.named_buffers() if "running_" in n or "num_batches" in n]
    assert any(n.startswith("teacher.") for n in names) and any(n.startswith("student.") for n in names)
    for n, va in ref.named_buffers():
        if n in names:
            torch.testing.assert_close(fused_buffers[n], va, atol=tol, rtol=tol, msg=n)


def test_fused_step_equals_reference_on_resnet20():
    _fused_equals_reference("resnet20", 32, 6, 1e-5)


@pytest.mark.slow
def test_fused_step_equals_reference_on_preact_r18():
    """In float64: the 18 layers with BatchNorm on 2x2 maps of 4 images amplify fp32 rounding
    (the separate and batched passes sum in other orders) to 1% in some gradients; in float64
    they agree to 1e-9, which only the same mathematics gives."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _fused_equals_reference("preact_r18", 16, 4, 1e-9)
    finally:
        torch.set_default_dtype(default)


# ---------------------------------------------------------------------------- export and weights
@pytest.mark.parametrize("arch,stem,size", [("resnet20", True, 32), ("preact_r18", True, 16),
                                            ("preact_r18", False, 32)])
def test_export_round_trip(arch, stem, size, tmp_path):
    """The teacher as a state dict that the package's constructor (``cifar_resnet(20)``,
    ``preact_resnet18``) loads strictly, with the teacher's logits; and back as --pretrained."""
    torch.manual_seed(0)
    model = AdAutoMix(arch, K, cifar_stem=stem, mix_samples=2)
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = export_torchvision(model)
    plain = cifar_resnet(20, K) if arch == "resnet20" else preact_resnet18(K, cifar_stem=stem)
    plain.load_state_dict(sd)                                         # strict: every key, every shape
    assert torch.equal(sd["linear.weight"], model.teacher.head_one.weight)
    x = images(2, size)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.teacher.eval()(x)[0])
    torch.save(sd, tmp_path / "exported.pth")
    other = build_classifier(arch, 3, stem)
    info = load_pretrained(other, str(tmp_path / "exported.pth"))
    assert info["skipped"] == ["linear.bias", "linear.weight"]
    own = other.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items() if not k.startswith("linear."))


# ---------------------------------------------------------------------------- the CLI
COMMON = ["--dataset", "digits", "-j", "0", "--epochs", "1", "--vis-every", "0", "--no-amp", "--batch-size", "200",
          "--img-size", "8", "--log-interval", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_one_cli_epoch_of_resnet20_on_digits_and_its_export(impl, tmp_path, capsys):
    """Digits at their own 8 px (a 2x2 tap) in batches of 200: 7 steps; the fused step traced as
    one graph (aot_eager: dynamo's capture without Inductor's code generation)."""
    args = ["--arch", "resnet20", "--impl", impl, *COMMON, "--output", str(tmp_path), "--run-name", "r",
            "--export", str(tmp_path / "r20.pth")]
    if impl == "fused":
        args += ["--compile-backend", "aot_eager"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "8px, CIFAR stem" in out.splitlines()[0]
    records = read_log(tmp_path / "r")
    start = next(r for r in records if r["type"] == "start")
    train = [r for r in records if r["type"] == "train"]
    assert start["impl"] == impl and [r["step"] for r in train] == list(range(1, 8))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    if impl == "fused":
        assert train[-1]["recompiles_after_warmup"] == 0 and train[-1]["nonfinite_steps"] == 0
    epoch = [r for r in records if r["type"] == "epoch"][-1]
    assert epoch["images"] == 360 and 0 <= epoch["teacher_one_top1"] <= 100
    sd = torch.load(tmp_path / "r20.pth", weights_only=True)
    cifar_resnet(20, 10).load_state_dict(sd)
    teacher = torch.load(tmp_path / "r" / "checkpoint-last.pt", weights_only=True)["model"]
    assert torch.equal(sd["linear.weight"], teacher["teacher.head_one.weight"])


@pytest.mark.parametrize("args,message", [
    (["--arch", "resnet20", "--no-cifar-stem"], "resnet20 has only its 3x3 stride-1 CIFAR stem"),
    (["--arch", "resnet32", "--drop-path", "0.1"], "--drop-path applies to the Swin, ConvNeXt and DeiT"),
    (["--arch", "preact_r18", "--pretrained", "imagenet"], "preact_r18 has no published ImageNet weights"),
])
def test_cli_refusals_are_one_line_before_anything_is_written(args, message, tmp_path, capsys):
    code, _, err = run_cli([*args, "-j", "0", "--output", str(tmp_path / "runs")], capsys)
    assert code == 2
    assert message in single_error_line(err)
    assert not (tmp_path / "runs").exists()
