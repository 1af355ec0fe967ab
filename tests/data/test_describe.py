from __future__ import annotations

import re

import numpy as np
import pytest
from skimage.measure import label, regionprops

from rcmed.data.describe import describe, describe_instances
from rcmed.errors import InvalidMaskError, ShapeMismatchError

H = W = 256
YY, XX = np.mgrid[:H, :H]


def disc(r, c, radius):
    return (YY - r) ** 2 + (XX - c) ** 2 <= radius**2


def ellipse(r, c, a, b, angle_deg):
    t = np.deg2rad(angle_deg)
    x, y = XX - c, -(YY - r)  # y up, as on screen
    u = x * np.cos(t) + y * np.sin(t)
    v = -x * np.sin(t) + y * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def test_disc_in_upper_left_third_is_upper_left_and_round():
    d = describe(None, [disc(40, 40, 20)], ["cyst"])
    f = d.regions[0]
    assert f.grid_position == "upper left" and f.shape == "round" and f.boundary == "smooth"
    assert "upper left" in f.text and "round" in f.text
    assert "patient" not in f.text  # no orientation given: image terms only


def test_thin_ellipse_is_elongated_with_its_orientation():
    for angle, words in ((0, "horizontally"), (90, "vertically"), (45, "rising to the right"), (135, "falling to the right")):
        f = describe(None, [ellipse(128, 128, 80, 6, angle)], ["vessel"]).regions[0]
        assert f.shape == "elongated", angle
        assert abs((f.orientation_deg - angle + 90) % 180 - 90) < 3, (angle, f.orientation_deg)
        assert words in f.text


def test_shape_numbers_agree_with_regionprops():
    m = ellipse(120, 110, 50, 25, 30)
    f = describe(None, [m], ["x"]).regions[0]
    p = regionprops(label(m))[0]
    assert f.area_px == p.area
    assert f.eccentricity == pytest.approx(p.eccentricity, abs=2e-3)
    assert f.solidity == pytest.approx(p.solidity, abs=0.02)
    assert f.major_axis_px == pytest.approx(p.axis_major_length, rel=0.01)
    assert f.box == [p.bbox[1], p.bbox[0], p.bbox[3] - 1, p.bbox[2] - 1]


def test_two_touching_regions_are_adjacent():
    a = np.zeros((H, W), bool)
    b = np.zeros((H, W), bool)
    a[100:150, 50:100] = True
    b[100:150, 100:160] = True
    d = describe(None, [a, b], ["left lobe", "right lobe"])
    assert "adjacent to the right lobe" in d.regions[0].relations
    assert "adjacent to the left lobe" in d.regions[1].relations
    assert any("left of the right lobe" in r for r in d.regions[0].relations)


def test_inside_relation_and_share_of_parent():
    organ = disc(128, 128, 80)
    lesion = disc(128, 150, 10)
    d = describe(None, [organ, lesion], ["liver", "lesion"])
    les = d.regions[1]
    assert les.parent == "liver" and "inside the liver" in les.relations
    assert les.share_parent == pytest.approx(lesion.sum() / organ.sum(), abs=1e-4)
    assert "containing the lesion" in d.regions[0].relations


def test_37_separated_blobs_are_counted():
    lab = np.zeros((H, W), np.int32)
    rng = np.random.default_rng(0)
    k = 0
    for i in range(7):
        for j in range(6):
            if k == 37:
                break
            k += 1
            lab[disc(20 + 36 * i + rng.integers(-3, 4), 20 + 40 * j + rng.integers(-3, 4), 6)] = k
    d = describe_instances(lab, "nuclei")
    assert d.regions[0].count == 37 and "37 nuclei" in d.text
    # the same blobs as one binary mask: 37 components, described as fragmented
    f = describe(None, [lab > 0], ["nuclei"]).regions[0]
    assert f.n_components == 37 and f.shape == "fragmented" and "37 parts" in f.text


def test_square_of_10mm_at_half_mm_spacing_is_100_mm2():
    m = np.zeros((H, W), bool)
    m[50:70, 80:100] = True  # 20 x 20 px x 0.5 mm = 10 x 10 mm
    f = describe(None, [m], ["patch"], spacing=(0.5, 0.5)).regions[0]
    assert f.area_mm2 == 100.0 and "100.0 mm²" in f.text and "400 pixels" in f.text


def test_empty_mask_is_absent_not_size_zero():
    d = describe(None, [np.zeros((H, W), bool)], ["tumour"])
    f = d.regions[0]
    assert not f.present and f.area_px == 0 and f.box is None
    assert "not present" in f.text or "no tumour" in f.text.lower()
    assert "0 pixels" not in f.text


def test_numbers_in_text_come_from_the_mask():
    m = disc(100, 180, 17)
    f = describe(None, [m], ["node"]).regions[0]
    assert f"{int(m.sum())} pixels" in f.text
    share = re.search(r"(\d+\.\d)% of the image", f.text).group(1)
    assert float(share) == pytest.approx(100 * m.sum() / m.size, abs=0.05)


def test_patient_terms_only_with_orientation():
    m = disc(128, 30, 15)  # image left; axial slice "PL": columns run to the patient's left
    with_o = describe(None, [m], ["kidney"], orientation="PL").regions[0]
    assert with_o.patient_position == "right" and "patient's right" in with_o.text
    assert describe(None, [m], ["kidney"]).regions[0].patient_position is None


def test_intensity_words_by_modality():
    img = np.full((H, W), 0.4, np.float32)
    m = disc(128, 128, 20)
    img[m] = 0.1
    assert describe(img, [m], ["cyst"], modality="ct").regions[0].intensity == "hypodense"
    assert describe(img, [m], ["cyst"], modality="ultrasound").regions[0].intensity == "hypoechoic"
    img[m] = 0.9
    assert describe(img, [m], ["mass"], modality="mri").regions[0].intensity == "hyperintense"


def test_all_zero_image_gets_no_intensity_statement():
    f = describe(np.zeros((H, W)), [disc(60, 60, 10)], ["x"], modality="ct").regions[0]
    assert f.intensity is None and f.contrast is None
    assert "hyper" not in f.text and "hypo" not in f.text


def test_irregular_lobulated_and_oval_shapes():
    oval = ellipse(128, 128, 60, 35, 0)
    assert describe(None, [oval], ["o"]).regions[0].shape == "oval"
    lobes = disc(128, 100, 30) | disc(128, 156, 30) | disc(90, 128, 30)
    assert describe(None, [lobes], ["l"]).regions[0].shape == "lobulated"
    rng = np.random.default_rng(0)
    ragged = disc(128, 128, 50) & (rng.random((H, W)) > 0.35)
    f = describe(None, [ragged], ["r"]).regions[0]
    assert f.shape in ("irregular", "fragmented") and f.boundary == "irregular"


def test_deterministic_for_a_seed_with_variety_across_seeds():
    masks = [disc(60, 60, 20), ellipse(180, 160, 60, 8, 20)]
    a = describe(None, masks, ["a", "b"], seed=3).text
    assert a == describe(None, masks, ["a", "b"], seed=3).text
    assert len({describe(None, masks, ["a", "b"], seed=s).text for s in range(8)}) > 3


def test_multi_scale_organ_and_300_nuclei():
    organ = ellipse(128, 128, 110, 70, 10)  # about half the image
    f = describe(None, [organ], ["liver"]).regions[0]
    assert f.share_image > 0.35
    lab = np.zeros((H, W), np.int32)
    k = 0
    for i in range(20):
        for j in range(15):
            k += 1
            r, c = 6 + 12.5 * i, 8 + 16 * j
            lab[(YY - r) ** 2 + (XX - c) ** 2 <= 12.7] = k  # ~40 px each
    d = describe_instances(lab, "nuclei", spacing=(0.0005, 0.0005))
    n = d.regions[0]
    assert n.count == 300 and 30 <= n.size_median_px <= 50 and n.distribution == "evenly spread"
    assert "µm²" in d.text


def test_clustered_and_border_distributions():
    lab = np.zeros((H, W), np.int32)
    for k in range(30):
        lab[disc(40 + (k % 6) * 6, 40 + (k // 6) * 6, 2)] = k + 1
    assert describe_instances(lab, "cells").regions[0].distribution == "clustered"
    lab = np.zeros((H, W), np.int32)
    for k in range(40):
        lab[disc(5, 6 + k * 6, 2)] = k + 1
    assert describe_instances(lab, "cells").regions[0].distribution == "along the image border"


def test_bad_input():
    with pytest.raises(ShapeMismatchError, match="mask 1"):
        describe(None, [disc(10, 10, 5), np.zeros((10, 10), bool)], ["a", "b"])
    with pytest.raises(InvalidMaskError, match="palette has 12 colours"):
        describe(None, [disc(10, 10, 5)] * 13, [f"t{i}" for i in range(13)])
    with pytest.raises(InvalidMaskError, match="not binary"):
        describe(None, [np.full((8, 8), 7)], ["a"])
    with pytest.raises(ShapeMismatchError, match="3 masks but 1 names"):
        describe(None, [disc(1, 1, 1)] * 3, ["a"])
    with pytest.raises(InvalidMaskError, match="must be integer"):
        describe_instances(np.zeros((4, 4), np.float32), "cells")
    assert not describe_instances(np.zeros((8, 8), np.int32), "cells").regions[0].present


def test_perimeter_matches_skimage():
    from skimage.measure import perimeter

    from rcmed.data.describe import _perimeter

    rng = np.random.default_rng(7)
    for m in (disc(60, 60, 25), ellipse(128, 128, 70, 20, 33), disc(128, 128, 40) & (rng.random((H, W)) > 0.2)):
        ours, _ = _perimeter(np.pad(m, 2))
        assert ours == pytest.approx(perimeter(m, neighborhood=4), rel=1e-9)
