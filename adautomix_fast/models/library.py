"""Any timm or torchvision classification model, or one's own ``nn.Module``, as a Classifier.

``--arch timm/<name>`` builds ``timm.create_model(name, num_classes=0)``; ``--arch tv/<name>``
builds ``torchvision.models.get_model(name)``; the library API wraps a module it is given. The
model's own forward decides everything, read once at construction from one probe batch (eval
mode, no gradient, so no state changes):

* **Trunk units.** The model's top-level modules (a plain ``nn.Sequential`` child such as timm's
  ``blocks`` or torchvision's ``features`` opened one level) in the order its forward calls them,
  recorded by forward hooks. The trunk is the units up to the features (timm:
  ``forward_features``; torchvision: up to the global pooling); running them one after another must
  give exactly what the model's forward gives, otherwise the model does something between its
  modules (a functional op, a token concat) and is refused in one line.
* **Stages.** timm: the modules its ``feature_info`` names (its own stage metadata); torchvision
  and other modules: the last unit of each output stride. Stage 0 is the stem. Units after the
  last stage end (EfficientNet's ``conv_head``) belong to the last stage.
* **Tap.** The end of the (last) stage at stride 16, where AdAutoMix taps ResNets (layer3), unless
  ``tap`` names another stage; its channels come from the probe.
* **Pooling.** timm: ``forward_head(pre_logits=True)``; torchvision: the units after the trunk
  with the last ``nn.Linear`` (the classifier) replaced by an identity. ``head_one``/``head_mix``
  sit on these pooled features; the export puts ``head_one`` where the library's classifier was.

The units are called by their module names at every forward (never cached module objects), so a
module swap such as ``SyncBatchNorm.convert_sync_batchnorm`` is seen, and the graph is the
library's own modules, in order: no hook, adapter or copy in the step. timm's Vision Transformers
are not a sequence of modules (the class token and position table are added in between); they use
the DeiT family's code (:mod:`.deit`) with one stage per block. Channels-last trunks (Swin) are
refused: their stage maps are [B, H, W, C].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torchvision

from ..errors import UsageError
from .base import Classifier
from .deit import DeiTClassifier
from .specs import check_library_name, import_timm, library_spec, split_library_arch

PROBE_SIZE = 224          # torchvision's models and most of timm's are defined at 224 px
POOLING_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


def create_library_model(library: str, name: str, drop_path: float = 0.0) -> nn.Module:
    """The library's model, untrained (timm without its classifier: ``num_classes=0``)."""
    check_library_name(library, name)
    if library == "timm":
        timm = import_timm()
        kwargs = dict(drop_path_rate=drop_path) if drop_path else {}
        try:
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as exc:
            raise UsageError(f"--arch timm/{name}: {exc}; drop --drop-path") from None
    kwargs = dict(stochastic_depth_prob=drop_path) if drop_path else {}
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except TypeError as exc:
        raise UsageError(f"--arch tv/{name} takes no --drop-path ({' '.join(str(exc).split())[:120]})") from None


# ---------------------------------------------------------------------------- reading the model
def _is_timm(net: nn.Module) -> bool:
    return hasattr(net, "forward_features") and hasattr(net, "forward_head") and hasattr(net, "feature_info")


def _last_linear(net: nn.Module) -> Optional[str]:
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _candidate_units(net: nn.Module, inside: tuple[str, ...] = ()) -> list[str]:
    """Top-level module names, a plain nn.Sequential child opened one level (its children are the
    units). ``inside``: timm's feature modules; a Sequential is opened only when one lies within."""
    units = []
    for name, child in net.named_children():
        opened = type(child) is nn.Sequential and (
            not inside or any(f.startswith(name + ".") for f in inside))
        if opened:
            units.extend(f"{name}.{sub}" for sub, _ in child.named_children())
        else:
            units.append(name)
    return units


def _call_order(net: nn.Module, units: list[str], run) -> tuple[list[str], dict[str, tuple], torch.Tensor]:
    """Which ``units`` ``run()`` calls, in order, with each output's shape, and its result."""
    order, shapes, handles = [], {}, []
    for name in units:
        def hook(_module, _args, out, name=name):
            order.append(name)
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        handles.append(net.get_submodule(name).register_forward_hook(hook))
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return order, shapes, out


@dataclass(frozen=True)
class TrunkLayout:
    """What the probe found: stage s runs ``stages[s]`` (module names); its output has
    ``channels[s]`` channels at stride ``strides[s]``; ``head``: the torchvision pooling units."""

    stages: tuple[tuple[str, ...], ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    head: tuple[str, ...]
    flatten_pooled: bool
    feature_dim: int


def _stage_ends_by_stride(trunk: list[str], strides: dict[str, int]) -> list[int]:
    return [i for i in range(len(trunk)) if i == len(trunk) - 1 or strides[trunk[i + 1]] != strides[trunk[i]]]


def read_layout(net: nn.Module, what: str, probe_size: int = PROBE_SIZE) -> TrunkLayout:
    """Read ``net``'s trunk, stages and pooling (module docstring). ``what`` names it in errors.
    For a torchvision-style model, its last nn.Linear must already be an identity (the caller
    records its name)."""
    timm_model = _is_timm(net)
    features = [f["module"] for f in net.feature_info] if timm_model else []
    units = _candidate_units(net, tuple(features))
    probe = torch.randn(2, 3, probe_size, probe_size)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            if timm_model:
                order, shapes, fmap = _call_order(net, units, lambda: net.forward_features(probe))
                pooled = net.forward_head(fmap, pre_logits=True)
                trunk, head = order, []
            else:
                order, shapes, pooled = _call_order(net, units, lambda: net(probe))
                first_pool = next((i for i, n in enumerate(order) if isinstance(net.get_submodule(n), POOLING_TYPES)),
                                  None)
                if first_pool is None or first_pool == 0:
                    raise UsageError(f"{what}: no global pooling module (nn.AdaptiveAvgPool2d) after its trunk; "
                                     "wrap it so that its forward ends with one, or use a timm model")
                trunk, head = order[:first_pool], order[first_pool:]
            if len(set(order)) != len(order):
                raise UsageError(f"{what}: a module runs twice in its forward; only a sequence of distinct modules "
                                 "can be split into stages")
            h = probe
            for name in trunk:
                h = net.get_submodule(name)(h)
            flatten = False
            if not timm_model:
                h_map = h
                for flatten in (False, True):
                    try:
                        z = _run_head(net, head, h_map, flatten)
                    except (RuntimeError, ValueError):
                        continue
                    if z.shape == pooled.shape and torch.allclose(z, pooled, rtol=1e-4, atol=1e-5):
                        break
                else:
                    raise UsageError(f"{what}: its forward is not a plain sequence of its modules (it computes "
                                     "between them); this model cannot be split into stages")
                fmap = h_map
            elif h.shape != fmap.shape or not torch.allclose(h, fmap, rtol=1e-4, atol=1e-5):
                raise UsageError(f"{what}: its forward_features is not a plain sequence of its modules (it computes "
                                 "between them); this model cannot be split into stages")
    finally:
        net.train(was_training)

    for name in trunk:
        shape = shapes[name]
        if shape is None or len(shape) != 4:
            raise UsageError(f"{what}: module {name} outputs {shape}, not a [B, C, H, W] map; only convolutional "
                             "trunks (and timm's ViT/DeiT) can be tapped")
        if shape[2] != shape[3] and shape[1] == shape[2]:
            raise UsageError(f"{what}: its stage maps are channels-last [B, H, W, C] (a Swin-like trunk), which "
                             "the generator cannot read; use --arch swin_t for Swin-T")
    strides = {n: max(1, round(probe_size / shapes[n][3])) for n in trunk}
    ends = []
    if features:
        ends = [trunk.index(f) for f in features if f in trunk]
        if len(ends) != len(features) or ends != sorted(ends):
            ends = []   # a feature module inside a unit: fall back to the strides
    if not ends:
        ends = _stage_ends_by_stride(trunk, strides)
    ends = sorted(set(ends))
    ends[-1] = len(trunk) - 1   # units after the last feature module belong to the last stage
    stages, start = [], 0
    for end in ends:
        stages.append(tuple(trunk[start:end + 1]))
        start = end + 1
    last = [s[-1] for s in stages]
    return TrunkLayout(stages=tuple(stages), channels=tuple(shapes[n][1] for n in last),
                       strides=tuple(strides[n] for n in last), head=tuple(head), flatten_pooled=flatten,
                       feature_dim=int(pooled.shape[1]))


def _run_head(net: nn.Module, head, h: torch.Tensor, flatten: bool) -> torch.Tensor:
    h = net.get_submodule(head[0])(h)
    if flatten:
        h = torch.flatten(h, 1)
    for name in head[1:]:
        h = net.get_submodule(name)(h)
    return h


def default_tap(strides: tuple[int, ...]) -> int:
    """The stage whose output the generator reads: the last at stride 16 (ResNet's layer3), else
    the last below 16; never the last stage (the trunk must continue after the tap)."""
    usable = range(len(strides) - 1)
    at16 = [s for s in usable if strides[s] == 16]
    below = [s for s in usable if strides[s] < 16]
    if at16:
        return at16[-1]
    if below:
        return below[-1]
    return 0


def mix_points(strides: tuple[int, ...], tap: int) -> tuple[int, int, int]:
    """ManifoldMix's three mixing points (stage indices before which a hidden state is mixed): the
    input and the ends of the stages at strides 4 and 8, as for a ResNet (0, 2, 3); otherwise the
    first stage boundaries up to the tap."""
    points = [0] + [s + 1 for s in range(len(strides) - 1) if strides[s] in (4, 8) and s + 1 <= tap + 1]
    points = sorted(set(points))[:3]
    s = 1
    while len(points) < 3 and s < len(strides):
        if s not in points:
            points.append(s)
        s += 1
    return tuple(sorted(points))[:3]


# ---------------------------------------------------------------------------- the classifiers
@dataclass(frozen=True)
class BackboneChoice:
    """A backbone with a chosen tap (``--tap``): ``source`` is an arch name or an nn.Module."""

    source: object
    tap: Optional[int] = None


def unpack_backbone(arch) -> tuple[object, Optional[int]]:
    if isinstance(arch, BackboneChoice):
        return arch.source, arch.tap
    return arch, None


def backbone_name(source) -> str:
    return source if isinstance(source, str) else f"module:{type(source).__name__}"


class LibraryClassifier(Classifier):
    """A timm or torchvision model (or any module of that shape) + ``head_one`` + ``head_mix``.

    The library model is ``self.net`` (state-dict keys ``net.<library key>``); stages, tap and
    pooling are read from it (module docstring)."""

    trunk_prefix = "net."

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        library, name = split_library_arch(arch)
        if library == "timm":
            return import_timm().create_model(name, pretrained=False, num_classes=num_classes)
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    def __init__(self, arch, num_classes: int, cifar_stem: bool = False, drop_path: float = 0.0,
                 mix_head: bool = True, tap: Optional[int] = None, net: Optional[nn.Module] = None):
        super().__init__()
        if cifar_stem:
            raise UsageError(f"--arch {backbone_name(arch)} has no CIFAR stem: pass --no-cifar-stem")
        self.arch = backbone_name(arch)
        self.cifar_stem = False
        split = split_library_arch(self.arch)
        self.spec = library_spec(self.arch) if split else None
        if net is None:
            net = create_library_model(*split, drop_path)
        elif drop_path:
            raise UsageError("--drop-path: set the stochastic depth on the module you pass")
        what = f"--arch {self.arch}" if split else f"backbone {type(net).__name__}"
        head_key = ""
        if not _is_timm(net):
            head_key = _last_linear(net) or ""
            if not head_key:
                raise UsageError(f"{what}: no nn.Linear classifier to replace with the two heads")
            parent, _, leaf = head_key.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, nn.Identity())
        elif hasattr(net, "reset_classifier") and net.num_classes:
            net.reset_classifier(0)
        self.net = net
        layout = read_layout(net, what, _probe_size(net))
        if _is_timm(net):
            head_key = (getattr(net, "pretrained_cfg", {}) or {}).get("classifier", "head") or "head"
        self.head_key = head_key
        self.layout = layout
        self.num_stages = len(layout.stages)
        if self.num_stages < 2:
            raise UsageError(f"{what}: found one stage only; the generator needs a tap inside the trunk")
        t = default_tap(layout.strides) if tap is None else int(tap)
        if not 0 <= t < self.num_stages - 1:
            raise UsageError(f"--tap {tap}: {what} has stages 0..{self.num_stages - 1} (strides "
                             f"{', '.join(map(str, layout.strides))}); the tap must be 0..{self.num_stages - 2}")
        self.tap = t
        self.tap_stage = t + 1
        self.tap_stride = layout.strides[t]
        self.mix_points = mix_points(layout.strides, t)
        self.stage3_channels = layout.channels[t]
        self.feature_dim = layout.feature_dim
        family = self.spec.options.get("recipe") if self.spec is not None else None
        self._make_heads(num_classes, trunc_normal=family in ("convnext", "deit"), mix_head=mix_head)

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        for name in self.layout.stages[i]:
            h = self.net.get_submodule(name)(h)
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        if not self.layout.head:
            return self.net.forward_head(h, pre_logits=True)
        return _run_head(self.net, self.layout.head, h, self.layout.flatten_pooled)

    def cam_target(self) -> nn.Module:
        """The trunk's last module (its output is the last [B, C, h, w] map)."""
        return self.net.get_submodule(self.layout.stages[-1][-1])

    def describe(self) -> str:
        stages = ", ".join(f"{s}: /{st} {c}ch"
                           for s, (st, c) in enumerate(zip(self.layout.strides, self.layout.channels)))
        return f"{self.num_stages} stages ({stages}); generator tap after stage {self.tap}"

    def tap_side(self, image_side: int) -> int:
        """The tap map's side at ``image_side`` px, by running the trunk to the tap (eval mode)."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                p = next(self.parameters())
                x = torch.zeros(1, 3, image_side, image_side, device=p.device, dtype=p.dtype)
                return int(self.tap_features(self.stem_to_stage3(x)).shape[-1])
        finally:
            self.train(was)


def _probe_size(net: nn.Module) -> int:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if size else PROBE_SIZE


class LibraryViTClassifier(DeiTClassifier):
    """A timm VisionTransformer (``timm/vit_*``, ``timm/deit*``): the DeiT family's code with one
    stage per block; the tap after half the blocks (the released DeiT-S tap, block 6 of 12)."""

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        return LibraryClassifier.library_model(arch, num_classes, cifar_stem)

    def __init__(self, arch, num_classes: int, cifar_stem: bool = False, drop_path: float = 0.0,
                 mix_head: bool = True, tap: Optional[int] = None, net: Optional[nn.Module] = None):
        name = backbone_name(arch)
        if net is None:
            net = create_library_model(*split_library_arch(name), drop_path)
        split = split_library_arch(name)
        super().__init__(name, num_classes, cifar_stem, drop_path=drop_path, mix_head=mix_head, net=net,
                         blocks_per_stage=1, spec=library_spec(name) if split else None)
        depth = len(self.blocks)
        t = depth // 2 if tap is None else int(tap)
        if not 1 <= t < self.num_stages - 1:
            raise UsageError(f"--tap {tap}: {name} has stages 0..{self.num_stages - 1} (0: patch embedding, "
                             f"k: block k); the tap must be 1..{self.num_stages - 2}")
        self.tap = t
        self.tap_stage = t + 1
        self.tap_stride = int(net.patch_embed.patch_size[0])
        self.mix_points = (0, 1 + depth // 4, 1 + depth // 2)
        self.head_key = "head"
        self.fixed_image_size = None if getattr(net, "dynamic_img_size", False) else int(net.patch_embed.img_size[0])

    def describe(self) -> str:
        return (f"{self.num_stages} stages (0: patch embedding /{self.tap_stride}, 1..{self.num_stages - 1}: "
                f"one block each); generator tap after block {self.tap}")

    def tap_side(self, image_side: int) -> int:
        return self.grid[0]


def is_vit(net: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(net, VisionTransformer)


def build_library_classifier(arch, num_classes: int, cifar_stem: bool, drop_path: float = 0.0,
                             mix_head: bool = True) -> Classifier:
    """The classifier of ``timm/<name>``, ``tv/<name>``, an nn.Module, or a ``BackboneChoice``."""
    source, tap = unpack_backbone(arch)
    if isinstance(source, nn.Module):
        net = source
    else:
        net = create_library_model(*split_library_arch(source), drop_path)
        drop_path = 0.0
    cls = LibraryViTClassifier if is_vit(net) else LibraryClassifier
    return cls(source, num_classes, cifar_stem, drop_path=drop_path, mix_head=mix_head, tap=tap, net=net)


def fitting_image_size(classifier: Classifier, image_side: int) -> Optional[int]:
    """The image size to use instead of a data set's native ``image_side`` when a library
    backbone cannot take it (its fixed size; else the smallest size whose tap map is 2x2), or
    None when it can. Used only where the user gave no --img-size."""
    fixed = getattr(classifier, "fixed_image_size", None)
    if fixed is not None:
        return None if image_side == fixed else fixed
    try:
        check_backbone_image_size(classifier, image_side)
        return None
    except UsageError:   # the tap map is below 2x2 (or the trunk cannot run) at this size
        need = 2 * classifier.tap_stride
        return need if need > image_side else None


def check_backbone_image_size(classifier: Classifier, image_side: int) -> None:
    """One-line UsageErrors for an image size a library backbone cannot take: a fixed-size model
    at another size, or a tap map smaller than 2x2."""
    fixed = getattr(classifier, "fixed_image_size", None)
    if fixed is not None and image_side != fixed:
        raise UsageError(f"--arch {classifier.arch} takes {fixed} px images only (its position table is learned "
                         f"at that size), got {image_side}: pass --img-size {fixed}")
    if not hasattr(classifier, "tap_side"):
        return
    try:
        side = classifier.tap_side(image_side)
    except RuntimeError as exc:
        raise UsageError(f"--arch {classifier.arch} cannot take {image_side} px images "
                         f"({' '.join(str(exc).split())[:120]}); pass a larger --img-size") from None
    if side < 2:
        need = 2 * classifier.tap_stride
        raise UsageError(f"--arch {classifier.arch}: at {image_side} px its generator tap (stride "
                         f"{classifier.tap_stride}) is {side}x{side}, smaller than 2x2; "
                         f"pass --img-size {need} or more, or an earlier --tap")


__all__ = ["BackboneChoice", "LibraryClassifier", "LibraryViTClassifier", "TrunkLayout", "build_library_classifier",
           "check_backbone_image_size", "fitting_image_size", "read_layout"]
