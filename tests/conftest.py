"""Shared test fixtures: small files written with the field's own libraries, all seeded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE = Path(__file__).resolve().parents[1] / "rcmed" / "samples" / "Dataset001_AbdomenPhantom"

# Identifying values planted in test DICOMs; none may ever appear in any output.
PHI = {"PatientName": "Doe^Jane^Secret", "PatientID": "MRN-7731-XQ", "PatientBirthDate": "19610423",
       "InstitutionName": "St Hidden Hospital", "AccessionNumber": "ACC99812", "ReferringPhysicianName": "Who^Doctor"}


def write_ct_slice(path: Path, pixels: np.ndarray, z: float, series_uid: str, study_uid: str, *,
                   instance: int = 1, slope: float = 1.0, intercept: float = -1024.0,
                   spacing: tuple[float, float] = (0.7, 0.7), modality: str = "CT",
                   transfer_syntax: str | None = None) -> Path:
    """One axial CT slice (uint16 stored values; HU = stored * slope + intercept) with planted PHI."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid])  # one frame of reference per study
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20200101", "120000", "S1"
    ds.Modality = modality
    ds.Manufacturer = "TestCo"
    ds.SeriesNumber, ds.InstanceNumber = 1, instance
    ds.ImagePositionPatient = [-100.0, -120.0, float(z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if meta.TransferSyntaxUID.is_compressed:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct_series(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 5-slice CT series written in shuffled file-name order. Returns (folder, HU volume sorted by z)."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(0)
    folder = tmp_path / "series"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    zs = [10.0, 12.5, 15.0, 17.5, 20.0]
    stored = rng.integers(0, 2000, size=(5, 12, 10)).astype(np.uint16)
    names = ["c.dcm", "a.dcm", "e.dcm", "b.dcm", "d.dcm"]  # file order != position order
    for k, (z, name) in enumerate(zip(zs, names, strict=True)):
        write_ct_slice(folder / name, stored[k], z, series, study, instance=5 - k)
    return folder, stored.astype(np.int32) - 1024


def phantom_examples(n: int = 8):
    """Liver-present and tumour-absent grounding examples on 64² CT phantoms."""
    from rcmed.data.synth import synth
    from rcmed.io.normalize import normalize
    from rcmed.model.processing import Example

    out = []
    for s in range(n):
        p = synth("ct", s, size=64)
        x = normalize(p.image)
        out.append(Example(x, "Segment the liver.", "The liver <seg> is here.", [p.masks["liver"]]))
        out.append(Example(x, "Segment the tumour.", "The tumour <seg> is not present.", [None]))
    return out


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> Path:
    """The tiny model overfitted on 8 phantoms (180 steps, ~30 s), saved with save_pretrained. (At 120 steps it
    had learnt "not present" with the two threads of CI's machine but not with one: "The tumour is not.".)"""
    import torch

    from rcmed.model.config import RCMedConfig
    from rcmed.model.processing import build_batch
    from rcmed.model.rcmed import RCMedModel

    torch.manual_seed(0)
    m = RCMedModel(RCMedConfig.tiny())
    batch = build_batch(m.processor, phantom_examples(8), 64)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(180):
        out = m(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    folder = tmp_path_factory.mktemp("tiny") / "model"
    m.save_pretrained(folder)
    return folder
