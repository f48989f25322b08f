"""DeiT classifiers (timm ``VisionTransformer``; DeiT-S is ``deit_small_patch16_224``).

timm is an optional dependency (``pip install timm`` or ``pip install -e ".[timm]"``): only
these architectures import it, and its absence is a one-line UsageError naming the install.

The trunk adopts timm's modules and parameters under timm's names (``patch_embed``,
``cls_token``, ``pos_embed``, ``blocks``, ``norm``), so timm state dicts load with a key filter
and export is a key copy. Stages: 0 = patch embedding, class token and position embedding;
1..4 = blocks in four equal groups (3 each for the 12 of DeiT-S); the last stage ends with the
final LayerNorm. Boundaries are token sequences [B, 1 + h*w, C] (class token first).

The tap (the released ``out_indices=(5, 11)``): the tokens after block 6, without a norm, patch
tokens only, as a [B, C, 14, 14] map (``tap_features``). The trunk continues from the whole
sequence, class token included: a 14x14 map cannot carry it, which is why the step feeds the
generator ``tap_features(state)`` and not the state. Pooling is the class token after the final
norm (timm's ``global_pool='token'``, the released ``VisionTransformerClsHead``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..errors import UsageError
from .base import Classifier
from .specs import arch_spec

TIMM_HINT = 'pip install timm (or pip install -e ".[timm]")'


def import_timm():
    """timm, or a one-line UsageError naming the install."""
    try:
        import timm  # noqa: F401
        import timm.models.vision_transformer as vit
    except ImportError as exc:
        raise UsageError(f"DeiT architectures need timm, which does not import here ({exc}); {TIMM_HINT}") from None
    return vit


def build_deit(arch: str, drop_path: float):
    vit = import_timm()
    spec = arch_spec(arch)
    if spec.options:   # test variants: timm's class with narrow settings
        return vit.VisionTransformer(**spec.options, num_classes=0, drop_path_rate=drop_path)
    import timm
    return timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=0, drop_path_rate=drop_path)


class DeiTClassifier(Classifier):
    """timm ViT/DeiT trunk + two heads (see the module docstring).

    ``drop_path``: stochastic depth rate, linear over the blocks (timm's ``drop_path_rate``, the
    released setting); 0 by default (the run config passes the recipe's).
    """

    @classmethod
    def library_model(cls, arch: str, num_classes: int, cifar_stem: bool) -> nn.Module:
        """timm's VisionTransformer with a fresh head (DeiT has no CIFAR stem)."""
        net = build_deit(arch, 0.0)
        net.reset_classifier(num_classes)
        return net

    # The tap state: after stages 0..2, i.e. half the blocks (block 6 of DeiT-S's 12).
    tap_stage = 3

    def __init__(self, arch: str, num_classes: int, cifar_stem: bool = False, drop_path: float = 0.0,
                 mix_head: bool = True, net: Optional[nn.Module] = None, blocks_per_stage: Optional[int] = None,
                 spec=None):
        super().__init__()
        self.arch = arch
        self.spec = arch_spec(arch) if net is None else spec
        if net is None:
            self._check_stem(cifar_stem)
        elif cifar_stem:
            raise UsageError(f"--arch {arch} has no CIFAR stem: pass --no-cifar-stem")
        self.cifar_stem = False
        if net is None:
            net = build_deit(arch, drop_path)
        # The forward below is timm's for this configuration only; refuse any other.
        if (net.cls_token is None or getattr(net, "reg_token", None) is not None or net.no_embed_class
                or net.dynamic_img_size or net.global_pool != "token" or getattr(net, "attn_pool", None) is not None):
            raise UsageError(f"--arch {arch}: unsupported timm ViT configuration (need a class token, absolute "
                             "position table, token pooling, no register tokens)")
        for name in ("patch_embed", "pos_drop", "patch_drop", "norm_pre", "blocks", "norm", "fc_norm", "head_drop"):
            setattr(self, name, getattr(net, name))
        self.cls_token, self.pos_embed = net.cls_token, net.pos_embed
        self.grid = tuple(net.patch_embed.grid_size)
        depth = len(self.blocks)
        if blocks_per_stage is None:   # the released DeiT: four equal groups of blocks
            if depth % 4:
                raise ValueError(f"{arch}: {depth} blocks do not split into 4 stages")
            blocks_per_stage = depth // 4
        self.blocks_per_stage = blocks_per_stage
        self.num_stages = 1 + depth // blocks_per_stage
        self.stage3_channels = self.feature_dim = net.embed_dim
        self._make_heads(num_classes, trunc_normal=True, mix_head=mix_head)

    def _run_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i == 0:
            x = self.patch_embed(h)                                      # [B, P, C]
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.pos_drop(x + self.pos_embed)                       # timm's _pos_embed
            return self.norm_pre(self.patch_drop(x))
        k = self.blocks_per_stage
        for block in self.blocks[(i - 1) * k:i * k]:
            h = block(h)
        if i == self.num_stages - 1:
            h = self.norm(h)
        return h

    def _tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, 1 + h*w, C] -> patch tokens as [B, C, h, w] (class token dropped)."""
        b, _, c = tokens.shape
        return tokens[:, 1:].transpose(1, 2).reshape(b, c, *self.grid)

    def tap_features(self, state: torch.Tensor) -> torch.Tensor:
        """Tokens after block 6 -> [B, 384, 14, 14] (the released ``patch_token``)."""
        return self._tokens_to_map(state)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Normed tokens -> the class token [B, C] (then timm's fc_norm/head_drop: identities)."""
        return self.head_drop(self.fc_norm(h[:, 0]))

    def cam_target(self) -> nn.Module:
        """The last block. Its output is tokens [B, 1 + h*w, C]: ``cam_map`` drops the class token
        and reshapes the patch tokens (and their gradient) to [B, C, h, w]."""
        return self.blocks[-1]

    def cam_map(self, activation: torch.Tensor) -> torch.Tensor:
        return self._tokens_to_map(activation)
