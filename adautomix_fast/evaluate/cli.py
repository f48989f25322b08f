"""``python -m adautomix_fast.evaluate``: the paper's evaluation suite on a run or checkpoint.

    python -m adautomix_fast.evaluate runs/digits-r18-...                      # every suite
    python -m adautomix_fast.evaluate RUN --suite calibration,fgsm --protocol official
    python -m adautomix_fast.evaluate RUN --suite corruption --corruption-dir /data/CIFAR-100-C
    python -m adautomix_fast.evaluate --compare RUN1 RUN2 RUN3 --suite calibration,occlusion

Writes ``<run>/eval-<suite or all>-<head>-<protocol>/`` (results.json, report.md, pictures), or
``--out DIR``; ``--compare`` writes ``compare-...`` beside the first run. Bad input is one line
on stderr and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from ..errors import UsageError
from ..runtime import cputhreads
from .compare import compare
from .context import PROTOCOLS, SUITES, EvalOptions
from .pipeline import evaluate_checkpoint

D = EvalOptions()


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line UsageErrors (exit 2), like every other input error."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m adautomix_fast.evaluate",
                description="The paper's evaluation suite (accuracy, calibration, FGSM/PGD, corruptions, occlusion, "
                            "Grad-CAM) on a run folder or checkpoint of python -m adautomix_fast.train.")
    p.add_argument("run", nargs="*", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its checkpoint-last.pt) or a checkpoint file; with --compare, several")
    p.add_argument("--compare", action="store_true",
                   help="put several runs (methods, seeds) side by side in one report (default: off)")
    p.add_argument("--suite", action="append", metavar="NAMES",
                   help=f"comma-separated suites among {', '.join(SUITES)}, or all (default: all); may be repeated")
    p.add_argument("--head", help="evaluation head, e.g. teacher_one (default: the model's headline head, "
                                  "teacher_one for AdAutoMix, the paper's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=D.protocol,
                   help="correct, or official: the released tools' ECE (independently sorted bins) and FGSM/PGD "
                        f"(step and clamp on the normalised tensor) (default: {D.protocol})")
    p.add_argument("--checkpoint", choices=["last", "best"], default=D.checkpoint,
                   help=f"which checkpoint of a run folder (default: {D.checkpoint})")
    p.add_argument("--data-dir", metavar="DIR", help="test data (default: the run's own data_dir, or $ADAUTOMIX_DATA)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N test images (default: all)")
    p.add_argument("-b", "--batch-size", type=int, default=D.batch_size,
                   help=f"images per batch (default: {D.batch_size})")
    p.add_argument("-j", "--workers", type=int, default=D.workers,
                   help=f"data loading processes, and processes synthesising corruptions (default: {D.workers})")
    p.add_argument("--device", default=D.device, help="auto, cpu, cuda or cuda:N (default: auto: the GPU when present)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the forward-only suites (default: as training: on where the GPU or CPU "
                        "computes bf16 natively, off elsewhere; attacks and Grad-CAM always run in fp32)")
    p.add_argument("--seed", type=int, default=D.seed,
                   help=f"seed of the PGD start, the occlusion patches and synthesised corruptions (default: {D.seed})")
    g = p.add_argument_group("suites")
    g.add_argument("--eps", type=float, default=D.eps, help=f"FGSM/PGD budget in 1/255 units (default: {D.eps:g})")
    g.add_argument("--pgd-steps", type=int, default=D.pgd_steps, help=f"PGD steps (default: {D.pgd_steps})")
    g.add_argument("--pgd-alpha", type=float, default=D.pgd_alpha,
                   help=f"PGD step in 1/255 units (default: {D.pgd_alpha:g})")
    g.add_argument("--corruption-dir", metavar="DIR",
                   help="CIFAR-10-C/CIFAR-100-C folder (<corruption>.npy + labels.npy) or ImageNet-C folder "
                        "(<corruption>/<1-5>/<class>/*) (default: synthesise corruptions of the run's test set)")
    g.add_argument("--corruptions", metavar="NAMES", help="comma-separated corruption names (default: all 19)")
    g.add_argument("--severities", metavar="LIST", help="comma-separated severities among 1-5 (default: 1,2,3,4,5)")
    g.add_argument("--occlusion-patch", type=int, metavar="PX",
                   help="occlusion patch side in pixels, a divisor of the image size (default: the divisor closest "
                        "to size/14: 16 px at 224, 2 px at 32)")
    g.add_argument("--cam-images", type=int, default=D.cam_images,
                   help=f"images in the Grad-CAM panel (default: {D.cam_images})")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="evaluation folder (default: <run>/eval-<suite>-<head>-<protocol>)")
    g.add_argument("--timestamp", action="store_true", help="append -<date-time> to the default folder name")
    g.add_argument("--overwrite", action="store_true", help="replace an existing evaluation folder (default: refuse)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_suites(values: Optional[list[str]]) -> tuple[str, ...]:
    names = [n.strip() for v in (values or ["all"]) for n in v.split(",") if n.strip()]
    if "all" in names:
        return SUITES
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise UsageError(f"--suite: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITES)} or all")
    return tuple(s for s in SUITES if s in names)   # the canonical order, each once


def parse_list(value: Optional[str], flag: str, cast=str) -> Optional[tuple]:
    if value is None:
        return None
    try:
        items = tuple(cast(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected a comma-separated list") from None
    if not items:
        raise UsageError(f"{flag} is empty; leave it out for the default")
    return items


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    if args.cam_images < 2:
        raise UsageError(f"--cam-images must be at least 2 (got {args.cam_images})")
    if args.eps <= 0 or args.pgd_alpha <= 0 or args.pgd_steps < 1:
        raise UsageError("--eps and --pgd-alpha must be positive and --pgd-steps at least 1")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more (got {args.workers})")
    return EvalOptions(
        suites=parse_suites(args.suite), head=args.head, protocol=args.protocol, checkpoint=args.checkpoint,
        data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size, workers=args.workers,
        device=args.device, amp=args.amp, seed=args.seed, eps=args.eps, pgd_steps=args.pgd_steps,
        pgd_alpha=args.pgd_alpha, corruption_dir=args.corruption_dir,
        corruptions=parse_list(args.corruptions, "--corruptions"),
        severities=parse_list(args.severities, "--severities", int) or D.severities,
        occlusion_patch=args.occlusion_patch, cam_images=args.cam_images, progress=not args.no_progress)


def run(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    options = options_from_args(args)
    if not args.run:
        raise UsageError("pass a run folder or checkpoint to evaluate (or several with --compare)")
    if args.compare:
        folder = compare(args.run, options, out=args.out, overwrite=args.overwrite)
        print(f"comparison of {len(args.run)} runs: {folder}")
        return 0
    if len(args.run) > 1:
        raise UsageError(f"{len(args.run)} runs given; evaluate one at a time, or pass --compare")
    folder, _ = evaluate_checkpoint(args.run[0], options, out=args.out, overwrite=args.overwrite,
                                    timestamp=args.timestamp)
    print(f"evaluation written to {folder}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130


def cli() -> None:
    cputhreads.configure()   # the command line only: a library caller keeps its own thread count
    sys.exit(main())


if __name__ == "__main__":
    cli()
