from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from rcmed.data.convert import convert
from rcmed.data.store import ShardStream, iter_records, read_sample
from rcmed.errors import EmptyInputError, InvalidMaskError, RCMedInputError, ShapeMismatchError
from tests.conftest import SAMPLE


def test_nnunet_sample_dataset_converts_with_exact_masks(tmp_path):
    n = convert(SAMPLE, "nnunet", tmp_path / "st", progress=False)
    recs = list(iter_records(tmp_path / "st"))
    assert n == len(recs) > 0
    assert {r.case_id for r in recs} == {"phantom_000", "phantom_001", "phantom_002"}
    assert all(r.modality == "ct" and r.orientation == "PL" for r in recs)
    assert all(r.spacing == [0.8, 0.8] for r in recs)
    # The slice's masks equal the label file's voxels in the same patient positions.
    lab = np.asarray(nib.load(str(SAMPLE / "labelsTr" / "phantom_001.nii.gz")).dataobj)
    img = np.asarray(nib.load(str(SAMPLE / "imagesTr" / "phantom_001_0000.nii.gz")).dataobj)
    rec = next(r for r in recs if r.case_id == "phantom_001" and "liver lesion" in r.targets)
    s = read_sample(tmp_path / "st", rec)
    k = rec.slice_index
    # The sample affine is diag(-0.8, -0.8, 2.5): +i runs to patient left, +j to posterior, so the
    # radiological axial slice k (rows -> P, columns -> L) is the file's [:, :, k] transposed.
    np.testing.assert_array_equal(s.image, img[:, :, k].T)
    lesion = s.masks[rec.targets.index("liver lesion")]
    np.testing.assert_array_equal(lesion, lab[:, :, k].T == 2)
    # the lesion's HU is in the range the phantom gave it, the liver's too
    assert abs(float(s.image[lesion].mean()) - 20) < 15
    liver_only = s.masks[rec.targets.index("liver")]
    assert abs(float(s.image[liver_only].mean()) - 60) < 15


def test_nnunet_v1_labels_regions_and_absent_targets(tmp_path):
    src = tmp_path / "Dataset002_X"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    lab = np.zeros((8, 8, 3), np.uint8)
    lab[1:5, 1:5, 1] = 1
    lab[2:4, 2:4, 1] = 2
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), str(src / "imagesTr" / "c1_0000.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(src / "labelsTr" / "c1.nii.gz"))
    (src / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2"}, "file_ending": ".nii.gz",
        "labels": {"background": 0, "whole tumour": [1, 2], "core": 2, "absent thing": 3}}))
    convert(src, "nnunet", tmp_path / "st", progress=False, keep_empty=0.0)
    (rec,) = list(iter_records(tmp_path / "st"))
    assert rec.modality == "mri"
    assert set(rec.targets) == {"whole tumour", "core"} and rec.absent == ["absent thing"]
    s = read_sample(tmp_path / "st", rec)
    assert s.masks[rec.targets.index("whole tumour")].sum() == 16 and s.masks[rec.targets.index("core")].sum() == 4


def test_nnunet_bad_inputs(tmp_path):
    with pytest.raises(EmptyInputError, match="no dataset.json"):
        convert(tmp_path, "nnunet", tmp_path / "o", progress=False)
    src = tmp_path / "ds"
    shutil.copytree(SAMPLE, src)
    (src / "imagesTr" / "phantom_002_0000.nii.gz").unlink()
    with pytest.raises(EmptyInputError, match="image imagesTr/phantom_002_0000.nii.gz is missing"):
        convert(src, "nnunet", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    lab = nib.load(str(src / "labelsTr" / "phantom_000.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, :5], lab.affine), str(src / "labelsTr" / "phantom_000.nii.gz"))
    (src / "labelsTr" / "phantom_002.nii.gz").unlink()
    with pytest.raises(ShapeMismatchError, match="phantom_000.nii.gz"):
        convert(src, "nnunet", tmp_path / "o", progress=False)
    with pytest.raises(RCMedInputError, match="unknown format 'coco2'"):
        convert(src, "coco2", tmp_path / "o", progress=False)


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_biomedparse_layout(tmp_path):
    src = tmp_path / "ISIC"
    img = np.random.default_rng(0).integers(0, 255, (12, 14, 3), dtype=np.uint8)
    m = np.zeros((12, 14), np.uint8)
    m[3:8, 4:9] = 255
    _png(src / "train" / "ISIC_001_dermoscopy_skin.png", img)
    _png(src / "train_mask" / "ISIC_001_dermoscopy_skin_skin+lesion.png", m)
    _png(src / "test" / "ISIC_002_dermoscopy_skin.png", img)
    _png(src / "test_mask" / "ISIC_002_dermoscopy_skin_skin+lesion.png", m)
    convert(src, "biomedparse", tmp_path / "st", progress=False)
    recs = {r.case_id: r for r in iter_records(tmp_path / "st")}
    assert recs["ISIC_001"].split == "train" and recs["ISIC_002"].split == "test"
    assert recs["ISIC_001"].targets == ["skin lesion"] and recs["ISIC_001"].modality == "dermoscopy"
    s = read_sample(tmp_path / "st", recs["ISIC_001"])
    np.testing.assert_array_equal(s.masks[0], m > 0)
    np.testing.assert_array_equal(s.image, img)
    _png(src / "train_mask" / "ISIC_001_dermoscopy_skin_other.png", (m // 2))
    with pytest.raises(InvalidMaskError, match="not binary"):
        convert(src, "biomedparse", tmp_path / "st2", progress=False)


def test_instance_folder(tmp_path):
    src = tmp_path / "cells"
    labels = np.zeros((20, 20), np.uint16)
    for k in range(1, 6):
        labels[k * 3: k * 3 + 2, 2:6] = k
    _png(src / "a_img.png", np.random.default_rng(1).integers(0, 255, (20, 20), dtype=np.uint8))
    _png(src / "a_masks.png", labels)
    convert(src, "instances", tmp_path / "st", progress=False, target="nuclei")
    (rec,) = list(iter_records(tmp_path / "st"))
    assert rec.instance_target == "nuclei" and rec.modality == "microscopy"
    s = read_sample(tmp_path / "st", rec)
    assert len(np.unique(s.instances)) - 1 == 5
    _png(src / "b_img.png", np.zeros((20, 20), np.uint8))
    _png(src / "b_masks.png", np.zeros((10, 20), np.uint8))
    with pytest.raises(ShapeMismatchError, match="b_masks.png"):
        convert(src, "instances", tmp_path / "st2", progress=False)


def test_segfm_npz(tmp_path):
    imgs = np.random.default_rng(2).integers(0, 255, (5, 10, 10)).astype(np.uint8)
    gts = np.zeros_like(imgs)
    gts[1:3, 2:5, 2:5] = 1
    np.savez_compressed(tmp_path / "CT_Liver_c1.npz", imgs=imgs, gts=gts, spacing=np.array([1.0, 1.0, 3.0]),
                        text_prompts=np.array({"1": "liver", "instance_label": 0}, dtype=object))
    convert(tmp_path / "CT_Liver_c1.npz", "segfm", tmp_path / "st", progress=False, keep_empty=0.0)
    recs = list(iter_records(tmp_path / "st"))
    assert [r.slice_index for r in recs] == [1, 2] and all(r.targets == ["liver"] for r in recs)
    assert all(r.spacing == [1.0, 1.0] for r in recs)
    assert len(list(ShardStream(tmp_path / "st"))) == 2


def test_converter_option_it_does_not_take(tmp_path):
    with pytest.raises(RCMedInputError, match="takes no option"):
        convert(SAMPLE, "nnunet", tmp_path / "st", progress=False, target="cells")
