"""Every picture of the evaluation suite, drawn with matplotlib's Agg backend (no display needed).

Each PNG carries the numbers it shows as JSON in a PNG text chunk (key ``adautomix_data``;
``PIL.Image.open(path).text``), so tests and users can check a picture against results.json.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

DATA_KEY = "adautomix_data"


def pyplot():
    """matplotlib.pyplot on the Agg backend (set before pyplot is first imported)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, data: dict) -> str:
    """Write ``fig`` as a PNG with ``data`` embedded (temporary file + rename), and close it."""
    plt = pyplot()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                    metadata={"Software": "adautomix_fast", DATA_KEY: json.dumps(data, allow_nan=False)})
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_data(path: str) -> dict:
    """The numbers embedded in a PNG written by ``save``."""
    with Image.open(path) as im:
        return json.loads(im.text[DATA_KEY])


# ---------------------------------------------------------------------------- calibration
def reliability_diagram(curves: Sequence[tuple[str, dict, float]], path: str, title: str = "") -> str:
    """Accuracy per confidence bin against the diagonal, with the bin counts below.

    curves: (label, bins, ece %) per model; ``bins`` as ``calibration.reliability_bins``. One curve
    draws bars with the gap to the diagonal; several are overlaid as lines (the compare report).
    Drawn the standard way: confidence on x, accuracy on y (the released plot swapped them).
    """
    plt = pyplot()
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.2, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    data = {"curves": []}
    for k, (label, bins, ece) in enumerate(curves):
        edges = np.asarray(bins["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        count = np.asarray(bins["count"])
        acc = np.asarray(bins["accuracy"])
        conf = np.asarray(bins["confidence"])
        filled = count > 0
        text = f"{label} (ECE {ece:.2f}%)" if label else f"ECE {ece:.2f}%"
        if len(curves) == 1:
            ax.bar(centers[filled], acc[filled], width=width * 0.95, color="tab:blue", alpha=0.8,
                   edgecolor="black", linewidth=0.5, label=f"accuracy, {text}")
            low = np.minimum(acc, conf)[filled]
            ax.bar(centers[filled], np.abs(conf - acc)[filled], bottom=low, width=width * 0.95, fill=False,
                   hatch="//", edgecolor="tab:red", linewidth=0.8, label="gap to mean confidence")
            ax.plot(centers[filled], conf[filled], linestyle="none", marker="_", markersize=14, color="tab:red",
                    label="mean confidence")
            axc.bar(centers, count, width=width * 0.95, color="tab:gray")
        else:
            ax.plot(conf[filled], acc[filled], marker="o", markersize=3, linewidth=1.2, label=text)
            axc.plot(centers, count, marker="o", markersize=3, linewidth=1, label=label)
        data["curves"].append({"label": label, "ece": ece, "count": bins["count"], "accuracy": bins["accuracy"],
                               "confidence": bins["confidence"]})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    axc.set_xlabel("confidence (max softmax probability)")
    axc.set_ylabel("images")
    axc.grid(alpha=0.3)
    return save(fig, path, data)


# ---------------------------------------------------------------------------- occlusion
def occlusion_curves(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]], path: str,
                     title: str = "") -> str:
    """Top-1 (%) against the occlusion ratio, one line per model. curves: (label, ratios, top1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    data = {"curves": []}
    for label, ratios, top1 in curves:
        ax.plot(list(ratios), list(top1), marker="o", markersize=4, label=label or None)
        data["curves"].append({"label": label, "ratios": list(ratios), "top1": list(top1)})
    ax.set_xlabel("fraction of patches occluded")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Occlusion robustness")
    ax.grid(alpha=0.3)
    if any(label for label, _, _ in curves):
        ax.legend(fontsize=8)
    return save(fig, path, data)


# ---------------------------------------------------------------------------- corruption
def corruption_heatmap(table: dict, corruptions: Sequence[str], severities: Sequence[int], path: str,
                       title: str = "") -> str:
    """Top-1 (%) per corruption (rows) and severity (columns), annotated, as a heat map."""
    plt = pyplot()
    values = np.array([[table[c][str(s)] for s in severities] for c in corruptions])
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(severities), 0.9 + 0.32 * len(corruptions)))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(corruptions)), list(corruptions), fontsize=8)
    ax.set_xlabel("severity")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if values[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, label="top-1 (%)")
    ax.set_title(title or "Top-1 under corruption")
    return save(fig, path, {"corruptions": list(corruptions), "severities": list(severities),
                            "top1": values.tolist()})


# ---------------------------------------------------------------------------- Grad-CAM
def cam_panels(result: dict, path: str, title: str = "") -> str:
    """Rows: clean images, their Grad-CAM (true class), the pairwise mixes, the CAM of each source
    class on the mix. Columns: the images."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    plt = pyplot()
    arrays = result["_arrays"]
    names = arrays["names"]
    k = len(result["clean"])
    rows = [("clean", arrays["clean"], None), ("Grad-CAM, label", arrays["clean"], arrays["clean_maps"]),
            (f"mixed ({result['mixer']})", arrays["mixed"], None), ("CAM, class a", arrays["mixed"], arrays["maps_a"]),
            ("CAM, class b", arrays["mixed"], arrays["maps_b"])]
    fig, axes = plt.subplots(len(rows), k, figsize=(1.6 * k, 1.75 * len(rows)), squeeze=False)
    for r, (label, images, maps) in enumerate(rows):
        for j in range(k):
            ax = axes[r][j]
            image = np.ascontiguousarray(images[j], dtype=np.float32)
            if maps is not None:
                image = show_cam_on_image(image, maps[j], use_rgb=True)
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                info = result["clean"][j]
                ax.set_title(f"{names[info['label']]} (pred {names[info['pred']]})", fontsize=7)
            if r == 2:
                info = result["mixed"][j]
                ax.set_title(f"{names[info['label_a']]}+{names[info['label_b']]}", fontsize=7)
    fig.suptitle(title or "Grad-CAM", fontsize=9)
    return save(fig, path, {"clean": result["clean"], "mixed": result["mixed"], "mixer": result["mixer"]})
