"""Build every kernel variant for a GPU architecture without a GPU (ahead-of-time, ptxas included).

    TRITON_INTERPRET=0 python -m adautomix_fast.kernels._build_check [--arch 90] [--quick]

Compiles the cross-attention and upsample-softmax-mix kernels with the tiles
``_launch.attention_config`` / ``_launch.mix_config`` pick, for the dtypes and sizes the
generator uses, through ``triton.compile(..., target=GPUTarget("cuda", arch, 32))`` and the ptxas
shipped with Triton, and prints registers, spill bytes and shared memory per kernel (from
``cuobjdump -res-usage``). It exits 1 if a kernel fails to compile or needs more shared memory
than the architecture has: the compiled-mode errors the CPU interpreter cannot see. Spills are
reported, not failed. It must run with the interpreter off (``TRITON_INTERPRET`` unset or 0).
"""

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Optional

import torch
import triton

from . import _launch

# Shared memory per block (opt-in maximum) by compute capability, bytes.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _resources(cubin: bytes) -> dict[str, Any]:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return {"regs": int(m.group(1)), "spill_bytes": int(m.group(2)) + int(m.group(4))} if m else {}


def compile_one(fn, types: dict[str, str], constexprs: dict[str, Any], num_warps: int, num_stages: int,
                arch: int) -> dict[str, Any]:
    from triton.backends.compiler import GPUTarget
    sig = {name: ("constexpr" if name in constexprs else types.get(name, "i32")) for name in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    return {"smem": k.metadata.shared, **_resources(k.asm.get("cubin", b""))}


def attention_variants(quick: bool):
    cam = importlib.import_module(f"{__package__}.cross_attention_mask")   # the module, not the function
    dtypes = (torch.bfloat16, torch.float32) if quick else (torch.bfloat16, torch.float16, torch.float32)
    dims = (128, 512) if quick else (8, 64, 128, 256, 512)
    for dtype in dtypes:
        for d in dims:
            cfg = _launch.attention_config(d, dtype)
            t = TRITON_TYPES[dtype]
            types = {"Q_ptr": f"*{t}", "K_ptr": f"*{t}", "Ko_ptr": f"*{t}", "V_ptr": f"*{t}", "Out_ptr": "*fp32",
                     "Lse_ptr": "*fp32", "DOut_ptr": "*fp32", "DQ_ptr": f"*{t}", "DV_ptr": f"*{t}", "scale": "fp32"}
            label = f"{t} D={d}"
            yield (cam._cross_attention_mask_keys_kernel, types,
                   dict(BLOCK_N=cfg.keys_block, BLOCK_D=cfg.block_d), 4, 2, label)
            for fn, tile, extra in ((cam._cross_attention_mask_fwd_kernel, cfg.fwd, {}),
                                    (cam._cross_attention_mask_bwd_dq_kernel, cfg.dq, {})):
                yield (fn, types, dict(BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_D=cfg.block_d,
                                       DOT_PRECISION=cfg.precision, **extra), tile.num_warps, tile.num_stages, label)
            for flip in (True, False):   # N == 2 writes dk in k's dtype, else an fp32 buffer
                tile = cfg.dkv
                yield (cam._cross_attention_mask_bwd_dkv_kernel, {**types, "DKo_ptr": f"*{t}" if flip else "*fp32"},
                       dict(BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_D=cfg.block_d,
                            DOT_PRECISION=cfg.precision, COMPUTE_DK=True, FLIP_SLOT=flip),
                       tile.num_warps, tile.num_stages, f"{label} flip={flip}")
        yield (cam._cross_attention_mask_bwd_dk_kernel, {"DKo_ptr": "*fp32", "DK_ptr": f"*{t}"},
               dict(BLOCK=1024), 4, 2, t)


def mix_variants(quick: bool):
    usm = importlib.import_module(f"{__package__}.upsample_softmax_mix")
    shapes = [(2, 3, 14, 14, 224, "fp32", False), (3, 3, 8, 8, 32, "bf16", False)]
    if not quick:
        shapes += [(5, 3, 56, 56, 224, "fp16", False), (3, 3, 8, 8, 32, "fp32", True),
                   (1, 64, 7, 7, 224, "bf16", False)]
    for n, c, h, w, W, t, nearest in shapes:
        cfg = _launch.mix_config(n, c, h, w, W)
        types = {"M_ptr": "*fp32", "X_ptr": f"*{t}", "Index_ptr": "*i64", "Out_ptr": f"*{t}", "Masks_ptr": "*fp32",
                 "DOut_ptr": f"*{t}", "DMasks_ptr": "*fp32", "T_ptr": "*fp32", "DM_ptr": "*fp32",
                 "Order_ptr": "*i64", "Starts_ptr": "*i64", "DX_ptr": f"*{t}", "scale_h": "fp32", "scale_w": "fp32"}
        label = f"{t} N={n} C={c} {h}x{w}->W={W}{' nearest' if nearest else ''}"
        wp = cfg.num_warps
        yield (usm._upsample_softmax_mix_fwd_kernel, types,
               dict(SLOTS=cfg.slots, BLOCK=cfg.block, NEAREST=nearest, WRITE_MASKS=True), wp, 2, label)
        yield (usm._upsample_softmax_mix_bwd_rows_kernel, types,
               dict(SLOTS=cfg.slots, BLOCK_W=cfg.block_w, BLOCK_LW=cfg.block_lw, NEAREST=nearest,
                    HAS_DOUT=True, HAS_DMASKS=True), wp, 2, label)
        yield (usm._upsample_softmax_mix_bwd_cols_kernel, types,
               dict(BLOCK_LH=cfg.block_lh, BLOCK_LW=cfg.block_lw, BLOCK_R=cfg.block_r, NEAREST=nearest), wp, 2, label)
        yield (usm._upsample_softmax_mix_bwd_dx_kernel, types,
               dict(SLOTS=cfg.slots, CHANNELS=cfg.channels, BLOCK=cfg.dx_block, NEAREST=nearest), wp, 2, label)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adautomix_fast.kernels._build_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability as an integer (default: 90, H100)")
    p.add_argument("--quick", action="store_true", help="the benchmark shapes only (default: every variant)")
    p.add_argument("--ops", default="attention,mix", help="comma list of attention, mix (default: both)")
    args = p.parse_args(argv)
    if _launch.INTERPRET:
        print("_build_check: TRITON_INTERPRET is set; run with TRITON_INTERPRET=0", file=sys.stderr)
        return 2
    limit = SMEM_LIMIT.get(args.arch, 99 * 1024)
    ops = args.ops.split(",")
    variants = (list(attention_variants(args.quick)) if "attention" in ops else []) + \
        (list(mix_variants(args.quick)) if "mix" in ops else [])
    failed = 0
    for fn, types, constexprs, num_warps, num_stages, label in variants:
        name = f"{fn.__name__} [{label}] w{num_warps} s{num_stages}"
        try:
            r = compile_one(fn, types, constexprs, num_warps, num_stages, args.arch)
        except Exception as exc:  # noqa: BLE001  (report every failure, then exit 1)
            failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        status = "ok  "
        if r["smem"] > limit:
            failed += 1
            status = "FAIL"
        print(f"{status}  {name}: regs {r.get('regs', '?')}, spill bytes {r.get('spill_bytes', '?')}, "
              f"shared {r['smem']} B (limit {limit})")
    print(f"{len(variants) - failed}/{len(variants)} kernels build for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
