"""The CLI end to end on the bundled digits data, exact resume, export and bad input."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from adautomix_fast.train import main

from cli_helpers import read_log, run_cli, single_error_line

TINY = ["--arch", "tiny", "--workers", "0", "--batch-size", "100"]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """An uninterrupted two-epoch run (logged every step), shared by several tests."""
    out = tmp_path_factory.mktemp("runs")
    code = main(TINY + ["--epochs", "2", "--log-interval", "1", "--output", str(out), "--run-name", "full"])
    assert code == 0
    return out / "full"


def test_cli_trains_digits_and_writes_log_summary_config_checkpoint(two_epoch_run):
    folder = two_epoch_run
    for name in ("config.yaml", "log.jsonl", "summary.csv", "checkpoint-last.pt", "checkpoint-best.pt"):
        assert (folder / name).is_file(), name
    records = read_log(folder)
    steps = [r for r in records if r["type"] == "train"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(steps) == 2 * 14 and len(epochs) == 2            # 1437 // 100 steps per epoch
    assert [r["step"] for r in steps] == list(range(1, 29))
    for key in ("loss", "loss_amce", "loss_re", "loss_gen", "lr", "ema_momentum", "img_per_s"):
        assert key in steps[0]
    for head in ("teacher_one", "teacher_mix", "student_one", "student_mix"):
        assert 0 <= epochs[-1][f"{head}_top1"] <= epochs[-1][f"{head}_top5"] <= 100
    assert epochs[-1]["images"] == 360                           # every val image once
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 28 and int(ckpt["model"]["num_updates"]) == 28


def test_resume_continues_exactly(two_epoch_run, tmp_path, capsys):
    args = TINY + ["--epochs", "2", "--log-interval", "1", "--output", str(tmp_path), "--run-name", "split"]
    assert run_cli(args + ["--stop-after", "1"], capsys)[0] == 0
    folder = tmp_path / "split"
    code, out, _ = run_cli(["--resume", str(folder)], capsys)
    assert code == 0 and "resuming after epoch 1" in out
    full = [r for r in read_log(two_epoch_run) if r["type"] == "train"]
    split = [r for r in read_log(folder) if r["type"] == "train"]
    assert [r["step"] for r in split] == list(range(1, 29))
    keys = ("loss", "loss_amce", "loss_re", "loss_one", "loss_mce", "loss_gen", "loss_k", "cos", "lr", "ema_momentum")
    for a, b in zip(full, split):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, a["step"]   # bit-exact on CPU
    sa = torch.load(two_epoch_run / "checkpoint-last.pt", weights_only=True)["model"]
    sb = torch.load(folder / "checkpoint-last.pt", weights_only=True)["model"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_eval_only_and_torchvision_export(two_epoch_run, tmp_path, capsys):
    export = tmp_path / "teacher.pth"
    code, out, _ = run_cli(["--resume", str(two_epoch_run / "checkpoint-last.pt"), "--eval-only",
                            "--export", str(export)], capsys)
    assert code == 0 and "teacher_one" in out
    sd = torch.load(export, weights_only=True)
    assert "fc.weight" in sd and not any(k.startswith("head_") for k in sd)
    ckpt = torch.load(two_epoch_run / "checkpoint-last.pt", weights_only=True)
    assert torch.equal(sd["fc.weight"], ckpt["model"]["teacher.head_one.weight"])


def test_resuming_a_checkpoint_of_another_architecture_is_refused(two_epoch_run, capsys):
    code, _, err = run_cli(["--resume", str(two_epoch_run), "--arch", "r18"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "another configuration" in err and "arch='tiny'" in err


def make_folder_dataset(root, corrupt=False):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (12, 10), (40 * i, 100, 200)).save(d / f"{i}.jpg")
    bad = root / "train" / "a" / "3.jpg"
    if corrupt:
        bad.write_bytes(b"this is not a jpeg")
    return bad


@pytest.mark.parametrize("case,args,message", [
    ("missing data", ["--dataset", "cifar100"], "cifar100 needs its files"),
    ("usage line without data", ["--dataset", "imagenet", "--arch", "r50", "--amp"], "--data-dir"),
    ("missing data folder", ["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    ("unknown arch", ["--arch", "vgg16"], "unknown --arch 'vgg16'"),
    ("unknown dataset", ["--dataset", "mnist"], "unknown --dataset 'mnist'"),
    ("one mix sample", ["--mix-samples", "1"], "--mix-samples must be between 2 and 5"),
    ("batch of one", ["--batch-size", "1"], "--batch-size must be at least 2"),
    ("eval without checkpoint", ["--eval-only"], "--eval-only needs a checkpoint"),
    ("unknown preset", ["--preset", "cifar9"], "argument --preset: invalid choice: 'cifar9'"),
    ("not a number", ["--lr", "fast"], "argument --lr: invalid float value"),
])
def test_bad_input_gets_one_line_and_exit_2(case, args, message, tmp_path, capsys):
    code, _, err = run_cli(args + ["--output", str(tmp_path / "runs")], capsys)
    assert code == 2, case
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "runs").exists()                      # nothing written


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code, _, err = run_cli(TINY + ["--dataset", "folder", "--data-dir", str(tmp_path / "data"),
                                   "--output", str(tmp_path / "runs")], capsys)
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / "data") in err
    assert not (tmp_path / "runs").exists()


def test_corrupt_image_names_the_file_and_leaves_nothing_half_written(tmp_path, capsys):
    bad = make_folder_dataset(tmp_path / "data", corrupt=True)
    code, _, err = run_cli(["--arch", "tiny", "--workers", "0", "--dataset", "folder", "--img-size", "16",
                            "--batch-size", "5", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
                            "--output", str(tmp_path / "runs"), "--run-name", "r"], capsys)
    assert code == 2
    assert str(bad) in single_error_line(err)
    assert not (tmp_path / "runs" / "r").exists()


def test_folder_dataset_trains_end_to_end(tmp_path, capsys):
    make_folder_dataset(tmp_path / "data")
    code, out, _ = run_cli(["--arch", "tiny", "--workers", "0", "--dataset", "folder", "--img-size", "16",
                            "--batch-size", "5", "--epochs", "1", "--mix-samples", "2",
                            "--data-dir", str(tmp_path / "data"), "--output", str(tmp_path / "runs")], capsys)
    assert code == 0 and "teacher_one" in out


def test_presets_resolve_and_flags_override(tmp_path):
    from adautomix_fast.config import PRESETS, resolve
    for name in PRESETS:
        resolve({}, name)
    cfg = resolve({"epochs": 7}, "imagenet-r50")
    assert ((cfg.arch, cfg.mix_samples, cfg.beta, cfg.lam_concat, cfg.gen_norm, cfg.batch_size)
            == ("r50", 2, 0.1, True, True, 256))
    assert (cfg.gen_lr, cfg.gen_min_lr, cfg.ema_end, cfg.epochs) == (0.1, 0.001, 0.99999, 7)
    cfg = resolve({}, "tiny-r18")
    assert (cfg.lr, cfg.beta, cfg.mix_samples, cfg.ema_end) == (0.2, 0.4, 3, 0.999999)
    cfg = resolve({}, "cifar100-rx50")
    assert (cfg.arch, cfg.min_lr, cfg.lam_concat, cfg.gen_norm) == ("rx50", 0.05, False, False)


def test_generator_settings_follow_the_released_configs():
    """Only the released ImageNet R50 config puts BatchNorm in the generator (R18 keeps the lambda
    channel without BN); the Tiny config gives the generator its own lr 0.1."""
    from adautomix_fast.config import PRESETS, resolve
    from adautomix_fast.presets import PRESET_SOURCES
    r18, r50 = resolve({}, "imagenet-r18"), resolve({}, "imagenet-r50")
    assert (r18.lam_concat, r18.gen_norm) == (True, False)
    assert (r50.lam_concat, r50.gen_norm) == (True, True)
    # the data-set defaults agree with the presets, also without --preset
    assert resolve({"dataset": "imagenet", "arch": "r18"}).gen_norm is False
    assert resolve({"dataset": "imagenet", "arch": "r50"}).gen_norm is True
    assert resolve({"dataset": "imagenet", "arch": "r50", "gen_norm": False}).gen_norm is False  # flag wins
    tiny = resolve({}, "tiny-r18")
    assert (tiny.lr, tiny.gen_lr, tiny.gen_min_lr, tiny.min_lr) == (0.2, 0.1, 0.0, 0.0)
    assert set(PRESET_SOURCES) <= set(PRESETS)


def test_real_exit_code_from_the_command_line(tmp_path):
    env = dict(os.environ)
    env.pop("ADAUTOMIX_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "adautomix_fast.train", "--dataset", "imagenet", "--arch", "r50",
                           "--amp", "--output", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "imagenet" in proc.stderr


def test_an_installed_apex_changes_nothing(tmp_path):
    """The engine never imports NVIDIA apex (torch.amp and foreach/in-graph optimizers replace
    it); an importable `apex` (here one that fails on import, like a broken or unrelated package)
    must not matter."""
    fake = tmp_path / "site" / "apex"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this apex must never be imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "adautomix_fast.train", "--arch", "tiny", "--img-size", "16",
                           "--epochs", "1", "--batch-size", "200", "--workers", "0",
                           "--output", str(tmp_path / "runs")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher_one" in proc.stdout
