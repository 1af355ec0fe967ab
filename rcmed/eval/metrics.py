"""Segmentation, detection, counting, presence and text metrics, each with its convention stated.

Conventions (the ones that make numbers comparable and honest):
- Dice / IoU: both masks empty -> 1.0 (nothing to find, nothing found); exactly one empty -> 0.0.
  Report empty-truth cases separately (presence metrics) rather than letting them inflate a mean.
- HD95 and NSD are in millimetres and take the pixel/voxel spacing in array-axis order; they come
  from MONAI (`compute_hausdorff_distance`, `compute_surface_dice` with sub-voxel surfaces). Both
  empty -> HD95 0.0 and NSD 1.0; exactly one empty -> HD95 inf and NSD 0.0.
- Referring segmentation: gIoU is the mean of per-sample IoUs; cIoU is total intersection over
  total union across samples.
- Instances: one-to-one matching of labels by IoU (Hungarian on IoU, pairs below the threshold
  never match), as in StarDist/Cellpose; AP at a threshold is TP / (TP + FP + FN).
- Presence AUROC is the Mann-Whitney statistic (ties count one half); undefined (nan) when only
  one class is present.
MONAI is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from rcmed.errors import ShapeMismatchError


def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if p.shape != t.shape:
        raise ShapeMismatchError("prediction", f"shape {p.shape} != reference shape {t.shape}")
    return p, t


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    p, t = _pair(pred, true)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    p, t = _pair(pred, true)
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def _monai_inputs(p: np.ndarray, t: np.ndarray):
    import torch

    return torch.from_numpy(p[None, None].astype(np.float32)), torch.from_numpy(t[None, None].astype(np.float32))


def hd95(pred: np.ndarray, true: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (pixels when spacing is None)."""
    from monai.metrics import compute_hausdorff_distance

    p, t = _pair(pred, true)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    a, b = _monai_inputs(p, t)
    sp = list(spacing) if spacing is not None else None
    return float(compute_hausdorff_distance(a, b, include_background=True, percentile=95, spacing=sp)[0, 0])


def nsd(pred: np.ndarray, true: np.ndarray, tolerance_mm: float, spacing: tuple[float, ...] | None = None) -> float:
    """Normalised surface Dice at `tolerance_mm` (sub-voxel surfaces, as in the surface-distance package)."""
    from monai.metrics import compute_surface_dice

    p, t = _pair(pred, true)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    a, b = _monai_inputs(p, t)
    sp = list(spacing) if spacing is not None else [1.0] * p.ndim
    return float(compute_surface_dice(a, b, class_thresholds=[tolerance_mm], include_background=True, spacing=sp,
                                      use_subvoxels=True)[0, 0])


def referring_iou(preds: list[np.ndarray], trues: list[np.ndarray]) -> tuple[float, float]:
    """(gIoU, cIoU) over samples."""
    ious, inter, union = [], 0, 0
    for p, t in zip(preds, trues, strict=True):
        p, t = _pair(p, t)
        ious.append(iou(p, t))
        inter += int((p & t).sum())
        union += int((p | t).sum())
    return float(np.mean(ious)) if ious else float("nan"), (inter / union if union else 1.0)


@dataclass(frozen=True)
class InstanceMatch:
    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float  # TP / (TP + FP + FN), StarDist's "accuracy" / the AP of cell-segmentation benchmarks
    mean_matched_iou: float


def _overlaps(pred_labels: np.ndarray, true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels shared by predicted i and true j (P, T), predicted areas (P,), true areas (T,)) of two label
    maps, background 0 left out."""
    p = np.asarray(pred_labels).astype(np.int64)
    t = np.asarray(true_labels).astype(np.int64)
    if p.shape != t.shape:
        raise ShapeMismatchError("prediction", f"label map shape {p.shape} != reference shape {t.shape}")
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    overlap = np.zeros((p_ids.size, t_ids.size), np.int64)
    np.add.at(overlap, (p_inv.ravel(), t_inv.ravel()), 1)
    pi, ti = p_ids != 0, t_ids != 0
    return overlap[np.ix_(pi, ti)], overlap.sum(axis=1)[pi], overlap.sum(axis=0)[ti]


def match_instances(pred_labels: np.ndarray, true_labels: np.ndarray, threshold: float = 0.5) -> InstanceMatch:
    """Match two label maps (0 background) one to one by IoU >= threshold."""
    inter, p_area, t_area = _overlaps(pred_labels, true_labels)
    inter = inter.astype(np.float64)
    ious = inter / (p_area[:, None] + t_area[None, :] - inter) if inter.size else inter
    n_pred, n_true = p_area.size, t_area.size
    tp = 0
    matched = []
    if ious.size:
        cost = -np.where(ious >= threshold, ious, 0.0)
        rows, cols = linear_sum_assignment(cost)
        good = ious[rows, cols] >= threshold
        tp = int(good.sum())
        matched = ious[rows, cols][good].tolist()
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * tp / (n_pred + n_true) if (n_pred + n_true) else 1.0
    ap = tp / (tp + fp + fn) if (tp + fp + fn) else 1.0
    return InstanceMatch(threshold, tp, fp, fn, precision, recall, f1, ap, float(np.mean(matched)) if matched else 0.0)


def aji(pred_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017) of two instance label maps (0 background).

    Each true nucleus is paired with the predicted one of largest IoU; AJI = sum of their
    intersections / (sum of their unions + areas of predicted nuclei never paired). Written here
    because neither MONAI nor scikit-image has it; it follows the reference definition."""
    inter, p_area, t_area = _overlaps(pred_labels, true_labels)
    if not t_area.size:
        return 1.0 if not p_area.size else 0.0
    if not p_area.size:
        return 0.0
    union = p_area[:, None] + t_area[None, :] - inter
    best = np.argmax(inter / np.maximum(union, 1), axis=0)  # per true nucleus, its best predicted one
    cols = np.arange(t_area.size)
    total_i = int(inter[best, cols].sum())
    total_u = int(union[best, cols].sum())
    unused = np.ones(p_area.size, bool)
    unused[best] = False
    total_u += int(p_area[unused].sum())
    return total_i / total_u if total_u else 1.0


def box_iou(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """IoU of two inclusive pixel boxes [x0, y0, x1, y1]."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = min(ax1, bx1) - max(ax0, bx0) + 1
    ih = min(ay1, by1) - max(ay0, by0) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda x0, y0, x1, y1: max(x1 - x0 + 1, 0) * max(y1 - y0 + 1, 0)  # noqa: E731
    union = area(ax0, ay0, ax1, ay1) + area(bx0, by0, bx1, by1) - inter
    return inter / union if union > 0 else 0.0


def box_ap(pred_boxes: list, scores: list[float], true_boxes: list, threshold: float = 0.5) -> float:
    """Average precision of scored boxes against reference boxes (all-point interpolation)."""
    if not true_boxes:
        return 1.0 if not pred_boxes else 0.0
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    used = set()
    tps = []
    for i in order:
        best, best_j = 0.0, -1
        for j, tb in enumerate(true_boxes):
            if j in used:
                continue
            v = box_iou(pred_boxes[i], tb)
            if v > best:
                best, best_j = v, j
        hit = best >= threshold
        if hit:
            used.add(best_j)
        tps.append(hit)
    tp = np.cumsum(tps)
    fp = np.cumsum([not x for x in tps])
    recall = tp / len(true_boxes)
    precision = tp / np.maximum(tp + fp, 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = max(mpre[k], mpre[k + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def counting_error(pred: int, true: int) -> tuple[int, float]:
    """(absolute error, relative error to the true count; inf when the true count is 0 and pred is not)."""
    err = abs(int(pred) - int(true))
    return err, (err / true if true else (0.0 if err == 0 else float("inf")))


def presence_metrics(probs: list[float], labels: list[int], threshold: float = 0.5) -> tuple[float, float]:
    """(accuracy at `threshold`, AUROC) of presence probabilities against 0/1 labels."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=int)
    acc = float(((p >= threshold).astype(int) == y).mean()) if y.size else float("nan")
    pos, neg = p[y == 1], p[y == 0]
    if pos.size == 0 or neg.size == 0:
        return acc, float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return acc, float(greater / (pos.size * neg.size))


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100) and mean ROUGE-L F1 (rouge-score, 0-1)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references, strict=True)]
    return {"bleu": float(bleu), "rouge_l": float(np.mean(rouge)) if rouge else float("nan")}


def description_facts(text: str, facts) -> dict[str, bool]:
    """Which facts the description engine can verify does `text` state correctly for one region?
    `facts` is a `rcmed.data.describe.RegionFacts` measured on the reference mask."""
    low = text.lower()
    out = {}
    if facts.grid_position:
        out["position"] = facts.grid_position in low
    if facts.shape:
        out["shape"] = facts.shape in low
    if facts.count is not None:  # the number as a whole word ("12", not the 12 inside "1042")
        out["count"] = re.search(rf"(?<![\d.]){facts.count}(?![\d.])", low) is not None
    return out
