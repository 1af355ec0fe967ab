"""The closed vision-language loop: what flows between the mask decoder and the language model.

- `SegQuery` turns the LM's hidden state at a target's `<region>` slot into a decoder query
  (language guides pixels).
- `RegionPooler` pools the multi-scale visual features under a predicted mask into one region
  embedding in the LM's space (vision informs language); the next round writes it into the
  `<region>` slot, the LM re-reads it and emits a refined state, and the decoder re-queries with
  that state plus the previous mask as a dense prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegQuery(nn.Module):
    """(K, hidden) LM states -> (K, dim) decoder queries."""

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class RegionPooler(nn.Module):
    """Mask-weighted average of every feature level, concatenated and projected to the LM width.

    masks: (K, 1, S, S) probabilities in [0, 1]; levels: list of (B, C_i, H_i, W_i);
    image_index: (K,) image of each mask. Returns (K, hidden).
    """

    def __init__(self, level_dims: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(sum(level_dims), hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def pooled(self, masks: torch.Tensor, levels: list[torch.Tensor], image_index: torch.Tensor) -> torch.Tensor:
        parts = []
        for feat in levels:
            m = F.interpolate(masks, size=feat.shape[-2:], mode="bilinear", align_corners=False)  # (K, 1, h, w)
            f = feat[image_index]  # (K, C, h, w)
            parts.append((f * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1e-4))
        return torch.cat(parts, dim=1)

    def forward(self, masks: torch.Tensor, levels: list[torch.Tensor], image_index: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(masks, levels, image_index))
