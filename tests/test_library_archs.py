"""Any timm or torchvision backbone: ``--arch timm/<name>``, ``--arch tv/<name>`` and modules.

Stages, tap and pooling are read from the model (adautomix_fast/models/library.py); these tests
hold them against the libraries' own forwards, the hand-wired ResNet-18, the fused step and the
export, at test sizes on the CPU."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from adautomix_fast import compare
from adautomix_fast.api import mix_model
from adautomix_fast.errors import UsageError
from adautomix_fast.methods.generator import MaskGenerator, kernel_limit_problem
from adautomix_fast.models import build_classifier, export_state_dict, library_model, specs
from adautomix_fast.models.library import check_backbone_image_size
from adautomix_fast.step.fused import fused_losses
from adautomix_fast.step.segmented_bn import SegmentedBatchNormAct2d, convert_batchnorm, set_segment_size
from tests.cli_helpers import run_cli, single_error_line
from tests.test_cli import make_folder_dataset

pytest.importorskip("timm")

# arch -> (image size for the test, stride of each stage, the tap stage)
CASES = {
    "timm/resnet18": (32, (2, 4, 8, 16, 32), 3),
    "timm/mobilenetv3_small_050": (32, (2, 4, 8, 16, 32), 3),
    "timm/regnetx_002": (32, (2, 4, 8, 16, 32), 3),
    "timm/convnext_atto": (32, (4, 8, 16, 32), 2),
    "timm/deit_tiny_patch16_224": (224, None, 6),
    "tv/mobilenet_v3_small": (32, (2, 4, 8, 16, 32), 3),
    "tv/efficientnet_b0": (32, (2, 4, 8, 16, 32), 3),
}
CLASSES = 5


def images(b, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randint(0, CLASSES, (b,), generator=g)


@pytest.mark.parametrize("arch", list(CASES))
def test_stages_tap_and_pooling_follow_the_library_model(arch):
    size, strides, tap = CASES[arch]
    net = build_classifier(arch, CLASSES, False).eval()
    assert net.tap == tap
    if strides is not None:
        assert net.layout.strides == strides
    x, _ = images(2, size)
    with torch.no_grad():
        g_in = net.tap_features(net.stem_to_stage3(x))
        assert g_in.shape[:2] == (2, net.stage3_channels) and g_in.shape[-1] >= 2
        # the heads sit on the library's own pooled (pre-logits) features
        lib = library_model(arch, CLASSES, False).eval()
        lib.load_state_dict(export_state_dict(net))
        torch.testing.assert_close(net(x)[0], lib(x), atol=1e-5, rtol=1e-5)
    target = net.cam_target()
    assert any(m is target for m in net.modules())


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("method", ["adautomix", "mixup"])
def test_one_step_of_adautomix_and_of_a_baseline(arch, method):
    size = CASES[arch][0]
    torch.manual_seed(0)
    model = mix_model(method, arch, CLASSES)
    x, y = images(4, size)
    before = [p.detach().clone() for p in model.student.parameters()]
    plan = model.complete_plan(x, y, model.sample_plan(4, generator=torch.Generator().manual_seed(1),
                                                       image_size=(size, size)))
    losses = model.step_losses(x, y, plan)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters()))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["timm/mobilenetv3_small_050", "tv/mobilenet_v3_small"])
def test_fused_step_equals_the_reference(arch):
    b, size = 8, 32
    torch.manual_seed(0)
    ref = mix_model("adautomix", arch, CLASSES)
    for m in ref.modules():   # torchvision's pre-logits dropout: one [3B] pass draws other masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    fused = copy.deepcopy(ref)
    convert_batchnorm(fused)
    set_segment_size(fused, b)
    if arch.startswith("timm/"):   # timm's BatchNorm+activation is converted, not left as is
        assert any(isinstance(m, SegmentedBatchNormAct2d) for m in fused.modules())
    x, y = images(b, size)
    plan = ref.sample_plan(b, generator=torch.Generator().manual_seed(1))
    t_ref = ref.step_losses(x, y, plan)
    t_fused = fused_losses(fused, x, y, plan, batched_student=True)
    assert set(t_ref) == set(t_fused)
    for k in t_ref:
        torch.testing.assert_close(t_fused[k], t_ref[k], atol=1e-5, rtol=1e-5, msg=k)
    t_ref["loss"].backward()
    t_fused["loss"].backward()
    g_ref, g_fused = _grads(ref), _grads(fused)
    assert set(g_ref) == set(g_fused)
    for k in g_ref:
        torch.testing.assert_close(g_fused[k], g_ref[k], atol=1e-5, rtol=1e-4, msg=k)
    for (k, a), (_, v) in zip(ref.state_dict().items(), fused.state_dict().items()):
        torch.testing.assert_close(v, a, atol=1e-6, rtol=1e-5, msg=k)


def test_timm_resnet18_gives_the_hand_wired_r18_losses():
    torch.manual_seed(0)
    hand = mix_model("adautomix", "r18", CLASSES)
    generic = mix_model("adautomix", "timm/resnet18", CLASSES)
    # same weights: the trunks share torchvision's key names, under ``net.`` in the generic one
    state = {}
    for k, v in hand.state_dict().items():
        part, _, rest = k.partition(".")
        if part in ("student", "teacher") and not rest.startswith("head_"):
            k = f"{part}.net.{rest}"
        state[k] = v
    generic.load_state_dict(state)
    x, y = images(6, 32)
    plan = hand.sample_plan(6, generator=torch.Generator().manual_seed(3))
    a, b = hand.step_losses(x, y, plan), generic.step_losses(x, y, plan)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5, msg=k)


def test_a_module_backbone_and_a_chosen_tap():
    import torchvision
    net = torchvision.models.resnet18(weights=None, num_classes=3)
    model = mix_model("adautomix", net, CLASSES, tap=2)
    assert model.student.net is net and model.student.stage3_channels == 128 and model.student.tap_stride == 8
    x, y = images(4, 32)
    plan = model.sample_plan(4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.step_losses(x, y, plan)["loss"])


@pytest.mark.parametrize("arch,message", [
    ("timm/no_such_model", "unknown timm model 'no_such_model'"),
    ("tv/no_such_model", "unknown torchvision classification model 'no_such_model'"),
    ("tv/densenet121", "no global pooling module"),
    ("tv/swin_t", "channels-last"),
])
def test_unusable_models_are_one_line_errors(arch, message):
    with pytest.raises(UsageError, match=message) as info:
        build_classifier(arch, CLASSES, False)
    assert "\n" not in str(info.value)


def test_missing_timm_is_one_line(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "timm", None)
    specs.library_spec.cache_clear()
    try:
        with pytest.raises(UsageError, match="pip install timm"):
            specs.arch_spec("timm/resnet50")
    finally:
        monkeypatch.undo()
        specs.library_spec.cache_clear()


def test_impossible_sizes_and_taps_are_one_line_errors():
    net = build_classifier("timm/resnet18", CLASSES, False)
    with pytest.raises(UsageError, match="smaller than 2x2; pass --img-size 32"):
        check_backbone_image_size(net, 16)
    check_backbone_image_size(net, 32)
    vit = build_classifier("timm/deit_tiny_patch16_224", CLASSES, False)
    with pytest.raises(UsageError, match="takes 224 px images only"):
        check_backbone_image_size(vit, 32)
    with pytest.raises(UsageError, match="the tap must be 0..3"):
        build_classifier(specs_choice("timm/resnet18", 4), CLASSES, False)


def specs_choice(arch, tap):
    from adautomix_fast.models.library import BackboneChoice
    return BackboneChoice(arch, tap=tap)


def test_a_tap_too_wide_for_the_kernels_is_reported():
    pytest.importorskip("triton")
    assert kernel_limit_problem(MaskGenerator(256), 4, 32, 3) is None
    assert "head dims" in kernel_limit_problem(MaskGenerator(2048), 4, 32, 3)   # D = 1024 > 512


@pytest.mark.parametrize("args,message", [
    (["--arch", "timm/efficientnet_b0", "--img-size", "16"], "smaller than 2x2"),
    (["--arch", "r18", "--tap", "2"], "--tap chooses the generator's stage"),
    (["--arch", "timm/nope_net"], "unknown timm model"),
])
def test_cli_errors_before_anything_is_written(args, message, tmp_path, capsys):
    code, _, err = run_cli(args + ["--output", str(tmp_path), "--epochs", "1", "--workers", "0"], capsys)
    assert code == 2 and message in single_error_line(err)
    assert not any(tmp_path.iterdir())


def test_train_a_timm_model_on_a_folder_and_export(tmp_path, capsys):
    make_folder_dataset(tmp_path / "data")
    out = tmp_path / "runs"
    code, stdout, err = run_cli(["--arch", "timm/efficientnet_b0", "--dataset", "folder", "--data-dir",
                                 str(tmp_path / "data"), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
                                 "--workers", "0", "--no-amp", "--output", str(out), "--run-name", "e"], capsys)
    assert code == 0, err
    assert "backbone 5 stages" in stdout and "generic defaults" in stdout
    start = json.loads(open(out / "e" / "log.jsonl").readline())
    assert start["type"] == "start"
    path = tmp_path / "teacher.pth"
    code, _, err = run_cli(["--resume", str(out / "e" / "checkpoint-last.pt"), "--eval-only", "--export", str(path)],
                           capsys)
    assert code == 0, err
    lib = library_model("timm/efficientnet_b0", 2, False)
    lib.load_state_dict(torch.load(path, weights_only=True))


def test_without_img_size_a_too_small_data_set_is_resized_for_the_backbone(tmp_path, capsys):
    # digits' 16 px preset gives a stride-16 tap of 1x1: the run trains at 32 px and says so;
    # an explicit --img-size 16 is an error (test_cli_errors_before_anything_is_written)
    code, stdout, err = run_cli(["--arch", "tv/mobilenet_v3_small", "--method", "mixup", "--epochs", "1",
                                 "--batch-size", "256", "--workers", "0", "--no-amp", "--output", str(tmp_path),
                                 "--run-name", "d"], capsys)
    assert code == 0, err
    assert "cannot take the 16 px images of digits; training at 32 px" in err
    assert "10 classes, 32px" in stdout
    import yaml
    assert yaml.safe_load(open(tmp_path / "d" / "config.yaml"))["img_size"] == 32   # a resumed run keeps it


def test_a_library_arch_names_one_run_folder():
    from adautomix_fast.config import resolve
    from adautomix_fast.run.folder import default_run_name
    name = default_run_name(resolve({"arch": "timm/resnet18", "method": "mixup"}), run_id="r1")
    assert name == "digits-timm-resnet18-mixup-r1"


def test_compare_runs_a_torchvision_model(tmp_path):
    make_folder_dataset(tmp_path / "data")
    argv = ["--methods", "mixup,adautomix", "--arch", "tv/mobilenet_v3_small", "--dataset", "folder",
            "--data-dir", str(tmp_path / "data"), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "--no-amp", "--output", str(tmp_path / "out"), "--name", "c"]
    assert compare.main(argv) == 0
    rows = json.loads((tmp_path / "out" / "c" / "comparison.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["mixup", "adautomix"]
    assert os.path.exists(tmp_path / "out" / "c" / "efficiency.png")


@pytest.mark.parametrize("arch", ["timm/mobilenetv3_small_050", "tv/mobilenet_v3_small"])
def test_pretrained_from_a_library_file_and_from_a_missing_cache(arch, tmp_path, monkeypatch):
    from adautomix_fast.models import load_pretrained
    source = build_classifier(arch, CLASSES, False)
    lib = library_model(arch, 7, False)   # the library's own model, another head size
    lib.load_state_dict({k: v for k, v in export_state_dict(source).items()
                         if not k.startswith(source.library_head + ".")}, strict=False)
    path = tmp_path / "weights.pth"
    torch.save(lib.state_dict(), path)
    target = build_classifier(arch, CLASSES, False)
    info = load_pretrained(target, str(path))
    assert info["skipped"]   # the library's head is not loaded: the two heads start fresh
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        if not k.startswith("head_"):
            torch.testing.assert_close(b, a, msg=k)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UsageError, match="cannot be downloaded here") as err:
        load_pretrained(target, "imagenet")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["mixup", "cutmix", "adautomix"])
def test_a_baseline_and_adautomix_take_the_same_fused_and_reference_step(method):
    from adautomix_fast.api import LoopSchedule, param_groups
    from adautomix_fast.step.fused import FusedStep
    from adautomix_fast.step.precision import Precision
    from adautomix_fast.step.reference import ReferenceStep
    torch.manual_seed(0)
    ref_model = mix_model(method, "timm/resnet18", CLASSES)
    fused_model = copy.deepcopy(ref_model)
    steps = []
    for model, cls, kw in ((ref_model, ReferenceStep, {}), (fused_model, FusedStep, {"compile": False})):
        opt = torch.optim.SGD(param_groups(model), lr=0.1, momentum=0.9)
        steps.append(cls(model, opt, LoopSchedule(opt, 10), Precision("cpu", None, "test", None),
                         plan_generator=torch.Generator().manual_seed(5), **kw))
    x, y = images(6, 32)
    plan = ref_model.complete_plan(x, y, ref_model.sample_plan(6, generator=torch.Generator().manual_seed(2),
                                                               image_size=(32, 32)))
    a, b = steps[0](x, y, plan), steps[1](x, y, plan)
    torch.testing.assert_close(b["loss"], a["loss"], atol=1e-5, rtol=1e-5)
    for (k, p), (_, q) in zip(ref_model.state_dict().items(), fused_model.state_dict().items()):
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-4, msg=k)


def test_the_api_state_dicts_resume_a_step_exactly():
    """model, optimizer and step state dicts, saved after two steps and loaded into a fresh
    model, give the third step the uninterrupted run takes (same plan draws, same update)."""
    from adautomix_fast.api import param_groups, train_step

    def fresh():
        torch.manual_seed(0)
        model = mix_model("adautomix", "timm/resnet18", CLASSES)
        opt = torch.optim.SGD(param_groups(model), lr=0.1, momentum=0.9)
        return model, opt, train_step(model, opt, total_steps=10, seed=3)

    batches = [images(6, 32, seed=i) for i in range(3)]
    model, opt, step = fresh()
    for x, y in batches[:2]:
        step(x, y)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "step": step.state_dict()})
    uninterrupted = step(*batches[2])
    model, opt, step = fresh()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    step.load_state_dict(saved["step"])
    resumed = step(*batches[2])
    for k in ("loss", "loss_amce", "loss_gen", "lr", "ema_momentum"):
        torch.testing.assert_close(resumed[k], uninterrupted[k], atol=0, rtol=0, msg=k)


@pytest.mark.slow
def test_the_compiled_library_step_is_one_graph_equal_to_the_reference():
    """The API's fused step on a timm backbone compiles with ``fullgraph=True`` (so no hook or
    adapter of the generic path breaks the graph), equals the reference step for two steps,
    and does not recompile after warm-up. The plans are given: the fused step draws AdAutoMix's
    in its graph, from another stream than the reference's. aot_eager: dynamo's capture and
    AOTAutograd's graphs, which are what a library backbone could break; Inductor's code for
    these ops (convolutions, BatchNorm, ReLU, pooling) is held to the reference by
    tests/test_fused.py's compiled steps."""
    from adautomix_fast.api import param_groups, train_step
    b = 8
    torch.manual_seed(0)
    ref_model = mix_model("adautomix", "timm/resnet18", CLASSES)
    fused_model = copy.deepcopy(ref_model)
    steps = []
    for model, impl in ((ref_model, "reference"), (fused_model, "fused")):
        opt = torch.optim.SGD(param_groups(model), lr=0.1, momentum=0.9)
        steps.append(train_step(model, opt, total_steps=10, impl=impl, seed=4, compile_backend="aot_eager"))
    for i in range(2):
        x, y = images(b, 32, seed=i)
        plan = ref_model.sample_plan(b, generator=torch.Generator().manual_seed(10 + i))
        a, c = steps[0](x, y, plan), steps[1](x, y, plan)
        for k in ("loss", "loss_amce", "loss_re", "loss_gen", "cos"):
            torch.testing.assert_close(c[k], a[k], atol=1e-5, rtol=1e-5, msg=f"step {i} {k}")
    for (k, p), (_, q) in zip(ref_model.state_dict().items(), fused_model.state_dict().items()):
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-4, msg=k)
    assert steps[1].recompiles_after_warmup() == 0
