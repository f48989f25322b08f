"""ImageNet (or any) weights in, library state dicts out.

``load_pretrained(classifier, spec)`` loads the trunk of ``classifier`` from
* a file: a torchvision or timm state dict (``.pth``/``.pt``/``.bin`` via ``torch.load``,
  ``.safetensors``), a checkpoint dict wrapping one under ``state_dict`` or ``model``, a state
  dict exported by this engine (``--export``), or one of this engine's checkpoints (its teacher);
* a library weight name: ``imagenet`` (the architecture's published ImageNet weights, see
  ``ARCH_SPECS[arch].weights``) or a torchvision name such as ``ResNet50_Weights.IMAGENET1K_V1``.
  A name is only served from the local cache (torch hub's ``checkpoints/`` folder, or the
  Hugging Face cache for timm); nothing is downloaded, and a missing file is a one-line
  UsageError that says which file to fetch and where to put it, or to pass a path.

The classifier's own head (torchvision ``fc``, Swin/DeiT ``head``, ConvNeXt ``classifier.2``) is
never loaded: fine-tuning has other classes, so ``head_one``/``head_mix`` start fresh. A state
dict that does not match the architecture is a one-line UsageError naming the first missing,
unexpected and mis-shaped keys. Nothing is changed unless everything matches.

``export_state_dict(classifier)`` is the inverse: the library's state dict (``head_one`` becomes
the library's head, ``head_mix`` is dropped), which ``library_model(arch, num_classes)`` (the
library's own constructor) loads with ``load_state_dict``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torchvision

from ..errors import UsageError
from ..run.torchfiles import load_failure
from .base import Classifier
from .deit import import_timm
from .specs import arch_spec

_BN_OPTIONAL = ".num_batches_tracked"   # absent from torchvision's older ResNet weights: BN fills 0


# ---------------------------------------------------------------------------- library models
def export_state_dict(classifier: Classifier) -> dict[str, torch.Tensor]:
    """``classifier`` as the library's state dict: ``head_one`` -> the library head, ``head_mix``
    dropped, every other key as it is (the trunks keep the libraries' names)."""
    head, prefix = classifier.library_head, classifier.trunk_prefix
    sd = {}
    for name, tensor in classifier.state_dict().items():
        if name.startswith("head_mix."):
            continue
        if name.startswith("head_one."):
            name = head + "." + name[len("head_one."):]
        elif prefix and name.startswith(prefix):
            name = name[len(prefix):]
        sd[name] = tensor.detach().clone().cpu()
    return sd


# ---------------------------------------------------------------------------- reading weights
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def _hub_checkpoint_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _torchvision_weights_file(arch: str, name: str) -> str:
    """The cached file of a torchvision weight name, or a UsageError saying how to get it."""
    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise UsageError(f"--pretrained {name}: not a torchvision weight name ({_one_line(exc)}); "
                         "pass a state dict file, 'imagenet', or a name like ResNet50_Weights.IMAGENET1K_V1") from None
    filename = os.path.basename(weights.url)
    path = os.path.join(_hub_checkpoint_dir(), filename)
    if not os.path.isfile(path):
        raise UsageError(f"--pretrained {name} needs {filename}, which is not in the torch hub cache "
                         f"({_hub_checkpoint_dir()}) and cannot be downloaded here: fetch {weights.url} "
                         f"elsewhere and pass --pretrained /path/to/{filename} (or put it in that folder)")
    return path


def _timm_weights_file(name: str) -> str:
    """The cached file of a timm pretrained tag (Hugging Face cache only), or a UsageError."""
    import_timm()
    import timm
    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache
            for fname in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(repo, fname)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
        except ImportError:
            pass
    url = getattr(cfg, "url", None) if cfg is not None else None
    where = f"https://huggingface.co/{repo}" if repo else (url or "timm's model hub")
    raise UsageError(f"--pretrained {name} is not in the local Hugging Face cache and cannot be downloaded "
                     f"here: download its weights from {where} elsewhere and pass --pretrained /path/to/file")


def resolve_pretrained(arch: str, spec: str) -> str:
    """A path for ``spec`` (a file, 'imagenet' or a library weight name); UsageError otherwise."""
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        return path
    looks_like_path = os.sep in spec or spec.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))
    if looks_like_path:
        raise UsageError(f"--pretrained {spec}: no such file; pass an existing state dict file "
                         "(.pth/.pt/.safetensors) or 'imagenet'")
    if arch.startswith("module:"):
        raise UsageError(f"--pretrained {spec}: a backbone module takes a state dict file only; load the "
                         "library's weights into the module before passing it")
    a = arch_spec(arch)
    name = a.weights if spec.lower() == "imagenet" else spec
    if name is None:
        raise UsageError(f"--arch {arch} has no published ImageNet weights; pass --pretrained /path/to/state_dict.pth")
    if a.library == "timm":
        return _timm_weights_file(name)
    return _torchvision_weights_file(arch, name)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} from a weights file (see the module docstring for the formats)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, pickled objects, ...
        reason = _one_line(exc) if path.endswith(".safetensors") else load_failure(path, exc)
        raise UsageError(f"--pretrained {path}: not a readable state dict: {reason}; pass a state dict file "
                         "(.pth, .pt, .bin or .safetensors) or an --export of this engine") from None
    if isinstance(obj, dict) and obj.get("format") == "adautomix_fast" and isinstance(obj.get("model"), dict):
        model = obj["model"]   # one of this engine's checkpoints: its teacher (else its student)
        prefix = "teacher." if any(k.startswith("teacher.") for k in model) else "student."
        obj = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"--pretrained {path}: not a state dict (expected a dict of tensors)")
    if all(k.startswith("module.") for k in obj):   # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# ---------------------------------------------------------------------------- loading
def _is_head(name: str, head: str) -> bool:
    return name.startswith((head + ".", "head_one.", "head_mix."))


def _listing(names: list[str], n: int = 3) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_pretrained(classifier: Classifier, spec: str) -> dict:
    """Load the trunk of ``classifier`` from ``spec`` (file path or weight name; module docstring).

    Returns {"path", "loaded" (tensors), "skipped" (the head's keys)}. Raises a one-line
    UsageError, before changing anything, if the state dict does not match the architecture.
    """
    path = resolve_pretrained(classifier.arch, spec)
    sd = read_state_dict(path)
    head, prefix = classifier.library_head, classifier.trunk_prefix
    skipped = sorted(k for k in sd if _is_head(k, head))
    given = {k: v for k, v in sd.items() if not _is_head(k, head)}
    own = {k[len(prefix):] if prefix and k.startswith(prefix) else k: v
           for k, v in classifier.state_dict().items() if not _is_head(k, head)}
    missing = [k for k in own if k not in given and not k.endswith(_BN_OPTIONAL)]
    unexpected = [k for k in given if k not in own]
    shapes = [f"{k} {list(given[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in given and given[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape {_listing(shapes, 2)}")
        hint = " (a CIFAR-stem model: pass --no-cifar-stem for ImageNet weights)" \
            if classifier.cifar_stem and shapes else ""
        raise UsageError(f"--pretrained {spec} does not match --arch {classifier.arch}: {'; '.join(parts)}{hint}")
    with torch.no_grad():
        for k, v in given.items():
            own[k].copy_(v)
    return {"path": path, "loaded": len(given), "skipped": skipped}


def load_pretrained_model(model: nn.Module, spec: Optional[str]) -> Optional[dict]:
    """``--pretrained`` for a training model: the student loads the weights and the teacher (when
    the model has one) becomes its copy again; the generator is left as initialised."""
    if not spec:
        return None
    info = load_pretrained(model.student, spec)
    teacher = getattr(model, "teacher", None)
    if teacher is not None:
        teacher.load_state_dict(model.student.state_dict())
    return info
