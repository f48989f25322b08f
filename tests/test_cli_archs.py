"""The architecture recipes through the CLI: one epoch of each test architecture with
the reference and the fused step, pretrained weights from an export, the fine-grained data sets
on generated files, the recipe presets and flags, and the one-line errors.

The test architectures (``tiny_swin``, ``tiny_convnext``, ``tiny_deit``) are the classes of
swin_t / convnext_t / deit_s with narrow settings, on the bundled digits. The fused CLI runs use
``--compile-backend aot_eager``: the whole step traced by dynamo as one graph (the same capture,
guards and recompilation counting as Inductor), without Inductor's code generation, which would
take minutes per architecture on two cores.
"""

import os
import sys

import pytest
import torch

from adautomix_fast.config import Config, resolve
from adautomix_fast.models import library_model
from adautomix_fast.step.schedules import Schedule
from adautomix_fast.train import build_config, get_args_parser, main, recipe_settings

from cli_helpers import read_log, run_cli, single_error_line

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
from test_finegrained import make_aircraft, make_cars, make_cub  # noqa: E402  (the generated layouts)

# arch -> image size (digits' default 16 px; DeiT's position table is learned at 32) and the
# automatic CIFAR stem (ConvNeXt has one; Swin and DeiT none).
ARCHS = {"tiny_swin": (16, False), "tiny_convnext": (16, True), "tiny_deit": (32, False)}
RECIPE = ["--opt", "adamw", "--lr", "2e-3", "--gen-lr", "1e-3", "--weight-decay", "0.05", "--warmup-epochs", "0.5",
          "--lr-per-step", "--clip-grad", "5", "--drop-path", "0.1", "--label-smoothing", "0.1"]
# Batches of 200: 7 steps per epoch of digits, each logged.
COMMON = ["--workers", "0", "--batch-size", "200", "--epochs", "1", "--no-amp", "--log-interval", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One epoch of every test architecture with each step implementation, each exporting its
    teacher (shared by the tests below)."""
    out = tmp_path_factory.mktemp("runs")
    done = {}
    for arch, (size, _) in ARCHS.items():
        for impl in ("reference", "fused"):
            name = f"{arch}-{impl}"
            args = ["--arch", arch, "--img-size", str(size), "--impl", impl, *RECIPE, *COMMON,
                    "--output", str(out), "--run-name", name, "--export", str(out / f"{name}.pth")]
            if impl == "fused":
                args += ["--compile-backend", "aot_eager"]
            code = main(args)
            done[(arch, impl)] = (code, out / name, out / f"{name}.pth")
    return done


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_epoch_of_each_architecture_with_its_recipe(runs, arch, impl):
    code, folder, _ = runs[(arch, impl)]
    assert code == 0
    records = read_log(folder)
    start = next(r for r in records if r["type"] == "start")
    train = [r for r in records if r["type"] == "train"]
    epoch = [r for r in records if r["type"] == "epoch"][-1]
    assert start["impl"] == impl and start["steps_per_epoch"] == 7
    assert [r["step"] for r in train] == list(range(1, 8))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    # every step's learning rates: the warm-up (half an epoch) into the per-step cosine
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    schedule = Schedule(Config.from_dict(ckpt["config"]), steps_per_epoch=7)
    assert schedule.warmup_steps == 4
    for r in train:
        lr, lr_gen = schedule.lrs(r["step"] - 1)
        assert (r["lr"], r["lr_gen"]) == (pytest.approx(lr, rel=1e-6), pytest.approx(lr_gen, rel=1e-6))
    assert train[0]["lr"] == pytest.approx(2e-3 * 1e-5, rel=1e-3)
    if impl == "fused":
        assert train[-1]["recompiles_after_warmup"] == 0 and train[-1]["nonfinite_steps"] == 0
    assert epoch["images"] == 360 and 0 <= epoch["teacher_one_top1"] <= 100
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["student", "generator", "student_no_decay", "generator_no_decay"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.05, 0.0, 0.0]
    assert all("exp_avg_sq" in s for s in ckpt["optimizer"]["state"].values())
    config = ckpt["config"]
    assert (config["optimizer"], config["clip_grad"], config["drop_path"]) == ("adamw", 5.0, 0.1)
    # the generator's published settings for the family, from the config defaults
    assert (config["upsample"], config["lam_concat"]) == ("nearest", True)


def test_summary_names_the_recipe_and_the_stem(tmp_path, capsys, monkeypatch):
    """The run summary (stdout, before training) names the optimizer and the recipe."""
    from adautomix_fast.run import trainer
    monkeypatch.setattr(trainer.Trainer, "fit", lambda self, end: {})
    code, out, _ = run_cli(["--arch", "tiny_convnext", *RECIPE, *COMMON, "--output", str(tmp_path)], capsys)
    assert code == 0
    summary = out.splitlines()[0]
    assert "16px, CIFAR stem" in summary
    for part in ("AdamW lr 0.002 (G 0.001)", "wd 0.05 (none on norms/biases/position tables)", "warm-up 0.5 ep",
                 "cosine per step to 0", "clip 5", "drop path 0.1", "label smoothing 0.1"):
        assert part in summary, part
    code, out, _ = run_cli(["--arch", "tiny", *COMMON, "--output", str(tmp_path)], capsys)
    assert "SGD momentum 0.9 lr 0.02, wd 0.0001, cosine per epoch to 0" in out.splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_cli_export_loads_into_the_library_constructor(runs, arch):
    code, folder, export = runs[(arch, "reference")]
    assert code == 0 and export.is_file()
    sd = torch.load(export, weights_only=True)
    lib = library_model(arch, 10, cifar_stem=ARCHS[arch][1])
    lib.load_state_dict(sd)                                       # strict: every key and shape
    teacher = torch.load(folder / "checkpoint-last.pt", weights_only=True)["model"]
    head = {"tiny_swin": "head", "tiny_convnext": "classifier.2", "tiny_deit": "head"}[arch]
    assert torch.equal(sd[head + ".weight"], teacher["teacher.head_one.weight"])


# ---------------------------------------------------------------------------- pretrained weights
def captured_model(monkeypatch):
    """Replace training by a capture of the model as the trainer receives it."""
    from adautomix_fast.run import trainer
    seen = {}

    def fit(self, end_epoch):
        seen["model"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {}
    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("source", ["export", "checkpoint"])
def test_pretrained_from_a_previous_run(runs, source, tmp_path, capsys, monkeypatch):
    """--pretrained FILE (an --export, or a run's checkpoint: its teacher): the student's trunk
    loads it, the teacher copies the student, the heads and the generator start fresh."""
    _, folder, export = runs[("tiny_convnext", "reference")]
    path = export if source == "export" else folder / "checkpoint-last.pt"
    weights = torch.load(export, weights_only=True)
    seen = captured_model(monkeypatch)
    base = ["--arch", "tiny_convnext", *RECIPE, *COMMON, "--output", str(tmp_path)]
    code, out, _ = run_cli(base + ["--pretrained", str(path)], capsys)
    assert code == 0 and f"pretrained {path}" in out and "heads fresh" in out
    loaded = seen["model"]
    code, _, _ = run_cli(base, capsys)
    fresh = seen["model"]
    for k, v in weights.items():
        if k.startswith("classifier.2."):
            continue
        assert torch.equal(loaded["student." + k], v), k
        assert torch.equal(loaded["teacher." + k], v), k
    for k in loaded:
        if k.startswith(("generator.", "student.head_", "teacher.head_")):
            assert torch.equal(loaded[k], fresh[k]), k               # as initialised without weights
    assert not torch.equal(loaded["student.features.0.0.weight"], fresh["student.features.0.0.weight"])


def test_pretrained_is_not_reloaded_on_resume(tmp_path, capsys, monkeypatch):
    """A resumed run holds its weights: the --pretrained file may be gone. (Training is replaced
    by writing the checkpoint: what matters happens before it.)"""
    from adautomix_fast.run import trainer
    monkeypatch.setattr(trainer.Trainer, "fit", lambda self, end: (self.save(), {})[1])
    weights = tmp_path / "w.pth"
    torch.save(library_model("tiny", 10, cifar_stem=True).state_dict(), weights)
    args = ["--arch", "tiny", *COMMON, "--output", str(tmp_path), "--run-name", "r", "--pretrained", str(weights)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and f"pretrained {weights}" in out
    weights.unlink()
    code, out, err = run_cli(["--resume", str(tmp_path / "r")], capsys)
    assert code == 0 and "resuming after epoch 0" in out, err
    assert "pretrained" not in out.splitlines()[0]


# ---------------------------------------------------------------------------- one-line errors
@pytest.fixture(scope="module")
def convnext_export(tmp_path_factory):
    """What --export writes for a CIFAR-stem tiny_convnext: torchvision's ConvNeXt state dict."""
    path = tmp_path_factory.mktemp("weights") / "convnext.pth"
    torch.save(library_model("tiny_convnext", 10, cifar_stem=True).state_dict(), path)
    return path


ERRORS = [
    ("bad path", ["--arch", "tiny_swin", "--pretrained", "/nonexistent/w.pth"],
     "--pretrained /nonexistent/w.pth: no such file"),
    ("mismatched state dict", ["--arch", "tiny_swin", "--pretrained", "{convnext}"],
     "does not match --arch tiny_swin: missing features.0.2.weight"),
    ("CIFAR-stem export into the stemless trunk", ["--arch", "tiny_convnext", "--img-size", "32", "--no-cifar-stem",
                                                    "--pretrained", "{convnext}"],
     "shape features.0.0.weight [8, 3, 3, 3] vs [8, 3, 4, 4]"),
    ("no weights published", ["--arch", "tiny_swin", "--pretrained", "imagenet"],
     "tiny_swin has no published ImageNet weights"),
    ("Swin at a size its tap does not tile", ["--arch", "tiny_swin", "--img-size", "24"],
     "tiny_swin needs an image size that is a multiple of 16"),
    ("Swin-T on 16 px digits", ["--arch", "swin_t"],
     "swin_t needs an image size that is a multiple of 32 (its generator tap "
     "is the image / 32), got 16: pass --img-size 224 as its presets do"),
    ("ConvNeXt without its stem below 32 px", ["--arch", "tiny_convnext", "--no-cifar-stem"],
     "without the CIFAR stem needs images of at least 32 px, got 16: use --cifar-stem"),
    ("DeiT at another size", ["--arch", "tiny_deit"], "tiny_deit takes 32 px images only"),
    ("Swin with a CIFAR stem", ["--arch", "tiny_swin", "--cifar-stem"], "tiny_swin has no CIFAR stem"),
    ("clip norm zero", ["--clip-grad", "0"], "--clip-grad must be a positive norm"),
    ("clip norm not a number", ["--clip-grad", "ten"], "expected a number or 'none', got 'ten'"),
    ("drop path on a ResNet", ["--arch", "tiny", "--drop-path", "0.1"],
     "--drop-path applies to the Swin, ConvNeXt and DeiT"),
    ("unknown optimizer", ["--opt", "lamb"], "argument --opt: invalid choice: 'lamb'"),
    ("bad RandAugment", ["--aa", "rand-q3"], "unknown part 'q3'"),
    ("warm-up longer than training", ["--warmup-epochs", "5", "--epochs", "2"],
     "--warmup-epochs must be between 0 and --epochs 2"),
]


@pytest.mark.parametrize("case,args,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_recipe_input_is_one_line_exit_2_and_writes_nothing(case, args, message, convnext_export, tmp_path,
                                                                capsys):
    args = [a.replace("{convnext}", str(convnext_export)) for a in args]
    code, _, err = run_cli(["--workers", "0", *args, "--output", str(tmp_path / "runs")], capsys)
    assert code == 2, err
    assert message in single_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_finegrained_preset_needs_cached_weights_in_one_line(tmp_path, capsys, monkeypatch):
    """The fine-grained presets start from ImageNet weights: served from the local torch hub
    cache only, otherwise one line names the file to fetch."""
    make_cub(tmp_path / "data")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code, _, err = run_cli(["--preset", "cub-r18", "--data-dir", str(tmp_path / "data"), "--workers", "0",
                            "--batch-size", "4", "--output", str(tmp_path / "runs")], capsys)
    assert code == 2
    line = single_error_line(err)
    assert "needs resnet18-f37072fd.pth" in line and "--pretrained /path/to/resnet18-f37072fd.pth" in line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- fine-grained data
@pytest.mark.parametrize("dataset,make", [("cub200", make_cub), ("aircraft", make_aircraft), ("cars", make_cars)])
def test_finegrained_sets_train_through_the_cli(dataset, make, tmp_path, capsys):
    """Each reader on its generated layout, end to end: 9 (cars 7) training and 6 (cars 4) test
    images of 3 classes, the released resize-and-crop pipeline at a small size."""
    make(tmp_path / "data")
    code, out, _ = run_cli(["--dataset", dataset, "--data-dir", str(tmp_path / "data"), "--arch", "tiny",
                            "--img-size", "32", "--epochs", "1", "--batch-size", "3", "--workers", "0", "--no-amp",
                            "--output", str(tmp_path / "runs"), "--run-name", "r"], capsys)
    assert code == 0
    train, val = {"cars": (7, 4)}.get(dataset, (9, 6))
    assert f"{train} train / {val} val images, 3 classes, 32px, CIFAR stem" in out
    # the data set's published recipe: SGD lr 1e-3, the generator's own lr 0.1
    assert "SGD momentum 0.9 lr 0.001 (G 0.1), wd 0.0005" in out
    epoch = [r for r in read_log(tmp_path / "runs" / "r") if r["type"] == "epoch"][-1]
    assert epoch["images"] == val and epoch["step"] == train // 3


# ---------------------------------------------------------------------------- presets and flags
def cli_config(*argv):
    return build_config(get_args_parser().parse_args(list(argv)), None)


def test_recipe_presets_resolve_to_the_published_values_and_flags_override():
    swin = cli_config("--preset", "cifar100-swin_t")
    assert swin == resolve({}, "cifar100-swin_t")
    assert (swin.optimizer, swin.lr, swin.gen_lr, swin.min_lr, swin.gen_min_lr, swin.weight_decay) == \
        ("adamw", 5e-4, 1e-3, 1e-4, 1e-4, 0.05)
    assert (swin.warmup_epochs, swin.warmup_ratio, swin.lr_per_step, swin.clip_grad, swin.drop_path) == \
        (20, 1e-5, True, 10.0, 0.2)
    assert (swin.img_size, swin.train_crop, swin.crop_scale, swin.interpolation, swin.randaugment) == \
        (224, "rrc", 0.8, "bicubic", "rand-m7-n2-mstd0.5")
    assert (swin.label_smoothing, swin.gen_train_prob, swin.upsample, swin.lam_concat, swin.batch_size,
            swin.epochs) == (0.1, 0.8, "nearest", True, 100, 200)
    assert recipe_settings(swin) == ("AdamW lr 0.0005 (G 0.001), wd 0.05 (none on norms/biases/position tables), "
                                     "warm-up 20 ep, cosine per step to 0.0001, clip 10, drop path 0.2, "
                                     "label smoothing 0.1, RandAugment rand-m7-n2-mstd0.5")
    conv = cli_config("--preset", "cifar100-convnext_t")
    assert (conv.arch, conv.img_size, conv.cifar_stem, conv.lr, conv.gen_lr, conv.clip_grad, conv.drop_path,
            conv.train_crop) == ("convnext_t", 32, True, 2e-3, 5e-4, None, 0.3, "pad-reflect")
    deit = cli_config("--preset", "cifar100-deit_s")
    assert (deit.arch, deit.img_size, deit.warmup_epochs, deit.drop_path) == ("deit_s", 224, 5, 0.1)
    # flags override a preset, 'none' switches a value off
    over = cli_config("--preset", "cifar100-swin_t", "--clip-grad", "none", "--aa", "none", "--opt", "sgd",
                      "--drop-path", "0", "--warmup-epochs", "2")
    assert (over.clip_grad, over.randaugment, over.optimizer, over.drop_path, over.warmup_epochs) == \
        (None, None, "sgd", 0.0, 2.0)
    cub = cli_config("--preset", "cub-r50", "--pretrained", "none")
    assert cub.pretrained is None and cub.optimizer == "sgd" and cub.lr == 1e-3
    assert cli_config("--preset", "cars-rx50").pretrained == "imagenet"
    # the architectures' generator settings without a preset; explicit flags still win
    assert ((cli_config("--arch", "tiny_swin").upsample, cli_config("--arch", "tiny_swin").lam_concat)
            == ("nearest", True))
    assert cli_config("--arch", "tiny_swin", "--upsample", "bilinear").upsample == "bilinear"
    assert (cli_config("--arch", "tiny").upsample, cli_config("--arch", "tiny").lam_concat) == ("bilinear", False)
