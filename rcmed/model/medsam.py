"""LiteMedSAM assembled from RCMed's own modules: encoder, prompt encoder, mask decoder.

This is the box-prompted medical SAM the default model starts from, and the oracle baseline
("LiteMedSAM given the true box") that evaluation compares against. It only wires parts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rcmed.model.decoder import DecoderOutput, MaskDecoder
from rcmed.model.prompt import PromptEncoder
from rcmed.model.vision import TinyViT, TinyViTConfig, VisionFeatures

MAX_COMPONENT_BOXES = 1024  # at most this many components of a predicted mask get a box each (a bound on the work)

# Parameters RCMed adds to SAM's decoder; everything else maps one to one onto the checkpoint.
RCMED_DECODER_KEYS = ("fine_skip.", "presence_head.", "box_head.")


def build_sam_parts(cfg: TinyViTConfig) -> tuple[TinyViT, PromptEncoder, MaskDecoder]:
    """Encoder, prompt encoder and decoder sized for `cfg` (LiteMedSAM's sizes for the default)."""
    emb = cfg.img_size // 4
    big = cfg.neck_dim == 256
    return (TinyViT(cfg), PromptEncoder(cfg.neck_dim, (emb, emb), (cfg.img_size, cfg.img_size)),
            MaskDecoder(cfg.neck_dim, fine_dim=cfg.embed_dims[1], mlp_dim=2048 if big else cfg.neck_dim * 2,
                        num_heads=8 if big else 4))


def load_litemedsam_into(module: nn.Module, path: str | Path | None = None) -> None:
    """Load the LiteMedSAM checkpoint into a module holding `image_encoder`, `prompt_encoder` and
    `mask_decoder`; every checkpoint tensor must land, and only RCMed's additions may stay new."""
    from rcmed.model.pretrained import load_litemedsam

    missing, unexpected = module.load_state_dict(load_litemedsam(Path(path) if path else None), strict=False)
    sam = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    added = tuple("mask_decoder." + p for p in RCMED_DECODER_KEYS)
    bad = [k for k in missing if k.startswith(sam) and not k.startswith(added)]
    if bad or unexpected:
        raise RuntimeError(f"LiteMedSAM checkpoint does not map onto the modules: missing {bad[:5]}, unexpected {unexpected[:5]}")


class LiteMedSAM(nn.Module):
    def __init__(self, vision: TinyViTConfig | None = None) -> None:
        super().__init__()
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam_parts(vision or TinyViTConfig())

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "LiteMedSAM":
        """Build and load the LiteMedSAM checkpoint (fetched and verified on first use)."""
        model = cls()
        load_litemedsam_into(model, path)
        return model.eval()

    def encode(self, image: torch.Tensor) -> VisionFeatures:
        """image (B, 3, 256, 256) in [0, 1] -> features (encode once, prompt many times)."""
        return self.image_encoder(image)

    def segment_boxes(self, features: VisionFeatures, boxes: torch.Tensor) -> DecoderOutput:
        """boxes (N, 4) pixel x0, y0, x1, y1 in the 256 input, one per target of image 0 (or of
        image i when B == N) -> masks (N, 1, 256, 256) logits."""
        sparse, dense = self.prompt_encoder(None, boxes[:, None, :], None)
        return self.mask_decoder(features.embedding, self.prompt_encoder.get_dense_pe(), sparse, dense)

    def segment_components(self, features: VisionFeatures, mask: torch.Tensor, min_fraction: float = 0.0,
                           max_boxes: int | None = MAX_COMPONENT_BOXES, chunk: int = 64) -> torch.Tensor | None:
        """One box prompt per connected component of `mask` (S, S) bool in model-input pixels (components under
        `min_fraction` of the largest left out; at most the `max_boxes` largest, None: all), decoded on image 0 of
        `features` `chunk` boxes at a time -> (S, S) mask logits, the maximum over the boxes; None when the mask
        is empty. The tight box of each part is what LiteMedSAM was trained on (a box per object); one box
        around many objects (a hundred nuclei, two lungs) is not."""
        import numpy as np
        from scipy import ndimage as ndi

        labels, n = ndi.label(mask.cpu().numpy().astype(bool))
        if n == 0:
            return None
        sizes = np.bincount(labels.ravel())[1:]
        keep = [i for i in np.argsort(-sizes, kind="stable")[:max_boxes or n] if sizes[i] >= min_fraction * sizes.max()]
        slices = ndi.find_objects(labels)
        boxes = torch.tensor([[slices[i][1].start, slices[i][0].start, slices[i][1].stop - 1, slices[i][0].stop - 1]
                              for i in keep], dtype=torch.float32)
        best = None
        for i in range(0, len(boxes), chunk):
            logits = self.segment_boxes(features, boxes[i:i + chunk]).masks[:, 0].amax(dim=0)
            best = logits if best is None else torch.maximum(best, logits)
        return best
