from __future__ import annotations

import math

import numpy as np
import pytest

from rcmed.eval.metrics import (
    box_ap,
    box_iou,
    counting_error,
    dice,
    hd95,
    iou,
    match_instances,
    nsd,
    presence_metrics,
    referring_iou,
    text_metrics,
)


def square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0:r0 + size, c0:c0 + size] = True
    return m


def test_dice_iou_hand_computed_and_empty_rules():
    a, b = square((40, 40), 5, 5, 10), square((40, 40), 5, 10, 10)  # overlap 10 x 5
    assert dice(a, b) == pytest.approx(100 / 200)
    assert iou(a, b) == pytest.approx(50 / 150)
    empty = np.zeros((40, 40), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(a, empty) == 0.0 and dice(empty, a) == 0.0


def test_hd95_and_nsd_use_spacing_in_mm():
    a = square((60, 60), 20, 20, 20)
    shifted_x = square((60, 60), 20, 25, 20)  # 5 columns
    shifted_y = square((60, 60), 25, 20, 20)  # 5 rows
    assert hd95(a, a) == 0.0
    assert hd95(a, shifted_x, spacing=(2.0, 1.0)) == pytest.approx(5.0)   # columns are 1 mm
    assert hd95(a, shifted_y, spacing=(2.0, 1.0)) == pytest.approx(10.0)  # rows are 2 mm
    assert nsd(a, a, 1.0) == pytest.approx(1.0)
    assert nsd(a, shifted_x, 6.0, spacing=(1.0, 1.0)) == pytest.approx(1.0)
    assert 0.0 < nsd(a, shifted_x, 1.0, spacing=(1.0, 1.0)) < 1.0
    empty = np.zeros((60, 60), bool)
    assert hd95(empty, empty) == 0.0 and math.isinf(hd95(a, empty))
    assert nsd(empty, empty, 1.0) == 1.0 and nsd(a, empty, 1.0) == 0.0


def test_offset_discs_match_the_cross_checked_values():
    """shared/offline.md: two offset discs give Dice 0.9087 in every library."""
    yy, xx = np.mgrid[:64, :64]
    a = (yy - 32) ** 2 + (xx - 30) ** 2 <= 15**2
    b = (yy - 32) ** 2 + (xx - 33) ** 2 <= 15**2
    d = dice(a, b)
    assert d == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert hd95(a, b) == pytest.approx(3.0, abs=0.5)


def test_referring_giou_and_ciou():
    big = square((20, 20), 0, 0, 10)
    small = square((20, 20), 0, 0, 2)
    g, c = referring_iou([big, small], [big, square((20, 20), 0, 0, 4)])
    assert g == pytest.approx((1.0 + 4 / 16) / 2)
    assert c == pytest.approx((100 + 4) / (100 + 16))


def test_instance_matching_counts():
    true = np.zeros((30, 30), int)
    true[1:5, 1:5], true[10:15, 10:15], true[20:25, 1:5] = 1, 2, 3
    pred = np.zeros((30, 30), int)
    pred[1:5, 1:5] = 7       # exact match of 1
    pred[10:15, 10:15] = 3   # exact match of 2
    pred[20:25, 20:25] = 9   # false positive; true 3 missed
    m = match_instances(pred, true, 0.5)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3) and m.f1 == pytest.approx(2 / 3)
    assert m.ap == pytest.approx(0.5) and m.mean_matched_iou == pytest.approx(1.0)
    assert match_instances(np.zeros((5, 5), int), np.zeros((5, 5), int)).ap == 1.0


def test_boxes_counting_presence_text():
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)
    assert box_ap([[0, 0, 9, 9], [50, 50, 60, 60]], [0.9, 0.8], [[0, 0, 9, 9]]) == pytest.approx(1.0)
    assert box_ap([[50, 50, 60, 60], [0, 0, 9, 9]], [0.9, 0.8], [[0, 0, 9, 9]]) == pytest.approx(0.5)
    assert counting_error(35, 37) == (2, pytest.approx(2 / 37))
    acc, auc = presence_metrics([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert acc == 1.0 and auc == 1.0
    acc, auc = presence_metrics([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0])
    assert acc == 0.5 and auc == pytest.approx(0.75)
    t = text_metrics(["the liver is round"], ["the liver is round"])
    assert t["bleu"] == pytest.approx(100.0) and t["rouge_l"] == pytest.approx(1.0)


def test_description_facts_checks_position_shape_and_whole_number_counts():
    from rcmed.data.describe import RegionFacts
    from rcmed.eval.metrics import description_facts

    f = RegionFacts(name="nuclei", colour="red", present=True, grid_position="upper left", shape="oval", count=12)
    assert description_facts("The nuclei lie in the upper left; oval; 12 separate parts.", f) == {
        "position": True, "shape": True, "count": True}
    got = description_facts("It covers 1042 µm² (1120 pixels) in the centre, round.", f)
    assert got == {"position": False, "shape": False, "count": False}  # "12" inside 1120 is not a count


def test_aji_hand_computed():
    from rcmed.eval.metrics import aji

    t = np.zeros((10, 10), int)
    t[0:4, 0:4] = 1  # 16 px
    t[6:10, 6:10] = 2  # 16 px
    assert aji(t, t) == 1.0
    p = np.zeros((10, 10), int)
    p[0:4, 0:2] = 1  # half of nucleus 1: I 8, U 16
    p[0:2, 8:10] = 3  # a false nucleus of 4 px, never paired
    # nucleus 2 missed: its best predicted partner (IoU 0) still pairs, adding its union 16 + that partner's area
    # pairs: (1 -> 1): I 8, U 16; (2 -> 1 or 3, IoU 0): I 0, U 16 + 8 (pred 1) ... take argmax = first = pred 1
    # => I = 8, U = 16 + 24 = 40, unused pred 3 adds 4 -> 8 / 44
    assert abs(aji(p, t) - 8 / 44) < 1e-9
    assert aji(np.zeros_like(t), t) == 0.0
    assert aji(np.zeros_like(t), np.zeros_like(t)) == 1.0
