"""Which precision a run uses, decided from what torch reports about the device.

With neither ``--amp`` nor ``--no-amp`` (``cfg.amp is None``):

* CUDA: bf16 autocast where the GPU computes bf16 (``torch.cuda.is_bf16_supported()``), fp32
  otherwise (fp16 needs loss scaling and can overflow: it is never chosen silently; pass
  ``--amp --amp-dtype fp16`` for it).
* CPU: bf16 autocast only where the CPU computes bf16 natively, fp32 everywhere else. On a CPU
  without bf16 instructions oneDNN emulates bf16 convolutions: measured 37x slower than fp32 for a
  ResNet-18 forward on an AVX2-only AMD EPYC (torch 2.14.1), so fp32 is the fast choice there.

"Natively" is read from torch itself, never from a table of CPU models:

* x86-64: ATen's CPU capability (``torch.backends.cpu.get_cpu_capability()``) must be AVX512 or
  above, oneDNN must report bf16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``; it
  honours ``ONEDNN_MAX_CPU_ISA``), and the CPU must have bf16 instructions
  (``torch.cpu._is_avx512_bf16_supported()`` or AMX tiles). oneDNN alone also says yes on an AVX-512
  CPU without bf16 instructions, where it emulates bf16.
* other architectures (aarch64 ...): oneDNN's bf16 support, which checks the CPU's bf16 feature.

``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` makes a bf16-capable CPU report itself as
AVX2-only, so the slow path can be reproduced anywhere.

An explicit ``--amp`` is obeyed on any device; on a CPU without native support of the chosen
dtype the run first prints one line saying it will be much slower and why.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision of a run and why.

    dtype: None (fp32), torch.bfloat16 or torch.float16 (autocast dtype).
    reason: one sentence for the run summary and the log's start record.
    warning: a line to print before training (an explicit choice that will run slowly), or None.
    """

    dtype: Optional[torch.dtype]
    reason: str
    warning: Optional[str] = None

    @property
    def amp(self) -> bool:
        return self.dtype is not None

    @property
    def label(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.dtype]


# ---------------------------------------------------------------------------- what torch reports
def _call(fn, default: Any = False) -> Any:
    """A capability query that older torch builds may lack: False when it is missing."""
    try:
        return fn()
    except Exception:  # missing private function or a build without oneDNN
        return default


def cpu_facts() -> dict[str, Any]:
    """What torch reports about this CPU's arithmetic (the only input of the CPU decision;
    tests replace this function to cover every kind of CPU)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return {
        "machine": platform.machine().lower(),
        "capability": _call(torch.backends.cpu.get_cpu_capability, "DEFAULT"),
        "onednn_bf16": _call(lambda: bool(mkldnn._is_mkldnn_bf16_supported())),
        "onednn_fp16": _call(lambda: bool(mkldnn._is_mkldnn_fp16_supported())),
        "avx512_bf16": _call(lambda: bool(torch.cpu._is_avx512_bf16_supported())),
        "amx_tile": _call(lambda: bool(torch.cpu._is_amx_tile_supported())),
        "amx_fp16": _call(lambda: bool(torch.cpu._is_amx_fp16_supported())),
    }


_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_native(dtype: torch.dtype, facts: Optional[dict[str, Any]] = None) -> tuple[bool, str]:
    """(does this CPU compute ``dtype`` natively, the evidence in words)."""
    f = cpu_facts() if facts is None else facts
    name = "bf16" if dtype is torch.bfloat16 else "fp16"
    cap = f["capability"]
    onednn = f["onednn_bf16"] if dtype is torch.bfloat16 else f["onednn_fp16"]
    if f["machine"] in _X86:
        if not str(cap).startswith("AVX512"):
            return False, f"CPU capability {cap}: no {name} instructions"
        if not onednn:
            return False, f"CPU capability {cap}: oneDNN has no {name} support"
        hw = (f["avx512_bf16"] or f["amx_tile"]) if dtype is torch.bfloat16 else f["amx_fp16"]
        if not hw:
            return False, (f"CPU capability {cap} "
                           f"without {'AVX512-BF16 or AMX' if dtype is torch.bfloat16 else 'AMX-FP16'}"
                           f": oneDNN would emulate {name}")
        return True, f"CPU capability {cap} with native {name}"
    if not onednn:
        return False, f"{f['machine']} CPU, capability {cap}: oneDNN has no {name} support"
    return True, f"{f['machine']} CPU, capability {cap}: oneDNN {name} support"


# ---------------------------------------------------------------------------- the decision
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The autocast dtypes a run may ask for (--amp-dtype).
AMP_DTYPES = tuple(_DTYPES)


def resolve_precision(amp: Optional[bool], amp_dtype: str, device: torch.device | str,
                      facts: Optional[dict[str, Any]] = None, cuda_bf16: Optional[bool] = None) -> PrecisionChoice:
    """Resolve ``--amp``/``--no-amp``/neither and ``--amp-dtype`` for ``device``.

    ``facts`` (cpu_facts()) and ``cuda_bf16`` (torch.cuda.is_bf16_supported()) are read from
    torch when not given; tests pass them to cover every machine.
    """
    device = torch.device(device)
    if amp is False:
        return PrecisionChoice(None, "fp32: --no-amp")
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = bool(torch.cuda.is_bf16_supported())
        if amp is None:
            if cuda_bf16:
                return PrecisionChoice(torch.bfloat16, "bf16 autocast by default: the GPU computes bf16")
            return PrecisionChoice(None, "fp32 by default: the GPU has no bf16 (--amp --amp-dtype fp16 for fp16 "
                                         "autocast with loss scaling)")
        dtype = _DTYPES[amp_dtype]
        if dtype is torch.bfloat16 and not cuda_bf16:
            return PrecisionChoice(torch.float16, "fp16 autocast with loss scaling: --amp asked for bf16, which "
                                                  "the GPU lacks",
                                   warning="warning: this GPU has no bf16: --amp runs fp16 autocast with a loss scaler")
        return PrecisionChoice(dtype, f"{amp_dtype} autocast: --amp"
                               + (" --amp-dtype fp16" if amp_dtype == "fp16" else ""))
    # CPU (and any other non-CUDA device)
    dtype = _DTYPES[amp_dtype]
    if amp is None:
        native, why = cpu_native(torch.bfloat16, facts)
        if native:
            return PrecisionChoice(torch.bfloat16, f"bf16 autocast by default: native bf16 on this CPU ({why})")
        return PrecisionChoice(None, f"fp32 by default: no native bf16 on this CPU ({why})")
    native, why = cpu_native(dtype, facts)
    if native:
        return PrecisionChoice(dtype, f"{amp_dtype} autocast: --amp ({why})")
    return PrecisionChoice(dtype, f"{amp_dtype} autocast: --amp, emulated on this CPU ({why})",
                           warning=(f"warning: --amp runs {amp_dtype} on a CPU that emulates it ({why}): "
                                    f"expect it to be many times slower than fp32 (a ResNet-18 forward: 37x on an "
                                    f"AVX2 CPU); drop --amp to train in fp32"))


@dataclass
class Precision:
    """A run's autocast settings. bf16 autocast needs no loss scaling; fp16 uses a GradScaler.

    ``reason`` says why this precision was chosen (printed in the run summary, logged in the
    start record); ``warning`` is a line to print before training when an explicit choice will run
    slowly on this machine.
    """

    device_type: str
    dtype: Optional[torch.dtype]  # None: full fp32
    reason: str = ""
    warning: Optional[str] = None

    @classmethod
    def from_config(cls, cfg, device: torch.device) -> "Precision":
        """``cfg.amp`` None (neither --amp nor --no-amp) picks by what the device computes
        natively (``resolve_precision``): bf16 on a GPU or CPU with native bf16, fp32 elsewhere."""
        choice = resolve_precision(cfg.amp, cfg.amp_dtype, device)
        return cls(device.type, choice.dtype, choice.reason, choice.warning)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self):
        if self.dtype is torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None

    def describe(self) -> str:
        return "fp32" if self.dtype is None else f"autocast {str(self.dtype).replace('torch.', '')}"


__all__ = ["Precision", "PrecisionChoice", "cpu_facts", "cpu_native", "resolve_precision"]
