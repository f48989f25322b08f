"""Data loading under pytest-benchmark: one training epoch of each backend on one generated JPEG
folder (random resized crop 224, flip, normalisation), grouped as ``data-<images>img``.

Cases (bench.data.CASES): ``torch`` (torchvision DataLoader), ``torch-gpu`` (plus pinned memory and
the copy to the GPU), ``dali-cpu`` (CPU-only DALI pipeline) and ``dali-gpu`` (nvJPEG, CUDA only).
One round = one full epoch, pipeline start-up included (the ``python -m bench.data`` report leaves
the first batch out). A case that cannot run here is skipped with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

from adautomix_fast.data import build_loaders
from adautomix_fast.data.dali import dali_import_error
from bench import data as data_bench
from bench.common import run_timed

# (training images, batch size, timed epochs) per size.
SIZES = {"gpu": (2048, 128, 3), "cpu": (256, 32, 3), "smoke": (16, 8, 1)}


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory, bench_size):
    images = SIZES[bench_size][0]
    root = str(tmp_path_factory.mktemp("jpegs"))
    data_bench.make_folder(root, images, processes=min(4, os.cpu_count() or 1))
    return root, images


@pytest.mark.parametrize("case", data_bench.CASES)
def test_epoch(benchmark, case, jpeg_folder, bench_size):
    root, images = jpeg_folder
    _, batch, rounds = SIZES[bench_size]
    if case.startswith("dali") and dali_import_error() is not None:
        pytest.skip(f"DALI not installed ({dali_import_error()})")
    cuda = case.endswith("gpu")
    if cuda and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    device = torch.device("cuda" if cuda else "cpu")
    workers = min(8, os.cpu_count() or 1)
    train, _, info = build_loaders("folder", root, batch, workers=workers, seed=0, image_size=224,
                                   backend="dali" if case.startswith("dali") else "torch", device=device,
                                   pin_memory=case == "torch-gpu")
    epoch = [0]

    def one_epoch():
        train.set_epoch(epoch[0])
        epoch[0] += 1
        for x, _ in train:
            if cuda:
                x = x.to(device, non_blocking=True)
        return x

    benchmark.group = f"data-{images}img"
    run_timed(benchmark, one_epoch, device, rounds, warmup=1)
    benchmark.extra_info.update(case=case, backend=info.backend, workers=workers, batch_size=batch,
                                images_per_epoch=len(train) * batch,
                                images_per_s=len(train) * batch / benchmark.stats.stats.median)
