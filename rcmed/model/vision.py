"""Hierarchical vision encoder: a TinyViT whose parameters map one to one onto LiteMedSAM's image
encoder (module names match the checkpoint's `image_encoder.*` keys), returning every stage.

Stages for a (B, 3, 256, 256) input in [0, 1] (LiteMedSAM's own preprocessing: longest side
resized to 256, padded bottom/right):
    stage0: MBConv blocks at 256² then a merge -> (B, 128, 128, 128)   fine: cells, edges
    stage1: attention blocks at 128² then merge -> (B, 160, 64, 64)
    stage2: attention blocks at 64² (merge keeps 64²) -> (B, 320, 64, 64)
    stage3: attention blocks at 64²               -> (B, 320, 64, 64)   coarse: organs
    neck:   1x1 + 3x3 conv with LayerNorm2d        -> (B, 256, 64, 64)   SAM image embedding

Why it is faster than the reference code with identical outputs: in eval mode every Conv+BN pair
runs as one convolution with folded weights (folded once, refreshed when weights change), window
attention uses `scaled_dot_product_attention` with the relative-position bias as its mask, and
convolutions run in channels-last layout. Training mode runs the unfused modules.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyViTConfig:
    """LiteMedSAM's TinyViT-5M by default; `tiny()` is a small random-init variant for tests."""

    img_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    neck_dim: int = 256

    @classmethod
    def tiny(cls) -> "TinyViTConfig":
        return cls(img_size=64, embed_dims=(16, 24, 32, 48), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 3),
                   window_sizes=(4, 4, 4, 4), neck_dim=32)


class Conv2d_BN(nn.Sequential):  # noqa: N801 - the checkpoint's name
    """Conv (no bias) + BatchNorm; in eval mode runs as one conv with folded weights."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))
        self._folded: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        c, bn = self.c, self.bn
        version = c.weight._version + bn.weight._version + bn.running_var._version  # type: ignore[attr-defined]
        if self._folded is None or self._folded[2] != version:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = (c.weight * scale[:, None, None, None]).detach().contiguous(memory_format=torch.channels_last)
            b = (bn.bias - bn.running_mean * scale).detach()
            self._folded = (w, b, version)
        return self._folded[0], self._folded[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.bn(self.c(x))
        w, b = self._fold()
        return F.conv2d(x, w, b, self.c.stride, self.c.padding, self.c.dilation, self.c.groups)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2d_BN(in_chans, embed_dim // 2), nn.GELU(), Conv2d_BN(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = Conv2d_BN(dim, hidden)
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2d_BN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """(B, C, H, W) or (B, H*W, C) -> (B, H'*W', out_dim). LiteMedSAM keeps the resolution when
    merging into 320/448/576 channels (stride 1), halves it otherwise."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2d_BN(dim, out_dim)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    def __init__(self, dim: int, depth: int, expand: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand) for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for blk in self.blocks:
            x = blk(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Window self-attention with a learned bias per head and per (|dy|, |dx|) offset."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.d = key_dim  # attn_ratio 1
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, num_heads * key_dim * 3)
        self.proj = nn.Linear(num_heads * key_dim, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, _ = x.shape
        h = self.num_heads
        qkv = self.qkv(self.norm(x)).view(b, n, h, -1).permute(0, 2, 1, 3)  # (B, heads, N, 3 * key_dim)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        # bias + scale * q k^T in one fused call: same math as the reference, no mask bookkeeping
        logits = torch.baddbmm(bias.repeat(b, 1, 1), q.reshape(b * h, n, -1), k.reshape(b * h, n, -1).transpose(1, 2),
                               alpha=self.key_dim**-0.5)
        out = torch.bmm(logits.softmax(dim=-1), v.reshape(b * h, n, -1))
        return self.proj(out.view(b, h, n, -1).transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float,
                 local_conv: int) -> None:
        super().__init__()
        self.resolution, self.window = resolution, window
        self.attn = Attention(dim, dim // num_heads, num_heads, (window, window))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, local_conv, 1, local_conv // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H*W, C)
        h, w = self.resolution
        b, n, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            y = self.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = self.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
            if pad_b or pad_r:
                y = y[:, :h, :w]
            y = y.reshape(b, n, c)
        x = x + y
        # (B, N, C) viewed as a channels-last (B, C, H, W): no copies around the depthwise conv
        x = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window: int,
                 mlp_ratio: float, local_conv: int, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio, local_conv)
                                     for _ in range(depth)])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for blk in self.blocks:
            x = blk(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


@dataclass
class VisionFeatures:
    """Encoder output. `levels`: fine to coarse, (B, C_i, H_i, W_i); `embedding`: (B, 256, 64, 64),
    the SAM image embedding the mask decoder attends to."""

    levels: list[torch.Tensor]
    embedding: torch.Tensor


class TinyViT(nn.Module):
    """Hierarchical encoder. Input (B, 3, S, S) float in [0, 1], S = `config.img_size`."""

    def __init__(self, config: TinyViTConfig) -> None:
        super().__init__()
        cfg = self.config = config
        dims, res = cfg.embed_dims, cfg.img_size
        self.patch_embed = PatchEmbed(cfg.in_chans, dims[0])
        # Stage resolutions: full, /2, /4, /4 (the last merge keeps the resolution).
        resolutions = [res, res // 2, res // 4, res // 4]
        self.embed_hw = res // 4
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            r = (resolutions[i], resolutions[i])
            down = None
            if i < len(cfg.depths) - 1:
                stride = 1 if resolutions[i + 1] == resolutions[i] else 2
                down = PatchMerging(r, dims[i], dims[i + 1], stride)
            if i == 0:
                self.layers.append(ConvLayer(dims[0], depth, cfg.mbconv_expand_ratio, down))
            else:
                self.layers.append(BasicLayer(dims[i], r, depth, cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                                              cfg.local_conv_size, down))
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.neck_dim, 1, bias=False), LayerNorm2d(cfg.neck_dim),
            nn.Conv2d(cfg.neck_dim, cfg.neck_dim, 3, padding=1, bias=False), LayerNorm2d(cfg.neck_dim),
        )

    @property
    def level_dims(self) -> tuple[int, ...]:
        d = self.config.embed_dims
        return (d[1], d[2], d[3], d[3])

    def forward(self, image: torch.Tensor) -> VisionFeatures:
        b = image.shape[0]
        x = self.patch_embed(image.contiguous(memory_format=torch.channels_last))
        levels = []
        s = self.embed_hw
        for i, layer in enumerate(self.layers):
            _, x = layer(x)
            # x after merge: (B, N, C) tokens at the next stage's resolution
            hw = self.config.img_size // 2 if i == 0 else s
            levels.append(x.transpose(1, 2).reshape(b, -1, hw, hw))
        emb = self.neck(levels[-1])
        return VisionFeatures(levels=levels, embedding=emb)
