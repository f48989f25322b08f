"""The released AdAutoMix mix block, transcribed line by line without mmcv, to hold the engine's
generator to it (tests/test_generator.py) and to run both from the same weights.

Source: OpenMixup (github.com/Westlake-AI/openmixup, commit 37e1372),
``openmixup/models/heads/adaptive_mask.py``, class ``AdaptiveMask`` (``type='AdaptiveMask'`` in
every released AdAutoMix config), and the two callers in ``openmixup/models/classifiers/adautomix.py``
(``AdAutoMix.mixup`` for two images, ``AdAutoMix.co_mixup`` for three or more). Kept as released:
the order of the projections (value first, then per slot query and key), the fp32 casts, the
attention against the sum of the other slots' keys as a sum of products (``co_attn +=``), the
division by sqrt(d) after the product (``use_scale``), the softmax over keys, the joint
``F.interpolate(scale_factor=...)`` of the [B, N, h, w] stack and the softmax over slots. Left
out: the inf clamps and the NaN fallback (never taken on finite inputs), the debug plots and the
random upsampling mode (``unsampling_mode='None'``, used by no config).

mmcv's ``ConvModule(norm_cfg=None)`` is Conv2d(bias=True) + ReLU; with ``norm_cfg=BN`` it is
Conv2d(bias=False) + BatchNorm2d + ReLU (its default order conv, norm, act). ``init_weights``
is ``normal_init(std=0.01, bias=0)`` on every Conv2d and ``constant_init(1, 0)`` on norms.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _f32(t: torch.Tensor) -> torch.Tensor:
    """The released ``.type(torch.float32)``; float64 stays float64 so that a test can compare in
    double precision (the cast exists for half inputs)."""
    return t if t.dtype == torch.float64 else t.type(torch.float32)


class ConvModule(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: bool):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class AdaptiveMask(nn.Module):
    def __init__(self, in_channel=256, reduction=2, lam_concat=True, use_scale=True,
                 unsampling_mode="nearest", scale_factor=4, norm=False):
        super().__init__()
        self.in_channel = int(in_channel)
        self.inter_channels = max(in_channel // reduction, 1)
        self.lam_concat = bool(lam_concat)
        self.use_scale = bool(use_scale)
        self.upsample_mode = str(unsampling_mode)
        self.scale_factor = scale_factor
        self.qk_channel = self.in_channel + 1 if self.lam_concat else self.in_channel
        self.conv_q = ConvModule(self.qk_channel, self.inter_channels, norm)
        self.conv_k = ConvModule(self.qk_channel, self.inter_channels, norm)
        self.conv_v = nn.Conv2d(in_channels=self.qk_channel, out_channels=1, kernel_size=1, stride=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias) if m.bias is not None else None
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_from_engine(self, gen) -> "AdaptiveMask":
        """Copy a `MaskGenerator`'s weights (query -> conv_q, key -> conv_k, value -> conv_v)."""
        with torch.no_grad():
            for mine, theirs in ((self.conv_q, gen.query), (self.conv_k, gen.key)):
                mine.load_state_dict(theirs.state_dict())
            self.conv_v.load_state_dict(gen.value.state_dict())
        return self

    def caculate_attention(self, f_map, f_map_):
        b, c, w, h = f_map.size()
        q, k = self.conv_q(f_map).view(b, self.inter_channels, -1).permute(0, 2, 1), \
            self.conv_k(f_map).view(b, self.inter_channels, -1)
        q_, k_ = self.conv_q(f_map_).view(b, self.inter_channels, -1).permute(0, 2, 1), \
            self.conv_k(f_map_).view(b, self.inter_channels, -1)
        attn = torch.matmul(_f32(q), _f32(k_))
        attn_ = torch.matmul(_f32(q_), _f32(k))
        if self.use_scale:
            attn /= self.inter_channels ** 0.5
            attn_ /= self.inter_channels ** 0.5
        return attn.softmax(dim=-1), attn_.softmax(dim=-1)

    def co_caculate_attention(self, feature_map):
        b, c, w, h = feature_map[0].size()
        q, k, attn = [], [], []
        for i in range(0, len(feature_map)):
            q.append(self.conv_q(feature_map[i]).view(b, self.inter_channels, -1).permute(0, 2, 1))
            k.append(self.conv_k(feature_map[i]).view(b, self.inter_channels, -1))
        for i in range(0, len(q)):
            b, c, p = k[0].size()
            co_attn = torch.zeros(b, p, p, dtype=_f32(q[i]).dtype, device=q[i].device)
            for j in range(0, len(k)):
                if i != j:
                    co_attn += torch.matmul(_f32(q[i]), _f32(k[j]))
            if self.use_scale:
                co_attn /= self.inter_channels ** 0.5
            attn.append(co_attn.softmax(dim=-1))
        return attn

    def normal_mix(self, f_map, f_map_, lam):
        b, c, w, h = f_map.size()
        if self.lam_concat:
            lam_block = torch.zeros([b, 1, h, w]).to(f_map)
            lam_block[:] = lam
            f_map = torch.cat([f_map, lam_block], dim=1)
            f_map_ = torch.cat([f_map_, 1 - lam_block], dim=1)
        v, v_ = f_map, f_map_
        v = self.conv_v(v).view(b, 1, -1).permute(0, 2, 1)
        v_ = self.conv_v(v_).view(b, 1, -1).permute(0, 2, 1)
        attn, attn_ = self.caculate_attention(f_map, f_map_)
        mask_lam = torch.matmul(attn, _f32(v)).view(b, 1, h, w)
        mask_lam_ = torch.matmul(attn_, _f32(v_)).view(b, 1, h, w)
        return torch.cat([mask_lam, mask_lam_], dim=1)

    def co_mix(self, feature_map, lam):
        b, c, w, h = feature_map[0].size()
        feature_map = list(feature_map)
        if self.lam_concat:
            for i in range(0, len(feature_map)):
                lam_block = torch.zeros([b, 1, h, w]).to(feature_map[i])
                lam_block[:] = lam[i]
                feature_map[i] = torch.cat([feature_map[i], lam_block], dim=1)
        v = []
        for i in range(0, len(feature_map)):
            v.append(self.conv_v(feature_map[i]).view(b, 1, -1).permute(0, 2, 1))
        attn = self.co_caculate_attention(feature_map)
        masks = [torch.matmul(attn[i], _f32(v[i])).view(b, 1, h, w) for i in range(len(v))]
        return torch.cat(masks, dim=1)

    def forward(self, f_maps, lam):
        if len(f_maps) == 2:
            mask = self.normal_mix(f_maps[0], f_maps[1], lam)
        else:
            mask = self.co_mix(f_maps, lam)
        mask = F.interpolate(mask, scale_factor=self.scale_factor, mode=self.upsample_mode)
        return {"mask": mask.softmax(dim=1)}


def released_generator_mix(block: AdaptiveMask, feature, x, index, lam):
    """The generator-side ("mb") mix of the released classifier: ``AdAutoMix.mixup`` for N = 2
    (slot 0 the batch itself, lambda a scalar), ``AdAutoMix.co_mixup`` for N >= 3. index: [N, B];
    lam: [N] (for N = 2 the released code passes lam[0] and uses 1 - lam[0] for the partner).
    Returns (x_mix, masks)."""
    n = index.shape[0]
    if n == 2:
        masks = block([feature, feature[index[1]]], lam[0])["mask"]
        x_mix = x * masks[:, 0, :, :].unsqueeze(1) + x[index[1], :] * masks[:, 1, :, :].unsqueeze(1)
        return x_mix, masks
    masks = block([feature[index[i], :] for i in range(n)], [lam[i] for i in range(n)])["mask"]
    x_mix = torch.zeros_like(x)
    for i in range(n):
        x_mix = x_mix + x[index[i], :] * masks[:, i, :, :].unsqueeze(1)
    return x_mix, masks
