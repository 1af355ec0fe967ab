"""Training losses, each a small pure function; `rcmed_loss` weights and sums them.

Absent targets (presence 0) contribute only to the presence loss: no mask or box loss, so the
model is never taught that "absent" means "an empty mask by accident".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over (K, H, W) logits vs {0, 1} targets, mean over K."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def box_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of (K, 4) boxes x0, y0, x1, y1 (any consistent unit)."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(1)
    union = area_a + area_b - inter
    iou = inter / union.clamp_min(1e-7)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp_min(0).prod(1)
    return iou - (hull - union) / hull.clamp_min(1e-7)


def rcmed_loss(
    rounds: list[dict[str, torch.Tensor]],
    lm_loss: torch.Tensor,
    target_masks: torch.Tensor,
    has_mask: torch.Tensor,
    target_boxes: torch.Tensor,
    presence: torch.Tensor,
    consistency: torch.Tensor | None,
    weights,
) -> dict[str, torch.Tensor]:
    """rounds[t]: {"masks": (K, S, S) logits, "box": (K, 4), "presence": (K,) logits, "iou": (K,)}.
    target_masks (K, S, S) {0,1}; has_mask (K,) bool (present and annotated); presence (K,) {0,1}."""
    zero = lm_loss.new_zeros(())
    parts = {"lm": lm_loss, "mask_bce": zero, "mask_dice": zero, "box_l1": zero, "box_giou": zero, "presence": zero,
             "iou": zero, "consistency": consistency if consistency is not None else zero}
    n = max(len(rounds), 1)
    for r in rounds:
        if r["presence"].numel():
            parts["presence"] = parts["presence"] + F.binary_cross_entropy_with_logits(r["presence"], presence) / n
        if has_mask.any():
            m, t = r["masks"][has_mask], target_masks[has_mask]
            parts["mask_bce"] = parts["mask_bce"] + F.binary_cross_entropy_with_logits(m, t) / n
            parts["mask_dice"] = parts["mask_dice"] + dice_loss(m, t) / n
            pb, tb = r["box"][has_mask], target_boxes[has_mask]
            parts["box_l1"] = parts["box_l1"] + F.l1_loss(pb, tb) / n
            parts["box_giou"] = parts["box_giou"] + (1 - box_giou(pb, tb)).mean() / n
            with torch.no_grad():  # the quality head learns the IoU the mask actually reached (as in SAM)
                hard = (m > 0).float()
                inter = (hard * t).flatten(1).sum(1)
                actual = inter / (hard.flatten(1).sum(1) + t.flatten(1).sum(1) - inter).clamp_min(1.0)
            parts["iou"] = parts["iou"] + F.mse_loss(r["iou"][has_mask], actual) / n
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return {"loss": total, **{k: v.detach() for k, v in parts.items()}}
