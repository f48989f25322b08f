"""Atomic checkpoints, round trip and torchvision export."""

import os

import pytest
import torch
import torch.nn as nn
import torchvision

from adautomix_fast import AdAutoMix
from adautomix_fast.errors import UsageError
from adautomix_fast.run.checkpoint import atomic_save, export_torchvision, load


def test_atomic_save_leaves_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pt"]          # no temporary file left behind


def test_load_refuses_non_checkpoints(tmp_path):
    with pytest.raises(UsageError, match="no such checkpoint"):
        load(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a checkpoint of this engine"):
        load(str(junk))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(UsageError, match="not a checkpoint of this engine"):
        load(str(other))
    real = tmp_path / "real.pt"
    torch.save({"format": "adautomix_fast", "config": {}, "w": torch.zeros(1000)}, real)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(real.read_bytes()[:2000])
    with pytest.raises(UsageError, match="not a readable checkpoint file: a damaged or truncated torch file"):
        load(str(cut))
    with pytest.raises(UsageError, match="no checkpoint-last.pt"):
        load(str(tmp_path))


def test_model_state_round_trip(tmp_path):
    torch.manual_seed(0)
    a = AdAutoMix("tiny", 7, cifar_stem=True, mix_samples=3)
    a.num_updates.fill_(5)
    atomic_save({"model": a.state_dict()}, str(tmp_path / "m.pt"))
    torch.manual_seed(1)
    b = AdAutoMix("tiny", 7, cifar_stem=True, mix_samples=3)
    b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True)["model"])
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k


def perturb_teacher(model):
    """Make teacher differ from student, so the export provably takes the teacher."""
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.teacher.bn1.running_mean.add_(0.1)


def test_export_loads_into_torchvision_resnet50_unchanged():
    torch.manual_seed(0)
    model = AdAutoMix("r50", 11, cifar_stem=False, mix_samples=2, lam_concat=True, gen_norm=True)
    perturb_teacher(model)
    sd = export_torchvision(model)
    tv = torchvision.models.resnet50(num_classes=11)
    tv.load_state_dict(sd)                       # strict: every key, every shape
    tv.eval(), model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), model.teacher(x)[0])


def test_export_cifar_stem_documents_its_one_difference():
    torch.manual_seed(0)
    model = AdAutoMix("r18", 10, cifar_stem=True, mix_samples=3)
    perturb_teacher(model)
    sd = export_torchvision(model)
    tv = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(RuntimeError, match="conv1.weight"):
        tv.load_state_dict(sd)                   # the 3x3 stem does not fit the 7x7 one
    tv.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    tv.maxpool = nn.Identity()
    tv.load_state_dict(sd)
    tv.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), model.teacher(x)[0])
