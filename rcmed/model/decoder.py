"""Mask decoder: SAM's two-way decoder (parameters map one to one onto LiteMedSAM's
`mask_decoder.*`) extended with what RCMed needs and SAM lacks:

- a target query per `<seg>` (language guides pixels): it joins the sparse prompt tokens, so the
  two-way transformer lets the words attend to the image and the image to the words;
- a skip path from the encoder's fine level (128², for cells and edges) into the upsampled mask
  features, zero-initialised so a fresh decoder reproduces LiteMedSAM exactly;
- heads for presence ("the target is not in this image" as a first-class answer) and box.

Shapes: image embedding (B, 256, 64, 64) -> masks (B, 1, 256, 256) logits in model-input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rcmed.model.transformer import TwoWayTransformer
from rcmed.model.vision import LayerNorm2d


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


@dataclass
class DecoderOutput:
    """Per target: `masks` (N, 1, 256, 256) logits, `iou` (N, 1) predicted quality, `presence`
    (N,) logit, `box` (N, 4) normalised (x0, y0, x1, y1) in [0, 1], `query` (N, C) the target
    token after the transformer (pooled back to the language side by the loop)."""

    masks: torch.Tensor
    iou: torch.Tensor
    presence: torch.Tensor
    box: torch.Tensor
    query: torch.Tensor


class MaskDecoder(nn.Module):
    def __init__(self, transformer_dim: int = 256, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, fine_dim: int = 128, depth: int = 2, mlp_dim: int = 2048,
                 num_heads: int = 8) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer = TwoWayTransformer(depth, d, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, d)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2), LayerNorm2d(d // 4), nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2), nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        # RCMed additions (not in the checkpoint)
        self.fine_skip = nn.Conv2d(fine_dim, d // 8, kernel_size=1)
        nn.init.zeros_(self.fine_skip.weight)
        nn.init.zeros_(self.fine_skip.bias)
        self.presence_head = MLP(d, d, 1, 2)
        self.box_head = MLP(d, d, 4, 3)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                fine: torch.Tensor | None = None, image_index: torch.Tensor | None = None) -> DecoderOutput:
        """image_embedding (B, C, 64, 64); image_pe (1, C, 64, 64); sparse (N, T, C) prompt tokens
        per target (target query first, then any point/box tokens); dense (N, C, 64, 64);
        fine (B, C_f, 128, 128) or None; image_index (N,) which image each target belongs to
        (default: target i uses image i, or image 0 when B == 1)."""
        n = sparse.shape[0]
        if image_index is None:
            image_index = torch.zeros(n, dtype=torch.long, device=sparse.device) if image_embedding.shape[0] == 1 \
                else torch.arange(n, device=sparse.device)
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = image_embedding[image_index] + dense
        pos = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src_out = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1: 1 + self.num_mask_tokens]
        query_out = hs[:, 1 + self.num_mask_tokens] if sparse.shape[1] else iou_out
        up = self.output_upscaling(src_out.transpose(1, 2).reshape(b, c, h, w))
        if fine is not None:
            up = up + F.interpolate(self.fine_skip(fine[image_index]), size=up.shape[-2:], mode="bilinear", align_corners=False)
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        bu, cu, hu, wu = up.shape
        masks = (hyper @ up.view(bu, cu, hu * wu)).view(bu, -1, hu, wu)
        iou = self.iou_prediction_head(iou_out)
        return DecoderOutput(masks=masks[:, :1], iou=iou[:, :1], presence=self.presence_head(query_out).squeeze(-1),
                             box=torch.sigmoid(self.box_head(query_out)), query=query_out)
