"""Atomic checkpoints, exact resume and torchvision-compatible export.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects),
so it loads with ``torch.load(weights_only=True)``. It holds everything a resumed run needs to
continue exactly: model (student, teacher with its own BN buffers, generator, step counter),
optimizer (momentum buffers), loss scaler, the plan RNG, the global torch RNG states, the epoch
and step counters, the resolved config and its fingerprint.
"""

from __future__ import annotations

import errno
import glob
import os
import resource
import shutil
import tempfile
from typing import Any, Iterable, Optional

import torch

from ..config import Config
from ..errors import UsageError
from ..models import export_state_dict
from .torchfiles import load_failure

FORMAT_VERSION = 1
TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".pt"


# Errors of a disk that cannot take the file: no space, the user's quota, or the process's
# file-size limit (ulimit -f; Python ignores SIGXFSZ, so the write fails with EFBIG).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NoSpaceError(OSError):
    """The disk could not take a checkpoint (``errno``: ENOSPC, EDQUOT or EFBIG; the temporary
    file is removed again); ``needed`` is the checkpoint's approximate size and ``free`` what the
    disk had left, in bytes."""

    def __init__(self, path: str, code: int, needed: int, free: int):
        super().__init__(code, os.strerror(code), path)
        self.needed, self.free = needed, free

    def describe(self, folder: str, name: str) -> str:
        """The failure as a user reads it: "no space left in F to write N (needs about 4.0 MiB,
        0.5 MiB free); free some space", or the quota, or the file-size limit."""
        need = f"needs about {_mib(self.needed)}"
        if self.errno == errno.EFBIG:
            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            shown = "unlimited" if limit == resource.RLIM_INFINITY else _mib(limit)
            return (f"the file-size limit (ulimit -f, {shown}) stops writing {name} in {folder} ({need}); "
                    "raise the limit")
        if self.errno == errno.EDQUOT:
            return f"the disk quota is exhausted writing {name} in {folder} ({need}); free some space"
        return f"no space left in {folder} to write {name} ({need}, {_mib(self.free)} free); free some space"


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


class _ErrnoKeepingWriter:
    """A file for torch.save that remembers the OSError of a failed write: torch's zip writer
    reports every failed write as "unexpected pos N vs M" (or "file write failed"), without the
    errno that tells a full disk from a file-size limit or anything else."""

    def __init__(self, f):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _write(obj: Any, f) -> Optional[Exception]:
    """torch.save into ``f`` and fsync; the failure, if any: the OSError behind a failed write
    where there was one, else what torch raised."""
    writer = _ErrnoKeepingWriter(f)
    try:
        torch.save(obj, writer)
        f.flush()
        os.fsync(f.fileno())
    except Exception as exc:
        return writer.error or exc
    return None


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested dict/list: about what ``torch.save`` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a half-written one. A disk that
    cannot take the file (full, over quota, over the file-size limit) is a `NoSpaceError` (the
    temporary file removed, ``path`` untouched); it is told apart by the errno of the failed
    write, and, where a failure carries none, by the free space left."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=folder)
    failure: Optional[BaseException] = None
    try:
        with os.fdopen(fd, "wb") as f:
            failure = _write(obj, f)
        if failure is None:
            os.replace(tmp, path)
    except Exception as exc:   # closing (a delayed write error), the rename, an injected failure
        failure = exc
    except BaseException:      # Ctrl-C
        _remove(tmp)
        raise
    if failure is None:
        return
    _remove(tmp)
    needed = tensor_bytes(obj)
    code = failure.errno if isinstance(failure, OSError) else None
    if code is None and _free_bytes(folder) < needed:
        code = errno.ENOSPC   # a failure without its errno on a disk too full for the file
    if code in DISK_FULL_ERRNOS:
        raise NoSpaceError(path, code, needed, _free_bytes(folder)) from None
    raise failure


def remove_orphaned_temporaries(folder: str) -> list[str]:
    """Delete the temporary files a killed writer left in ``folder`` (call while holding the
    run folder's lock, so that no live writer owns them)."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(folder), f"{TMP_PREFIX}*{TMP_SUFFIX}")):
        try:
            os.unlink(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding an inf or a NaN. One reduction on the device
    for the common, all-finite case (the norms of every tensor, stacked); only when that is not
    finite (a NaN/inf, or a finite tensor whose norm overflows) is each tensor checked exactly."""
    pairs = [(n, t.detach()) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not pairs:
        return []
    by_device: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for n, t in pairs:
        by_device.setdefault((t.device, t.dtype), []).append((n, t))
    bad: list[str] = []
    for group in by_device.values():
        norms = torch._foreach_norm([t for _, t in group])
        if bool(torch.stack(norms).isfinite().all()):
            continue
        bad.extend(n for n, t in group if not bool(t.isfinite().all()))
    return bad


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
            if os.path.exists(os.path.join(path, "checkpoint-best.pt")):
                raise UsageError(f"--resume {path}: the run folder has no checkpoint-last.pt; pass "
                                 f"--resume {os.path.join(path, 'checkpoint-best.pt')} to continue from the best one")
            if os.path.exists(os.path.join(path, "config.yaml")):
                raise UsageError(f"--resume {path}: this run never reached its first checkpoint, so there is "
                                 "nothing to continue; start it afresh with the same --output and --run-name "
                                 "(without --resume)")
            raise UsageError(f"--resume {path}: not a run folder of this engine (no checkpoint-last.pt); "
                             "pass a run folder or its checkpoint file")
        path = candidate
    if not os.path.exists(path):
        raise UsageError(f"--resume {path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = load_failure(path, e)
        what = "not a readable checkpoint file" if "damaged" in reason else "not a checkpoint of this engine"
        raise UsageError(f"--resume {path}: {what}: {reason}; pass the checkpoint-last.pt or checkpoint-best.pt "
                         "of a run folder, or the folder") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "adautomix_fast" or "config" not in ckpt:
        raise UsageError(f"--resume {path}: not a checkpoint of this engine (a torch file without its "
                         "run state); pass the checkpoint-last.pt or checkpoint-best.pt of a run folder")
    return ckpt


def check_compatible(ckpt: dict, cfg: Config, path: str, allowed: tuple[str, ...] = ()) -> None:
    """Refuse (one line) a checkpoint trained with another model/algorithm configuration;
    ``allowed``: identity fields the user explicitly lets change (``--override-lr``)."""
    saved = Config.from_dict(ckpt["config"]).identity()
    wanted = cfg.identity()
    diffs = [f"{k}={saved[k]!r} (this run: {wanted[k]!r})" for k in cfg.IDENTITY
             if saved.get(k) != wanted.get(k) and k not in allowed]
    if diffs:
        lr_only = all(d.split("=")[0] in ("lr", "min_lr", "gen_lr", "gen_min_lr") for d in diffs)
        fix = ("add --override-lr to change the learning rate of the resumed run" if lr_only
               else "resume with the same settings or start a new run")
        raise UsageError(f"checkpoint {path} is from another configuration: {', '.join(diffs)}; {fix}")


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
    # The teacher (the paper's model) for methods with one, the trained classifier otherwise.
    network = model.teacher if getattr(model, "has_teacher", True) else model.student
    return export_state_dict(network)
