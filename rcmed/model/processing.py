"""Pre- and post-processing between user data and the model (kept apart from the model, as in
transformers' processors): image resizing and padding, prompt/answer tokenisation with visual and
region slots, target tensors for training, and mask post-processing back to the source pixels.

Image geometry (LiteMedSAM's convention): the longest side is resized to S and the image padded
bottom/right to S x S; masks come back by cropping the padding and resizing to the source size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rcmed.model.config import SPECIAL_TOKENS
from rcmed.model.vision import VisionFeatures

SEG, REGION, IMAGE = "<seg>", "<region>", "<image>"


@dataclass
class ImageGeometry:
    """How a source image of `source_hw` became the S x S model input: resized to `resized_hw`."""

    source_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    size: int


def prepare_image(image: np.ndarray, size: int) -> tuple[torch.Tensor, ImageGeometry]:
    """(H, W) or (H, W, 3) float in [0, 1] -> ((3, S, S) tensor, geometry)."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if x.ndim == 2:
        x = x[None].expand(3, -1, -1)
    else:
        x = x[..., :3].permute(2, 0, 1)
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    out = torch.zeros(3, size, size)
    out[:, :nh, :nw] = x.clamp(0, 1)
    return out, ImageGeometry((int(h), int(w)), (nh, nw), size)


def prepare_mask(mask: np.ndarray, geom: ImageGeometry) -> torch.Tensor:
    """(H, W) bool -> (S, S) float {0, 1} in model-input pixels."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=geom.resized_hw, mode="bilinear", align_corners=False)[0, 0]
    out = torch.zeros(geom.size, geom.size)
    out[: geom.resized_hw[0], : geom.resized_hw[1]] = (m >= 0.5).float()
    return out


def box_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(S, S) {0,1} -> (4,) x0, y0, x1, y1 normalised to [0, 1] of S (zeros if empty)."""
    s = mask.shape[-1]
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    if ys.numel() == 0:
        return torch.zeros(4)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() / s


def box_prompt_pixels(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(K, 4) predicted boxes normalised to [0, 1] (x0, y0, x1, y1, end-exclusive as `box_from_mask`) -> (K, 4)
    box prompts in model-input pixels of an S = `size` square: corners outward to whole pixels, inclusive ends,
    clamped to [0, S - 1] (what `Predictor` and the decoder stage give LiteMedSAM's decoder or ours)."""
    boxes = boxes.float() * size
    return torch.cat([boxes[:, :2].floor(), (boxes[:, 2:] - 1).ceil()], dim=1).clamp(0, size - 1)


def source_logits(logits: torch.Tensor, geom: ImageGeometry) -> torch.Tensor:
    """(..., S, S) model-input logits -> (..., H, W) float logits in source pixels (padding cropped)."""
    nh, nw = geom.resized_hw
    lead = logits.shape[:-2]
    crop = logits[..., :nh, :nw].float().reshape(-1, 1, nh, nw)
    up = F.interpolate(crop, size=geom.source_hw, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *geom.source_hw)


def postprocess_mask(logits: torch.Tensor, geom: ImageGeometry, cut: float = 0.0) -> np.ndarray:
    """(S, S) logits -> (H, W) bool in source pixels: the pixels whose logit is above `cut`."""
    return (source_logits(logits, geom) > cut).cpu().numpy()


def box_to_source(box: torch.Tensor, geom: ImageGeometry) -> list[int]:
    """Normalised model-input box -> [x0, y0, x1, y1] inclusive source pixels."""
    s = geom.size
    sy = geom.source_hw[0] / geom.resized_hw[0]
    sx = geom.source_hw[1] / geom.resized_hw[1]
    x0, y0, x1, y1 = (box.float() * s).tolist()
    h, w = geom.source_hw
    return [int(np.clip(round(x0 * sx), 0, w - 1)), int(np.clip(round(y0 * sy), 0, h - 1)),
            int(np.clip(round(x1 * sx) - 1, 0, w - 1)), int(np.clip(round(y1 * sy) - 1, 0, h - 1))]


class Processor:
    """Tokenises prompts and answers. Sequence layout:
    `<image> x n_visual` `User: {prompt}` `\\nAssistant: ` `{answer with <seg><region> per target}` `eos`.
    Each `<seg>` in an answer is followed by a `<region>` slot whose hidden state drives the
    decoder and whose embedding receives the region feedback in later loop rounds."""

    def __init__(self, tokenizer, n_visual: int) -> None:
        self.tok = tokenizer
        self.n_visual = n_visual
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self.seg_id = tokenizer.convert_tokens_to_ids(SEG)
        self.region_id = tokenizer.convert_tokens_to_ids(REGION)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the image slots and the user's prompt. A special token typed into a prompt
        (`<image>`, `<seg>`, `<region>`, `<box>`) is escaped to plain text ("‹seg>"), never interpreted:
        it would otherwise open an image slot or a fake target."""
        for t in SPECIAL_TOKENS:
            prompt = prompt.replace(t, "\u2039" + t[1:])
        text = f"User: {prompt.strip()}\nAssistant: "
        return [self.image_id] * self.n_visual + self.tok(text, add_special_tokens=False).input_ids

    def encode(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels are -100 on the image and prompt; region slots are not predicted."""
        p = self.prompt_ids(prompt)
        a = self.tok(answer.replace(SEG, SEG + REGION), add_special_tokens=False).input_ids + [self.tok.eos_token_id]
        labels = [-100] * len(p) + [t if t != self.region_id else -100 for t in a]
        return p + a, labels

    def collate(self, items: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad to a batch: (input_ids, labels, attention_mask), each (B, L)."""
        n = max(len(i) for i, _ in items)
        pad = self.tok.pad_token_id
        ids = torch.full((len(items), n), pad, dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        att = torch.zeros((len(items), n), dtype=torch.long)
        for b, (i, lab) in enumerate(items):
            ids[b, : len(i)] = torch.tensor(i)
            labels[b, : len(lab)] = torch.tensor(lab)
            att[b, : len(i)] = 1
        return ids, labels, att


@dataclass
class Batch:
    """Training batch. K = number of `<region>` slots in `input_ids`, in batch then position order.
    target_masks (K, S, S) {0,1}; has_mask (K,) bool; target_boxes (K, 4) normalised; presence (K,) {0,1}."""

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    target_masks: torch.Tensor
    has_mask: torch.Tensor
    target_boxes: torch.Tensor
    presence: torch.Tensor
    features: VisionFeatures | None = None  # precomputed (cached) features of a frozen encoder


@dataclass
class Example:
    """One training example before batching: a normalised image, a prompt, an answer with one
    `<seg>` per target, and per target its source-pixel mask (None when absent) in `<seg>` order."""

    image: np.ndarray
    prompt: str
    answer: str
    masks: list[np.ndarray | None]


def build_batch(processor: Processor, examples: list[Example], size: int):
    """Examples -> `Batch` (images resized/padded to `size`)."""
    pix, items, tmasks, has, boxes, presence = [], [], [], [], [], []
    for ex in examples:
        x, geom = prepare_image(ex.image, size)
        pix.append(x)
        if ex.answer.count(SEG) != len(ex.masks):
            raise ValueError(f"answer has {ex.answer.count(SEG)} <seg> but {len(ex.masks)} masks: {ex.answer!r}")
        items.append(processor.encode(ex.prompt, ex.answer))
        for m in ex.masks:
            if m is None:
                tmasks.append(torch.zeros(size, size))
                has.append(False)
                boxes.append(torch.zeros(4))
                presence.append(0.0)
            else:
                t = prepare_mask(m, geom)
                tmasks.append(t)
                has.append(bool(t.any()))
                boxes.append(box_from_mask(t))
                presence.append(1.0)
    ids, labels, att = processor.collate(items)
    k = len(tmasks)
    return Batch(
        pixel_values=torch.stack(pix), input_ids=ids, labels=labels, attention_mask=att,
        target_masks=torch.stack(tmasks) if k else torch.zeros(0, size, size),
        has_mask=torch.tensor(has, dtype=torch.bool), target_boxes=torch.stack(boxes) if k else torch.zeros(0, 4),
        presence=torch.tensor(presence),
    )
