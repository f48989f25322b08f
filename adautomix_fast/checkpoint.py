"""Atomic checkpoints, exact resume and torchvision-compatible export.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects),
so it loads with ``torch.load(weights_only=True)``. It holds everything a resumed run needs to
continue exactly: model (student, teacher with its own BN buffers, generator, step counter),
optimizer (momentum buffers), loss scaler, the plan RNG, the global torch RNG states, the epoch
and step counters, the resolved config and its fingerprint.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import torch

from .config import Config
from .errors import UsageError

FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a half-written one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state(device: torch.device, plan_generator: Optional[torch.Generator] = None) -> dict:
    """This process's random state: the CPU generator, the device's CUDA generator (the fused
    step samples its plan from it inside the graph) and the reference step's plan generator."""
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    if plan_generator is not None:
        state["plan"] = plan_generator.get_state()
    return state


def set_rng_state(state: dict, device: torch.device, plan_generator: Optional[torch.Generator] = None) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
    if plan_generator is not None and "plan" in state:
        plan_generator.set_state(state["plan"])


def load(path: str) -> dict:
    """Load a checkpoint file (weights_only) with one-line errors for the usual mistakes."""
    if os.path.isdir(path):
        candidate = os.path.join(path, "checkpoint-last.pt")
        if not os.path.exists(candidate):
            raise UsageError(f"--resume {path}: folder has no checkpoint-last.pt; pass a checkpoint file")
        path = candidate
    if not os.path.exists(path):
        raise UsageError(f"--resume {path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--resume {path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "adautomix_fast" or "config" not in ckpt:
        raise UsageError(f"--resume {path}: not an adautomix_fast checkpoint")
    return ckpt


def check_compatible(ckpt: dict, cfg: Config, path: str) -> None:
    """Refuse (one line) a checkpoint trained with another model/algorithm configuration."""
    saved = Config.from_dict(ckpt["config"]).identity()
    wanted = cfg.identity()
    diffs = [f"{k}={saved[k]!r} (this run: {wanted[k]!r})" for k in cfg.IDENTITY if saved.get(k) != wanted.get(k)]
    if diffs:
        raise UsageError(f"checkpoint {path} is from another configuration: {', '.join(diffs)}; "
                         "resume with the same settings or start a new run")


def export_torchvision(model) -> dict[str, torch.Tensor]:
    """The teacher (baselines: the trained classifier) as the state dict of its library's own
    model (``head_one`` becomes the library's head, ``head_mix`` is dropped): torchvision for the
    ResNets, Swin-T and ConvNeXt-T, timm for DeiT-S. ``models.library_model(arch, num_classes)``
    builds that model; e.g.

        torchvision.models.resnet50(num_classes=C).load_state_dict(sd)
        torchvision.models.swin_t(num_classes=C).load_state_dict(sd)
        torchvision.models.convnext_tiny(num_classes=C).load_state_dict(sd)
        timm.create_model("deit_small_patch16_224", num_classes=C).load_state_dict(sd)

    CIFAR-stem models differ in their stem: ResNet ``conv1`` is a 3x3 stride-1 convolution and
    there is no max-pool (set ``model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)`` and
    ``model.maxpool = nn.Identity()`` before loading); ConvNeXt ``features[0][0]`` is
    ``nn.Conv2d(3, 96, 3, 1, 1)``. ``library_model(arch, C, cifar_stem=True)`` does both.
    """
    from .models import export_state_dict

    # The teacher (the paper's model) for methods with one, the trained classifier otherwise.
    network = model.teacher if getattr(model, "has_teacher", True) else model.student
    return export_state_dict(network)
