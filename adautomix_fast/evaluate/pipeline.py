"""One evaluation: load the checkpoint, check every input, run the suites, write the folder.

Every input is checked before the first suite runs (checkpoint, head, data, corruption files,
destination), so bad input costs nothing and leaves nothing on disk.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Callable, Optional

import torch

from . import accuracy, attacks, calibration, cam, corruption, occlusion, plots
from .context import SUITES, EvalContext, EvalOptions, load_run
from .report import (
    FORMAT,
    FORMAT_VERSION,
    REPORT,
    RESULTS,
    StagedFolder,
    clean_json,
    device_name,
    folder_name,
    render_report,
    versions,
    write_json,
)

# Each suite's run(ctx); a suite imports its own library (torchattacks, grad-cam ...) on first use.
SUITE_RUNS: dict[str, Callable] = {
    "accuracy": accuracy.run, "calibration": calibration.run, "fgsm": attacks.run_fgsm, "pgd": attacks.run_pgd,
    "corruption": corruption.run, "occlusion": occlusion.run, "cam": cam.run,
}


def draw(suite: str, result: dict, folder: str, title: str) -> list[str]:
    """The suite's pictures in ``folder``; returns their file names."""
    if suite == "calibration":
        plots.reliability_diagram([("", result["bins"], result["ece"])], os.path.join(folder, "reliability.png"),
                                  f"{title}: reliability ({result['protocol']} ECE)")
        return ["reliability.png"]
    if suite == "occlusion":
        plots.occlusion_curves([("", result["ratios"], result["top1"])], os.path.join(folder, "occlusion.png"),
                               f"{title}: occlusion")
        return ["occlusion.png"]
    if suite == "corruption":
        plots.corruption_heatmap(result["top1"], result["corruptions"], result["severities"],
                                 os.path.join(folder, "corruption.png"), f"{title}: top-1 under corruption")
        return ["corruption.png"]
    if suite == "cam":
        plots.cam_panels(result, os.path.join(folder, "gradcam.png"), f"{title}: Grad-CAM")
        return ["gradcam.png"]
    return []


def default_folder(run_dir: str, options: EvalOptions, head: str, timestamp: bool) -> str:
    stamp = f"{datetime.datetime.now():%Y%m%d-%H%M%S}" if timestamp else None
    return os.path.join(run_dir, folder_name(options.suites, SUITES, head, options.protocol, stamp))


def evaluate_checkpoint(path: str, options: EvalOptions, out: Optional[str] = None, overwrite: bool = False,
                        timestamp: bool = False, say: Callable[[str], None] = print) -> tuple[str, dict]:
    """Evaluate a run folder or checkpoint file; returns (evaluation folder, results dict)."""
    t0 = time.perf_counter()
    torch.manual_seed(options.seed)
    run = load_run(path, options.checkpoint)
    ctx = EvalContext(run, options)
    reader = None
    if "corruption" in options.suites:
        reader = corruption.prepare(ctx)          # missing or malformed corruption files fail here
    if "occlusion" in options.suites:
        occlusion.patch_size(ctx.info.image_size, options.occlusion_patch)   # a patch that does not fit fails here
    dest = out or default_folder(run.run_dir, options, ctx.head, timestamp)
    staged = StagedFolder(dest, overwrite, say)
    name = os.path.basename(run.run_dir)
    try:
        say(f"evaluating {run.checkpoint_path} (epoch {run.epoch}), head {ctx.head}, protocol {options.protocol}, "
            f"{ctx.num_images} {ctx.dataset} images on {ctx.device} ({ctx.precision_reason}): "
            f"{', '.join(options.suites)}")
        results: dict = {}
        pictures: dict = {}
        timings: dict = {}
        for suite in options.suites:
            t = time.perf_counter()
            fn = SUITE_RUNS[suite]
            result = fn(ctx, reader) if suite == "corruption" else fn(ctx)
            timings[suite] = time.perf_counter() - t
            pictures[suite] = draw(suite, result, staged.path, name)
            results[suite] = result
            say(f"  {suite}: {headline(suite, result)} ({timings[suite]:.1f} s)")
        data = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "run": {"name": name, "dir": run.run_dir, "checkpoint": run.checkpoint_path, "epoch": run.epoch,
                    "method": run.method, "arch": run.config.get("arch"), "seed": run.config.get("seed"),
                    "heads": list(run.model.HEADS), "headline": run.model.HEADLINE},
            "folder": os.path.abspath(dest), "head": ctx.head, "protocol": options.protocol,
            "suites": list(options.suites),
            "data": ctx.describe(), "limit": options.limit, "seed": options.seed, "amp": ctx.amp,
            "precision": ctx.precision, "precision_reason": ctx.precision_reason,
            "device": device_name(ctx.device), "versions": versions(),
            "seconds": time.perf_counter() - t0, "suite_seconds": timings,
            "options": {"eps": options.eps, "pgd_steps": options.pgd_steps, "pgd_alpha": options.pgd_alpha,
                        "batch_size": options.batch_size, "checkpoint": options.checkpoint,
                        "corruption_dir": options.corruption_dir, "occlusion_patch": options.occlusion_patch,
                        "cam_images": options.cam_images},
            "results": results, "pictures": pictures,
        }
        write_json(staged.file(RESULTS), data)
        with open(staged.file(REPORT), "w") as f:
            f.write(render_report(data) + "\n")
        folder = staged.commit()
    except BaseException:
        staged.discard()
        raise
    return folder, clean_json(data)


def headline(suite: str, r: dict) -> str:
    """One line per suite for the console."""
    if suite == "accuracy":
        return f"top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%"
    if suite == "calibration":
        return f"ECE {r['ece']:.2f}% ({r['protocol']})"
    if suite in ("fgsm", "pgd"):
        return f"attacked top-1 {r['top1']:.2f}% (clean {r['clean_top1']:.2f}%)"
    if suite == "corruption":
        std = "n/a" if r["mean_standard"] is None else f"{r['mean_standard']:.2f}%"
        return f"mean top-1 {r['mean_all']:.2f}% over {r['cells']} cells, {std} over the standard 15"
    if suite == "occlusion":
        return "top-1 " + " ".join(f"{v:.1f}" for v in r["top1"]) + " at ratios 0..0.9"
    return f"{len(r['clean'])} images, mixes by {r['mixer']}"
