"""Precision chosen by capability (adautomix_fast.step.precision): every (device, CPU, flag) case with
the capability mocked, the real report under the AVX2 emulation variables, and the CLI's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from adautomix_fast.step.precision import cpu_facts, cpu_native, resolve_precision

# What torch reports on the CPUs users have (the values of adautomix_fast.step.precision.cpu_facts).
CPUS = {
    # AMD EPYC / Intel with AVX-512 BF16 (Zen 4, Cooper Lake): native bf16.
    "avx512_bf16": dict(machine="x86_64", capability="AVX512", onednn_bf16=True, onednn_fp16=False,
                        avx512_bf16=True, amx_tile=False, amx_fp16=False),
    # Sapphire Rapids: AMX tiles (bf16), AMX-FP16 on Granite Rapids.
    "amx": dict(machine="x86_64", capability="AVX512", onednn_bf16=True, onednn_fp16=True,
                avx512_bf16=True, amx_tile=True, amx_fp16=True),
    # Skylake-SP: AVX-512 without bf16 instructions; oneDNN still reports bf16 (it emulates it).
    "avx512_no_bf16": dict(machine="x86_64", capability="AVX512", onednn_bf16=True, onednn_fp16=False,
                           avx512_bf16=False, amx_tile=False, amx_fp16=False),
    # AVX2-only (Zen 2/3, Haswell...), or any CPU under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2.
    "avx2": dict(machine="x86_64", capability="AVX2", onednn_bf16=False, onednn_fp16=False,
                 avx512_bf16=True, amx_tile=False, amx_fp16=False),
    "default": dict(machine="x86_64", capability="DEFAULT", onednn_bf16=False, onednn_fp16=False,
                    avx512_bf16=False, amx_tile=False, amx_fp16=False),
    # aarch64 with bf16 (Graviton 3) and without (Graviton 2): oneDNN checks the CPU feature.
    "arm_bf16": dict(machine="aarch64", capability="SVE256", onednn_bf16=True, onednn_fp16=True,
                     avx512_bf16=False, amx_tile=False, amx_fp16=False),
    "arm_no_bf16": dict(machine="aarch64", capability="DEFAULT", onednn_bf16=False, onednn_fp16=True,
                        avx512_bf16=False, amx_tile=False, amx_fp16=False),
}
NATIVE_BF16 = {"avx512_bf16", "amx", "arm_bf16"}
NATIVE_FP16 = {"amx", "arm_bf16", "arm_no_bf16"}


@pytest.mark.parametrize("cpu", list(CPUS))
@pytest.mark.parametrize("amp", [None, True, False])
@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_cpu_precision_for_every_cpu_and_flag(cpu, amp, amp_dtype):
    choice = resolve_precision(amp, amp_dtype, "cpu", facts=CPUS[cpu])
    native = cpu in (NATIVE_BF16 if amp_dtype == "bf16" else NATIVE_FP16)
    if amp is False:
        assert choice.dtype is None and choice.warning is None and "--no-amp" in choice.reason
    elif amp is None:
        # The default ignores --amp-dtype: bf16 only where native, never fp16 on a CPU.
        assert choice.dtype is (torch.bfloat16 if cpu in NATIVE_BF16 else None)
        assert choice.warning is None
        assert choice.reason.startswith("bf16 autocast by default" if cpu in NATIVE_BF16 else "fp32 by default")
        assert CPUS[cpu]["capability"] in choice.reason
    else:
        # Explicit --amp runs as asked; on a CPU that emulates the dtype, after one warning line.
        assert choice.dtype is (torch.bfloat16 if amp_dtype == "bf16" else torch.float16)
        if native:
            assert choice.warning is None
        else:
            assert choice.warning is not None and "\n" not in choice.warning
            assert "slower" in choice.warning and "drop --amp" in choice.warning


@pytest.mark.parametrize("cuda_bf16", [True, False])
@pytest.mark.parametrize("amp", [None, True, False])
@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_cuda_precision_for_every_gpu_and_flag(cuda_bf16, amp, amp_dtype):
    # The CPU facts must not matter on a GPU: pass the slowest CPU.
    choice = resolve_precision(amp, amp_dtype, "cuda", facts=CPUS["avx2"], cuda_bf16=cuda_bf16)
    if amp is False:
        assert choice.dtype is None
    elif amp is None:
        assert choice.dtype is (torch.bfloat16 if cuda_bf16 else None)
        assert choice.warning is None
    elif amp_dtype == "fp16":
        assert choice.dtype is torch.float16 and choice.warning is None
    else:
        # --amp asks for bf16: a GPU without it runs fp16 with loss scaling, and says so.
        assert choice.dtype is (torch.bfloat16 if cuda_bf16 else torch.float16)
        assert (choice.warning is None) == cuda_bf16


def test_avx512_without_bf16_instructions_is_not_native_although_onednn_says_bf16():
    native, why = cpu_native(torch.bfloat16, CPUS["avx512_no_bf16"])
    assert not native and "emulate" in why


def test_facts_come_from_torch_on_this_machine():
    facts = cpu_facts()
    assert facts["capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(facts) >= {"machine", "capability", "onednn_bf16", "avx512_bf16", "amx_tile"}


def _child(code: str, **env) -> str:
    run_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_avx2_emulation_variables_make_the_default_fp32():
    """The variables of the README make torch report an AVX2-only CPU; the default is then fp32."""
    code = ("from adautomix_fast.step.precision import resolve_precision; import torch;"
            "c = resolve_precision(None, 'bf16', 'cpu'); print(torch.backends.cpu.get_cpu_capability(), c.label)")
    capability, label = _child(code, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2").split(" ", 1)
    # The variables only lower the capability: a CPU without AVX2 reports DEFAULT under them.
    assert capability == ("AVX2" if torch.backends.cpu.get_cpu_capability() != "DEFAULT" else "DEFAULT")
    assert label == "fp32"


def test_cli_records_the_choice_and_warns_for_amp_on_an_emulating_cpu(tmp_path, monkeypatch, capsys):
    from adautomix_fast import train
    from adautomix_fast.step import precision

    monkeypatch.setattr(precision, "cpu_facts", lambda: dict(CPUS["avx2"]))
    # Two steps each (400 of the digits): the bf16 run is emulated on this CPU, the records are the point.
    common = ["--arch", "tiny", "--img-size", "16", "--epochs", "1", "--batch-size", "200", "--workers", "0",
              "--train-subset", "400", "--output", str(tmp_path)]
    assert train.main(common + ["--run-name", "auto"]) == 0
    out = capsys.readouterr()
    assert "fp32 by default: no native bf16 on this CPU (CPU capability AVX2" in out.out and "warning" not in out.err
    start = json.loads(open(tmp_path / "auto" / "log.jsonl").readline())
    assert start["type"] == "start" and start["precision"] == "fp32"
    assert "CPU capability AVX2" in start["precision_reason"] and start["cpu_capability"] == "AVX2"

    assert train.main(common + ["--run-name", "amp", "--amp"]) == 0
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning: --amp runs bf16")]
    assert len(warnings) == 1, out.err
    start = json.loads(open(tmp_path / "amp" / "log.jsonl").readline())
    assert start["precision"] == "autocast bfloat16"
