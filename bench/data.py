"""Data loading throughput: the DALI pipeline vs the torchvision DataLoader on one JPEG folder.

    python -m bench.data --out DIR [--quick] [--images N] [--batch-size N] [--workers N]
                         [--epochs N] [--img-size N] [--data-dir DIR] [--device auto|cpu|cuda]

Generates an ImageNet-like folder (JPEG photos-like images of 333-500 x 333-500 px, quality 90)
in a temporary directory, unless --data-dir names an existing train/ + val/ folder, and
iterates the *training* loader of ``adautomix_fast.data.build_loaders`` on it - random resized
crop to 224, horizontal flip, normalisation to float32 - with the same worker count for every
case:

  torch      torchvision transforms in a DataLoader (``--data-backend torch``), batches on the CPU
  torch-gpu  the torch case with pinned memory and the host-to-GPU copy (CUDA only)
  dali-cpu   DALI, CPU-only pipeline (``device_id=None``): decoded by libjpeg-turbo on the CPU
  dali-gpu   DALI with the mixed nvJPEG decoder and GPU augmentation, batches on the GPU (CUDA only)

images/s counts the images after the first batch of each epoch over the time from that batch
to the last, so pipeline start-up (DataLoader workers, DALI's per-epoch reader) is left out;
``epoch_wall_s`` includes it. A case that cannot run here is reported as unmeasured, with the
reason (e.g. "DALI not installed"). Ratios are measured in this process. Never asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from multiprocessing import get_context
from typing import Any, Optional

if __package__ in (None, ""):  # `python bench/data.py` as well as -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
import torchvision
from PIL import Image

from adautomix_fast.data import build_loaders
from adautomix_fast.data.dali import dali_import_error, dali_version
from adautomix_fast.data.sampling import worker_start_method
from bench import common

# torch cases first: their DataLoader workers then start before any DALI thread exists.
CASES = ("torch", "torch-gpu", "dali-cpu", "dali-gpu")
CLASSES = 4
VAL_IMAGES = 8  # build_loaders wants a val split; it is not timed


# ---------------------------------------------------------------------------- the folder
def _make_image(args: tuple[str, int]) -> int:
    """A photo-like JPEG: smooth colour field + fine noise (~40-70 KB at 500x375, like ImageNet's)."""
    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = (500, int(rng.integers(333, 376))) if rng.random() < 0.7 else (int(rng.integers(333, 501)), 500)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 12, (h, w, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return os.path.getsize(path)


def make_folder(root: str, images: int, processes: int) -> dict[str, Any]:
    jobs = []
    for split, n in (("train", images), ("val", VAL_IMAGES)):
        for i in range(n):
            d = os.path.join(root, split, f"class{i % CLASSES}")
            os.makedirs(d, exist_ok=True)
            jobs.append((os.path.join(d, f"{split}_{i:05d}.jpg"), i if split == "train" else 10**6 + i))
    if processes <= 1 or len(jobs) < 64:
        sizes = [_make_image(job) for job in jobs]
    else:  # forkserver once DALI is loaded: forking next to DALI's threads can hang the child
        with get_context(worker_start_method(processes)).Pool(processes) as pool:
            sizes = pool.map(_make_image, jobs, chunksize=8)
    return {"images": images, "mean_kb": round(sum(sizes[:images]) / images / 1024, 1),
            "image_px": "333-500 x 333-500 (70% landscape 500 x 333-375)"}


# ---------------------------------------------------------------------------- one case
def run_case(case: str, root: str, args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {"case": case, "error": None, "unmeasured": None,
                              "config": {"batch_size": args.batch_size, "workers": args.workers,
                                         "img_size": args.img_size, "epochs": args.epochs,
                                         "augmentation": "random resized crop, flip, normalize (float32)"}}
    dali_needed = case.startswith("dali")
    cuda_needed = case.endswith("gpu")
    if dali_needed and dali_import_error() is not None:
        record["unmeasured"] = "DALI not installed"
        return record
    if cuda_needed and not torch.cuda.is_available():
        record["unmeasured"] = "no CUDA device"
        return record
    device = torch.device("cuda" if cuda_needed else "cpu")
    try:
        train, _, info = build_loaders(
            "folder", root, args.batch_size, workers=args.workers, seed=0, image_size=args.img_size,
            backend="dali" if dali_needed else "torch", device=device, pin_memory=case == "torch-gpu")
        record["backend"] = info.backend
        epochs = []
        for epoch in range(args.epochs + 1):  # epoch 0 warms up (workers, decoder, allocations)
            train.set_epoch(epoch)
            t0 = time.perf_counter()
            first = None
            count = 0
            for x, y in train:
                if cuda_needed:
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True)
                    torch.cuda.synchronize(device)
                if first is None:
                    first = time.perf_counter()
                else:
                    count += x.shape[0]
            end = time.perf_counter()
            if epoch:
                epochs.append({"images_after_first_batch": count, "steady_s": end - first, "epoch_wall_s": end - t0})
        steady = sum(e["steady_s"] for e in epochs)
        record["images_per_s"] = sum(e["images_after_first_batch"] for e in epochs) / steady if steady > 0 else None
        record["epoch_wall_s"] = [round(e["epoch_wall_s"], 3) for e in epochs]
        record["batches_per_epoch"] = len(train)
        record["sample"] = {"shape": list(x.shape), "dtype": str(x.dtype), "device": str(x.device)}
        del train
    except Exception as exc:  # a benchmark reports, it does not stop
        traceback.print_exc()
        record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return record


def step_images_per_s(results: dict[str, Any]) -> Optional[tuple[str, float]]:
    """The ImageNet-shape step throughput of the same day's results, if bench.step wrote one."""
    best = None
    for key, r in (results.get("cases") or {}).items():
        if key.startswith("step/imagenet/") and r.get("images_per_s") and r.get("impl") != "vanilla":
            if best is None or r.get("impl") == "fused":
                best = (key, float(r["images_per_s"]))
    return best


# ---------------------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results", help="folder of the results JSON (default: bench/results)")
    p.add_argument("--quick", action="store_true", help="fewer images and one timed epoch (default: off)")
    p.add_argument("--images", type=int, help="training JPEGs to generate (default: 2048 with CUDA, 512 on CPU; "
                                              "--quick: 1024 / 192)")
    p.add_argument("--batch-size", type=int, help="batch size (default: 128 with CUDA, 32 on CPU)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader workers = DALI threads (default: min(8, CPUs))")
    p.add_argument("--epochs", type=int, help="timed epochs after one warm-up epoch (default: 2; --quick: 1)")
    p.add_argument("--img-size", type=int, default=224, help="training crop size (default: 224)")
    p.add_argument("--data-dir", help="an existing folder with train/ and val/ (default: generate one)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)} (default: all)")
    p.add_argument("--no-write", action="store_true", help="print the table only (default: write the JSON)")
    args = p.parse_args(argv)
    args.images = args.images or ((1024 if cuda else 192) if args.quick else (2048 if cuda else 512))
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        p.error(f"--cases: unknown {bad}; choose from {', '.join(CASES)}")
    return args


COLUMNS = [("case", "case", ""), ("backend", "backend", ""), ("images_per_s", "img/s", ".1f"),
           ("epoch_wall_s", "epoch wall s", ""), ("note", "note", "")]


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = common.device_info(device)

    tmp = None
    try:
        # The folder first: its worker pool forks before DALI is even imported.
        if args.data_dir:
            root, folder = args.data_dir, {"images": "given", "path": args.data_dir}
        else:
            tmp = tempfile.mkdtemp(prefix="adautomix-bench-data-")
            root = tmp
            t0 = time.perf_counter()
            folder = make_folder(root, args.images, os.cpu_count() or 1)
            folder["generate_s"] = round(time.perf_counter() - t0, 1)
        versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "dali": dali_version()}
        print(f"bench.data on {info['name']} ({info['cpu']}, {os.cpu_count()} CPUs); workers {args.workers}, "
              f"batch {args.batch_size}, {args.images} images (mean {folder.get('mean_kb', '?')} KB); torch "
              f"{versions['torch']}, torchvision {versions['torchvision']}, DALI {versions['dali'] or 'not installed'}",
              flush=True)
        records = {}
        for case in args.cases:
            print(f"  {case} ...", flush=True)
            r = run_case(case, root, args)
            r["folder"] = folder
            r["versions"] = versions
            r["cpu"] = info["cpu"]
            records[case] = r
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    variant = f"{args.img_size}px-b{args.batch_size}-w{args.workers}"
    cases = {f"data/folder/{variant}/{c}": r for c, r in records.items()}
    ratios: dict[str, Any] = {}

    def rate(c):
        r = records.get(c)
        return r.get("images_per_s") if r else None

    for num, den in (("dali-cpu", "torch"), ("dali-gpu", "torch"), ("dali-gpu", "torch-gpu")):
        if rate(num) and rate(den):
            ratios[f"data/folder/{variant}/{num}_over_{den}"] = {
                "numerator": num, "denominator": den, "value": rate(num) / rate(den),
                "meaning": f"images/s {num} / {den}, same folder, augmentations and worker count"}
    step = step_images_per_s(common.load_results(common.results_path(args.out, info)))
    if rate("dali-gpu") and step:
        ratios[f"data/folder/{variant}/dali-gpu_over_step"] = {
            "numerator": "dali-gpu", "denominator": step[0], "value": rate("dali-gpu") / step[1],
            "meaning": "DALI GPU loader images/s / the ImageNet-shape step's images/s (> 1: the loader keeps up)"}

    rows = [{**r, "note": r.get("unmeasured") or r.get("error") or ""} for r in records.values()]
    print()
    print(f"[{info['kind']}] {info['name']}")
    print(common.format_table(rows, COLUMNS))
    common.report(ratios, args.out, info, {"cases": cases, "ratios": ratios}, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
