"""The EMA teacher's parameter update (docs/algorithm.md, EMA teacher; its momentum schedule is
``schedules.ema_momentum``).

After every optimizer step the teacher's *parameters* follow the student's:
    theta_k <- m * theta_k + (1 - m) * theta_q
Buffers (BatchNorm running statistics) are not touched: the teacher keeps its own, updated by
its own train-mode forward passes.

The momentum is handed to the update as a 0-dim **float64** tensor on the parameters' device, so a
captured CUDA graph can read a new value every step without re-capture, and the student's weight
1 - m is formed in double before it is rounded to fp32, as the released code does (it multiplies
by the Python float 1 - m). Formed from an fp32 momentum it would be 1 - fp32(0.999999) =
1.0133e-6 instead of 1e-6: the teacher would average over a 1.3% shorter horizon.

``ema_update_`` runs the fused op ``torch.ops.adautomix_fast.ema_update_`` of ``csrc/`` (one
parallel pass on the CPU, a few multi-tensor kernels on CUDA) when the extension
``adautomix_fast._C`` is built for the tensors' device, and otherwise its pure PyTorch twin
``ema_update_reference`` (``torch._foreach_lerp_``), with a one-time warning saying why. Both
validate their arguments identically (``ValueError`` / ``TypeError``, one-line messages) before
touching any data, and both trace under ``torch.compile(fullgraph=True)`` (the op through the
fake implementation registered here). Set ``ADAUTOMIX_NO_EXT=1`` to skip the extension at run
time as well as at build time.
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any, Sequence

import torch

OP_NAME = "adautomix_fast::ema_update_"
_MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


MOMENTUM_DTYPE = torch.float64


def momentum_tensor(value: float, device: torch.device | str) -> torch.Tensor:
    """The momentum as the 0-dim float64 device tensor the update reads (the exact host value)."""
    return torch.tensor(float(value), dtype=MOMENTUM_DTYPE, device=device)


# ---------------------------------------------------------------------------- validation
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dense(t: torch.Tensor) -> bool:
    """No gaps in memory: contiguous or channels-last (the layouts parameters come in)."""
    return (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
            or t.is_contiguous(memory_format=torch.channels_last_3d))


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same flat offset for every element: strides agree wherever the size is above 1."""
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def _momentum_type_error(momentum: Any) -> TypeError:
    return TypeError(f"ema_update_: momentum must be a 0-dim float64 tensor, got {type(momentum).__name__} "
                     "(use adautomix_fast.step.ema.momentum_tensor)")


def _validate(ema: Sequence[torch.Tensor], model: Sequence[torch.Tensor], momentum: torch.Tensor,
              allow_double: bool = False) -> None:
    """The op's argument checks (csrc/ema_update.cpp, check_ema_update_inputs), word for word.

    Shapes, dtypes, devices and strides only: no data is read, nothing synchronises.
    ``allow_double``: float64 EMA and model tensors pass too (the PyTorch twin runs a float64
    model, which the op does not take).
    """
    if len(ema) != len(model):
        raise ValueError(f"ema_update_: {len(ema)} EMA tensors but {len(model)} model tensors")
    if not isinstance(momentum, torch.Tensor):
        raise _momentum_type_error(momentum)
    if momentum.dim() != 0:
        raise ValueError(f"ema_update_: momentum must be a 0-dim float64 tensor, got shape {list(momentum.shape)}")
    if momentum.dtype != MOMENTUM_DTYPE:
        raise TypeError(f"ema_update_: momentum must be a 0-dim float64 tensor (1 - m is formed in double), got "
                        f"dtype {_dtype_name(momentum.dtype)} (use adautomix_fast.step.ema.momentum_tensor)")
    if not ema:
        return
    for name, tensors in (("ema", ema), ("model", model)):
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ema_update_: {name}[{i}] must be a tensor, got {type(t).__name__}")
    device = ema[0].device
    if momentum.device != device:
        raise ValueError(f"ema_update_: momentum is on {momentum.device} but ema[0] is on {device} "
                         "(keep the momentum on the parameters' device)")
    for i, (e, x) in enumerate(zip(ema, model)):
        double = allow_double and e.dtype == x.dtype == torch.float64
        if e.dtype != torch.float32 and not double:
            raise TypeError(f"ema_update_: ema[{i}] must be float32 (the EMA state stays fp32), "
                            f"got {_dtype_name(e.dtype)}")
        if x.dtype not in _MODEL_DTYPES and not double:
            raise TypeError(f"ema_update_: model[{i}] must be float32, float16 or bfloat16, "
                            f"got {_dtype_name(x.dtype)}")
        if e.shape != x.shape:
            raise ValueError(f"ema_update_: ema[{i}] has shape {list(e.shape)} "
                             f"but model[{i}] has shape {list(x.shape)}")
        if e.device != device:
            raise ValueError(f"ema_update_: ema[{i}] is on {e.device} but ema[0] is on {device}")
        if x.device != device:
            raise ValueError(f"ema_update_: model[{i}] is on {x.device} but ema[0] is on {device}")
        if not _dense(e):
            raise ValueError(f"ema_update_: ema[{i}] is not contiguous (strides {list(e.stride())}); "
                             "pass dense tensors such as parameters")
        if not _dense(x):
            raise ValueError(f"ema_update_: model[{i}] is not contiguous (strides {list(x.stride())}); "
                             "pass dense tensors such as parameters")
        if not _same_layout(e, x):
            raise ValueError(f"ema_update_: ema[{i}] has strides {list(e.stride())} but model[{i}] has strides "
                             f"{list(x.stride())} (different memory formats)")


# ---------------------------------------------------------------------------- the extension
def _load_extension() -> tuple[bool, str | None]:
    """(loaded, why not): import adautomix_fast._C, whose TORCH_LIBRARY registers the op."""
    if os.environ.get("ADAUTOMIX_NO_EXT", "0").lower() in ("1", "true", "yes", "on"):
        return False, "ADAUTOMIX_NO_EXT=1 is set"
    try:
        importlib.import_module("adautomix_fast._C")
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "adautomix_fast._C":
            return False, ("the C++ extension adautomix_fast._C is not built (reinstall with "
                           "`pip install --no-build-isolation -e .` on a machine with a C++ compiler)")
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, f"adautomix_fast._C failed to import ({first}); rebuild it against this torch"
    return True, None


def _kernels_by_device() -> dict[str, bool]:
    """Device types the loaded op has a kernel for (CUDA only when nvcc built that part)."""
    if not _LOADED:
        return {}
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return {"cpu": has(OP_NAME, "CPU"), "cuda": has(OP_NAME, "CUDA")}


_LOADED, _LOAD_ERROR = _load_extension()
# Looked up once here, never while torch.compile traces ema_update_ (a plain dict read there).
_OP_DEVICES: dict[str, bool] = _kernels_by_device()
_WARNED: set[str] = set()

if _LOADED:
    @torch.library.register_fake(OP_NAME)
    def _ema_update_fake(ema: list[torch.Tensor], model: list[torch.Tensor], momentum: torch.Tensor) -> None:
        """torch.compile's view of the op: it validates and mutates ``ema`` in place, returns nothing."""
        _validate(ema, model, momentum)


def extension_info() -> dict[str, Any]:
    """Whether the fused op runs, per device type, and why not when it does not."""
    return {"loaded": _LOADED, "error": _LOAD_ERROR, "cpu": _OP_DEVICES.get("cpu", False),
            "cuda": _OP_DEVICES.get("cuda", False)}


def _fallback_reason(device_type: str) -> str:
    if not _LOADED:
        return str(_LOAD_ERROR)
    if device_type == "cuda":
        return ("adautomix_fast._C was built without its CUDA part (no nvcc at build time, or "
                "ADAUTOMIX_NO_CUDA=1); rebuild on a machine with nvcc")
    return f"adautomix_fast._C has no {device_type} kernel"


def _warn_fallback_once(device_type: str) -> None:
    if torch.compiler.is_compiling():  # a warning cannot be traced; eager calls give it
        return
    reason = _fallback_reason(device_type)
    if reason in _WARNED:
        return
    _WARNED.add(reason)
    warnings.warn(f"adautomix_fast.ema_update_: using the pure PyTorch EMA update (torch._foreach_lerp_) "
                  f"on {device_type} because {reason}", RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------- the update
@torch.no_grad()
def ema_update_reference(ema: Sequence[torch.Tensor], model: Sequence[torch.Tensor], momentum: torch.Tensor) -> None:
    """The pure PyTorch twin of the op: validate, then one ``torch._foreach_lerp_``.

    The weight 1 - m is formed in double on the device, then rounded to fp32, and stays a 0-dim
    device tensor (the list overload of ``_foreach_lerp_``; the scalar overload would read it to the
    host, a synchronisation that also breaks CUDA-graph capture). fp16/bf16 model tensors are
    converted to fp32 first; lerp's formula gives m = 1 -> ema kept and m = 0 -> model copied,
    exactly. A float64 teacher (exact regression values, gradient checks) is updated in float64.
    """
    ema, model = list(ema), list(model)
    _validate(ema, model, momentum, allow_double=True)
    if not ema:
        return
    dtype = torch.float64 if ema[0].dtype == torch.float64 else torch.float32   # validated: all alike
    weight = (1.0 - momentum).to(dtype)
    model = [x if x.dtype == dtype else x.to(dtype) for x in model]
    torch._foreach_lerp_(ema, model, [weight] * len(ema))


@torch.no_grad()
def ema_update_(ema: Sequence[torch.Tensor], model: Sequence[torch.Tensor], momentum: torch.Tensor) -> None:
    """In place, for every pair: ema <- momentum * ema + (1 - momentum) * model.

    ``ema``: fp32 tensors; ``model``: fp32, fp16 or bf16 tensors of the same shapes and memory
    layout, all on one device; ``momentum``: 0-dim float64 tensor on that device (see
    ``momentum_tensor``). Runs ``torch.ops.adautomix_fast.ema_update_`` when built for the
    device, else ``ema_update_reference`` (one warning per process and reason). Bad arguments
    raise ``ValueError`` / ``TypeError`` before any data is touched, on either path.
    """
    ema, model = list(ema), list(model)
    if not isinstance(momentum, torch.Tensor):
        raise _momentum_type_error(momentum)
    device_type = ema[0].device.type if ema else momentum.device.type
    double = len(ema) > 0 and ema[0].dtype == torch.float64
    if _OP_DEVICES.get(device_type, False) and not double:
        try:
            torch.ops.adautomix_fast.ema_update_(ema, model, momentum)  # validates in C++
        except NotImplementedError:
            # The dispatcher picked a device the op was not built for (tensors on mixed
            # devices): report that as the validation error it is.
            _validate(ema, model, momentum)
            raise
        return
    if not double:   # float64 is the twin's by design, not a fallback
        _warn_fallback_once(device_type)
    ema_update_reference(ema, model, momentum)


def teacher_pairs(teacher: torch.nn.Module, student: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(teacher parameters, student parameters) in matching order, checked by name."""
    t_named = dict(teacher.named_parameters())
    s_named = dict(student.named_parameters())
    if t_named.keys() != s_named.keys():
        raise ValueError("teacher and student have different parameter names")
    names = list(s_named)
    return [t_named[n].data for n in names], [s_named[n].data for n in names]
