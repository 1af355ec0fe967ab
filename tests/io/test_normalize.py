from __future__ import annotations

import numpy as np
import pytest

from rcmed.errors import RCMedInputError
from rcmed.io.image import MedicalImage, Modality
from rcmed.io.normalize import CT_WINDOWS, normalize


def _img(arr, modality, **meta):
    return MedicalImage(array=np.asarray(arr), modality=modality, metadata=meta)


def test_ct_named_windows_map_level_to_half():
    hu = np.array([[-1000, -160, 40, 240, 3000]], np.int16)
    out = normalize(_img(hu, Modality.CT), window="soft_tissue")  # level 40, width 400
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    lung = normalize(_img(np.array([[-600.0, -1350.0, 150.0]]), Modality.CT), window="lung")
    np.testing.assert_allclose(lung, [[0.5, 0.0, 1.0]], atol=1e-6)
    assert set(CT_WINDOWS) >= {"soft_tissue", "lung", "bone", "brain"}
    brain = normalize(_img(np.array([[0.0, 40.0, 80.0]]), Modality.CT), window="brain")
    np.testing.assert_allclose(brain, [[0.0, 0.5, 1.0]], atol=1e-6)
    custom = normalize(_img(np.array([[100.0]]), Modality.CT), window=(100.0, 50.0))
    np.testing.assert_allclose(custom, [[0.5]])


def test_ct_auto_uses_header_window_then_tissue_percentiles():
    hu = np.linspace(-1000, 1000, 101, dtype=np.float32)[None]
    with_header = normalize(_img(hu, Modality.CT, window_center=0.0, window_width=200.0))
    assert with_header[0, 50] == pytest.approx(0.5) and with_header[0, 40] == 0.0
    rng = np.random.default_rng(0)
    body = np.concatenate([np.full(5000, -1000.0), rng.normal(50, 20, 5000)]).astype(np.float32)[None]
    auto = normalize(_img(body, Modality.CT))
    # air does not squeeze the tissue range: tissue spans most of [0, 1]
    tissue = auto[0, 5000:]
    assert tissue.max() - tissue.min() > 0.9 and np.all(auto[0, :5000] == 0.0)


def test_unknown_window_is_clear_error():
    with pytest.raises(RCMedInputError, match="unknown CT window 'liverish'"):
        normalize(_img(np.zeros((2, 2)), Modality.CT), window="liverish")


def test_mr_percentile_ignores_background_and_clips_outliers():
    rng = np.random.default_rng(1)
    x = np.zeros((100, 100), np.float32)
    x[20:80, 20:80] = rng.uniform(100, 200, (60, 60))
    x[50, 50] = 1e6  # a hot outlier must not crush the contrast
    out = normalize(_img(x, Modality.MRI))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.median(out[20:80, 20:80]) == pytest.approx(0.5, abs=0.05)


def test_pet_starts_at_zero_uptake():
    x = np.array([[0.0, 1.0, 2.0, 4.0]] * 50, np.float32)
    out = normalize(_img(x, Modality.PET))
    assert out[0, 0] == 0.0 and out[0, 2] == pytest.approx(0.5)


def test_rgb_modalities_unchanged():
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = MedicalImage(array=rgb, modality=Modality.DERMOSCOPY, rgb=True)
    np.testing.assert_allclose(normalize(img), rgb / 255.0, atol=1e-6)


def test_monochrome1_xray_is_inverted():
    x = np.tile(np.arange(100, dtype=np.float32), (10, 1))
    plain = normalize(_img(x, Modality.XRAY, photometric="MONOCHROME2"))
    inverted = normalize(_img(x, Modality.XRAY, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1.0 - plain)


def test_constant_image_does_not_divide_by_zero():
    out = normalize(_img(np.full((4, 4), 7.0), Modality.MRI))
    assert np.all(out == 0.0) and np.isfinite(out).all()
