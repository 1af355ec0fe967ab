from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.data.describe import describe
from rcmed.data.store import iter_records, read_sample
from rcmed.data.synth import GENERATORS, synth, synth_store
from rcmed.errors import RCMedInputError
from rcmed.io.normalize import normalize

ALL = sorted(GENERATORS)


@pytest.mark.parametrize("modality", ALL)
def test_every_modality_gives_a_tagged_image_with_geometry_and_aligned_masks(modality):
    p = synth(modality, 1)
    img = p.image
    assert img.modality.value == modality and img.spacing is not None and p.body_region
    assert p.masks or p.instances is not None
    for name, m in p.masks.items():
        assert m.shape == img.spatial_shape and m.dtype == bool and m.any(), name
    assert np.isfinite(normalize(img)).all()


def test_reproducible_by_seed():
    for m in ALL:
        a, b, c = synth(m, 7), synth(m, 7), synth(m, 8)
        np.testing.assert_array_equal(a.image.array, b.image.array)
        assert a.masks.keys() == b.masks.keys()
        assert not np.array_equal(a.image.array, c.image.array)


def test_ct_masks_sit_on_the_right_hounsfield_units():
    for seed in range(5):
        p = synth("ct", seed)
        hu = p.image.array.astype(np.float32)
        liver = p.masks["liver"] & ~p.masks.get("liver lesion", np.zeros_like(p.masks["liver"]))
        assert 45 < hu[liver].mean() < 80
        assert hu[p.masks["vertebra"]].mean() > 200
        assert hu[~p.masks["body"]].mean() < -950
        if "liver lesion" in p.masks:
            assert hu[p.masks["liver lesion"]].mean() < hu[liver].mean() - 15  # hypodense


def test_ct_liver_is_on_the_patients_right():
    p = synth("ct", 0)
    d = describe(normalize(p.image), [p.masks["liver"]], ["liver"], orientation=p.image.orientation)
    assert p.image.orientation == "PL" and "right" in d.regions[0].patient_position


def test_contrast_of_targets_follows_the_modality():
    us = synth("ultrasound", 0)
    x = us.image.array.astype(float)
    les = us.masks["breast lesion"]
    assert x[les].mean() < 0.5 * x[~les].mean()  # hypoechoic
    below = np.zeros_like(les)
    rows = np.nonzero(les.any(axis=1))[0]
    cols = np.nonzero(les.any(axis=0))[0]
    below[rows.max() + 5:, cols.min() + 3: cols.max() - 3] = True
    assert x[below].mean() < 0.6 * x[~les & ~below].mean()  # posterior acoustic shadowing
    pet = next(synth("pet", s) for s in range(20) if "hot lesions" in synth("pet", s).masks)
    assert pet.image.array[pet.masks["hot lesions"]].mean() > 3 * pet.image.array[pet.masks["body"]].mean()
    xr = synth("xray", 0)
    assert xr.image.array[xr.masks["right lung"]].mean() < xr.image.array[xr.masks["heart"]].mean()
    fu = synth("fundus", 0)
    lum = fu.image.array.astype(float).mean(axis=-1)
    assert lum[fu.masks["optic disc"]].mean() > 1.5 * lum[~fu.masks["optic disc"] & (lum > 10)].mean()


@pytest.mark.parametrize("modality", ["microscopy", "pathology"])
def test_instances_are_disjoint_and_counted(modality):
    for seed in range(4):
        p = synth(modality, seed)
        lab = p.instances
        ids = np.unique(lab)[1:]
        assert p.instance_target == "nuclei" and lab.dtype == np.int32
        np.testing.assert_array_equal(ids, np.arange(1, lab.max() + 1))  # 1..N, no gaps: count = max
        # each instance is (almost always) one connected piece
        pieces = [ndi.label(lab == k)[1] for k in ids[:40]]
        assert np.mean(np.array(pieces) == 1) > 0.9


def test_dense_microscopy_has_touching_nuclei():
    touching = 0
    for seed in range(10):
        lab = synth("microscopy", seed).instances
        a, b = lab[:, :-1], lab[:, 1:]
        touching += int(((a != b) & (a > 0) & (b > 0)).sum())
    assert touching > 0


def test_absent_targets_occur_and_are_named():
    for m in ("ct", "mri", "xray", "ultrasound", "pet", "endoscopy", "fundus", "dermoscopy"):
        phantoms = [synth(m, s, size=96) for s in range(30)]
        assert any(p.absent for p in phantoms), m
        for p in phantoms:
            assert not set(p.absent) & set(p.masks), m


def test_volumes_are_coherent_and_organs_end():
    p = synth("ct", 2, volume=True)
    assert p.image.is_volume and p.image.orientation == "SPL"
    liver = p.masks["liver"]
    per_slice = liver.reshape(liver.shape[0], -1).sum(axis=1)
    assert per_slice[0] == 0 and per_slice.max() > 1000  # the liver ends inside the volume
    k = int(np.argmax(per_slice))
    overlap = (liver[k] & liver[k + 1]).sum() / max(liver[k].sum(), 1)
    assert overlap > 0.85  # neighbouring slices show the same organ, not a new random shape
    mri = synth("mri", 0, volume=True)
    assert mri.image.is_volume and "brain" in mri.masks


def test_bad_requests():
    with pytest.raises(RCMedInputError, match="unknown modality"):
        synth("sonar", 0)
    with pytest.raises(RCMedInputError, match="3-D phantoms exist"):
        synth("fundus", 0, volume=True)
    with pytest.raises(RCMedInputError, match="size must be"):
        synth("ct", 0, size=100000)


def test_synth_store_all_modalities(tmp_path):
    n = synth_store(str(tmp_path / "s"), "all", 20, seed=1, size=64, progress=False)
    recs = list(iter_records(tmp_path / "s"))
    assert n == len(recs) == 20 and {r.modality for r in recs} == set(ALL)
    r = next(r for r in recs if r.modality == "microscopy")
    s = read_sample(tmp_path / "s", r)
    assert s.instances is not None and r.instance_target == "nuclei"
    res = CliRunner().invoke(app, ["data", "synth", "-m", "ct", "--n", "2", "--volume", "--size", "64", "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    assert len({r.case_id for r in iter_records(tmp_path / "v")}) == 2
