"""The ``cam`` suite: Grad-CAM of the chosen head on clean and mixed test images (Fig. 1 style).

``pytorch-grad-cam`` (PyPI ``grad-cam``) computes the maps on the network's ``cam_target()`` (the
last residual block of a ResNet). Clean images get the map of their true class; mixed images
(pairs of test images i and i+1) get one map per source class, so that one sees whether the
classifier attends to each source where it is visible. The mix is made by the checkpoint's own
mask generator when it has one (AdAutoMix: two slots, lambda 0.5, teacher features in eval mode),
and by plain mixup at lambda 0.5 otherwise.
"""

from __future__ import annotations

import numpy as np
import torch


def _mix_pairs(ctx, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Mix image i with image i+1 (cyclically): the model's generator when it has one."""
    b = x.shape[0]
    index = torch.stack([torch.arange(b, device=x.device), torch.arange(b, device=x.device).roll(-1)])
    lam = torch.tensor([0.5, 0.5], device=x.device)
    model = ctx.model
    if hasattr(model, "generator") and hasattr(model, "teacher"):
        with torch.no_grad():
            feats = model.teacher.stem_to_stage3(x)
            if hasattr(model.teacher, "tap_features"):
                feats = model.teacher.tap_features(feats)
            logits = model.generator.mask_logits(feats, index, lam)
            mixed = model.generator.mix(logits, x, index)
        return mixed, "generator"
    return 0.5 * x + 0.5 * x[index[1]], "mixup"


def run(ctx) -> dict:
    """Grad-CAM maps of the first ``--cam-images`` test images and of their pairwise mixes.

    Returns the numbers for results.json; the maps themselves ([K,H,W] in [0,1]) and the images
    are kept under the private key ``_arrays`` for the picture (not written to JSON).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    k = max(2, ctx.options.cam_images)
    xs, ys = [], []
    for _, x, y in ctx.batches("cam"):
        xs.append(x)
        ys.append(y)
        if sum(len(t) for t in ys) >= k:
            break
    x, y = torch.cat(xs)[:k], torch.cat(ys)[:k]
    k = len(y)
    mixed, mixer = _mix_pairs(ctx, x)
    partner = y.roll(-1)

    with GradCAM(model=ctx.classifier, target_layers=[ctx.classifier.target_layer]) as cam:
        # The teacher's parameters are frozen: without a gradient on the input no activation
        # gradient would reach the hooked layer (GradCAM's constructor does not pass this on).
        cam.compute_input_gradient = True
        clean_maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in y])
        maps_a = cam(input_tensor=mixed, targets=[ClassifierOutputTarget(int(c)) for c in y])
        maps_b = cam(input_tensor=mixed, targets=[ClassifierOutputTarget(int(c)) for c in partner])
    ctx.classifier.zero_grad(set_to_none=True)

    with torch.no_grad():
        p_clean = ctx.logits(x).softmax(1)
        p_mixed = ctx.logits(mixed).softmax(1)
    names = ctx.info.class_names
    clean = [{"index": i, "label": int(y[i]), "label_name": names[int(y[i])], "pred": int(p_clean[i].argmax()),
              "prob_label": float(p_clean[i, y[i]])} for i in range(k)]
    mixes = [{"a": i, "b": (i + 1) % k, "label_a": int(y[i]), "label_b": int(partner[i]),
              "pred": int(p_mixed[i].argmax()), "prob_a": float(p_mixed[i, y[i]]),
              "prob_b": float(p_mixed[i, partner[i]])} for i in range(k)]
    return {
        "method": "Grad-CAM (pytorch-grad-cam)",
        "target_layer": type(ctx.classifier.target_layer).__name__,
        "mixer": mixer,
        "clean": clean,
        "mixed": mixes,
        "_arrays": {
            "clean": ctx.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy(),
            "mixed": ctx.denormalize(mixed).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy(),
            "clean_maps": np.asarray(clean_maps), "maps_a": np.asarray(maps_a), "maps_b": np.asarray(maps_b),
            "names": names,
        },
    }
