"""The classifier interface every backbone family implements (docs/algorithm.md, Networks).

A classifier is a trunk split into ``num_stages`` stages (stage 0 is the stem) with two linear
heads on the pooled features: ``head_one`` for clean images and ``head_mix`` for mixed ones.
The generator reads the trunk at its *tap*, the boundary before stage ``tap_stage``:

    state = forward_stages(x, 0, tap_stage)        # == stem_to_stage3(x)
    g_in  = tap_features(state)                    # [B, C_tap, h, w]: the generator's input
    z     = pool(forward_stages(state, tap_stage)) # == stage3_to_pooled(state): [B, feature_dim]

For the convolutional families (ResNet, ConvNeXt) the tap state *is* the generator's input and
``tap_features`` is the identity. Swin and DeiT need the step to call ``tap_features``: the
released Swin feeds the generator a LayerNorm of the merged map while the trunk continues from
the map itself, and DeiT's trunk continues with its class token, which the 14x14 map of patch
tokens cannot carry (see their modules). Stage boundaries are real tensors with the batch first
(ConvNeXt, ResNet, Swin: [B, C, h, w], Swin's a channels-last view of its NHWC activations;
DeiT: the token sequence [B, 1 + h*w, C]), so ManifoldMix can mix hidden states between stages.

The families (one subclass each) are the table in :mod:`.families`; ``build_classifier(arch,
num_classes, cifar_stem)`` builds the one ``ARCH_SPECS`` names for ``arch``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UsageError
from .specs import ARCH_SPECS


class Classifier(nn.Module):
    """Backbone + ``head_one`` + ``head_mix`` (each one nn.Linear on the pooled features).

    Subclasses take ``(arch, num_classes, cifar_stem, drop_path=0.0, mix_head=True)``, build their
    library's model for export (classmethod ``library_model(arch, num_classes, cifar_stem)``), set
    ``arch``, ``spec``, ``cifar_stem``, ``stage3_channels`` (channels of the generator's input),
    ``feature_dim`` and the heads, and implement ``_run_stage(i, h)`` and
    ``pool(h)``; they override ``tap_features`` and ``cam_map`` when their layout needs it.
    """

    num_stages = 5
    tap_stage = 4
    # ManifoldMix's mixing points: stage indices before which a hidden state may be mixed (the
    # input, after layer1 and after layer2 of a ResNet).
    mix_points = (0, 2, 3)
    # The state-dict prefix of the library model's keys ("" where the trunk keeps the library's
    # names at the top level), stripped by the export.
    trunk_prefix = ""
    # The library classifier's key where a model read from a library sets it (its replaced Linear).
    head_key = None

    @property
    def library_head(self) -> str:
        """The library classifier's state-dict prefix (``head_one`` goes there on export)."""
        return self.head_key or self.spec.head

    # ------------------------------------------------------------------ stages
    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_stages(self, h: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run stages ``start .. end - 1`` on ``h`` (images when ``start`` is 0); ``end`` None runs
        to the last stage, whose output is the trunk's feature map before pooling."""
        end = self.num_stages if end is None else end
        for i in range(start, end):
            h = self._run_stage(i, h)
        return h

    def pool(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Last stage's output -> [B, feature_dim]."""
        raise NotImplementedError

    def stem_to_stage3(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the tap state (the boundary before ``tap_stage``). The generator's input is
        ``tap_features(state)``; for the convolutional families the state itself."""
        return self.forward_stages(x, 0, self.tap_stage)

    def tap_features(self, state: torch.Tensor) -> torch.Tensor:
        """Tap state -> the generator's input [B, stage3_channels, h, w] (identity here)."""
        return state

    def stage3_to_pooled(self, state: torch.Tensor) -> torch.Tensor:
        """Tap state -> pooled features (the rest of the trunk, then pooling)."""
        return self.pool(self.forward_stages(state, self.tap_stage))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3_to_pooled(self.stem_to_stage3(x))

    def forward(self, x: torch.Tensor):
        """(head_one logits, head_mix logits); head_one logits alone without a mix head."""
        z = self.pooled(x)
        if self.head_mix is None:
            return self.head_one(z)
        return self.head_one(z), self.head_mix(z)

    # ------------------------------------------------------------------ Grad-CAM
    def cam_target(self) -> nn.Module:  # pragma: no cover - abstract
        """The module whose output activations and gradients Grad-CAM uses."""
        raise NotImplementedError

    def cam_map(self, activation: torch.Tensor) -> torch.Tensor:
        """``cam_target()``'s output (or its gradient) as a [B, C, h, w] map (identity here)."""
        return activation

    # ------------------------------------------------------------------ shared helpers
    def _make_heads(self, num_classes: int, trunc_normal: bool, mix_head: bool = True) -> None:
        """``head_one``/``head_mix``: nn.Linear's default init (torchvision's ResNet fc) or, for the
        transformer and ConvNeXt families, truncated normal std 0.02 with zero bias (their
        libraries' head init and the released configs' ``init_cfg``). ``mix_head=False`` leaves
        out ``head_mix`` (None): the baselines train one head on clean and mixed images alike."""
        self.head_one = nn.Linear(self.feature_dim, num_classes)
        self.head_mix = nn.Linear(self.feature_dim, num_classes) if mix_head else None
        if trunc_normal:
            for head in (self.head_one, self.head_mix):
                if head is None:
                    continue
                nn.init.trunc_normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    def _check_stem(self, cifar_stem: bool) -> None:
        if cifar_stem and not self.spec.cifar_stem:
            raise UsageError(f"--arch {self.arch} has no CIFAR stem: train it at {self.spec.image_size} px "
                             f"(--img-size {self.spec.image_size}, as its presets do) with --no-cifar-stem")


__all__ = ["Classifier", "ARCH_SPECS"]
