"""Image/mask pair folders (the layout of `shared/realdata`, and of a user's own data)::

    <modality>/<dataset>/cases.csv                    case, patient, split, image, targets ('|'-separated)
    <modality>/<dataset>/images/<case>.png|.jpg|.tif
    <modality>/<dataset>/masks/<case>/<target>.png    0/255, image size (spaces in names are '_')
    <modality>/<dataset>/masks/<case>/<target>.instances.png   optional uint16 instance labels

`src` is one dataset folder (its modality is the name of the folder above it, or `modality=`) or
a tree of them (every `*/*/cases.csv` under it). Each case becomes one 2-D record:

- `case_id` is `<dataset>-<patient>`, so a store split (by case id) is a split by patient;
- a listed target with an empty mask is a real "absent" example (`record.absent`); a target not
  listed for a case is not asked about (unknown, not absent);
- a target with an instance map becomes the record's instance class (`instance_target`, label map
  kept; one instance class per record, the first listed), the others stay binary masks;
- `split` is the dataset's official split ('train', 'val', 'test'); cases without one are split by
  patient at conversion time, seeded and stable (`split_fractions`, default 70/15/15). Where the
  dataset has an official test split but no validation split, validation patients are drawn from
  its training patients; a dataset whose only held-out split is called 'val' (Kvasir-SEG) has it
  used as the test split, and validation drawn from train;
- `cross_absent` > 0 adds up to that many target names of *other* datasets whose body region cannot
  hold them (a polyp on a brain MRI, a liver on a fundus photograph) as absent targets, so that a
  model learns, and is scored on, saying "not found" for what an image does not show. Regions that
  may overlap in one image (chest and abdomen) never lend each other names.

Images are read with `rcmed.io.load` (so the reader's size limits and errors apply); masks must be
binary and of the image's size, or the case is refused with a clear error.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcmed.data.store import Record, Sample, make_key
from rcmed.errors import EmptyInputError, InvalidMaskError, RCMedInputError, ShapeMismatchError
from rcmed.io.image import parse_modality
from rcmed.io.readers import load

# Body region of the public datasets of shared/realdata (a user's dataset is "unknown" unless given).
BODY_REGIONS: dict[str, str] = {
    "covid_semiseg_medseg": "chest", "msd_task03_liver_2d": "abdomen", "LGG_kaggle_3m": "brain",
    "JSRT-SCR": "chest", "COVID-19-CXR-Segmentations-GB": "chest", "BUSI": "breast", "MoNuSeg2018": "tissue",
    "DSB2018_stage1_train": "cells", "PH2": "skin", "Kvasir-SEG": "colon", "DRIVE": "retina", "Drishti-GS1": "retina",
}
# Regions whose images may show each other's structures: never lend each other absent names.
_OVERLAP = [{"chest", "abdomen"}, {"tissue", "cells"}]
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass(frozen=True)
class _Case:
    dataset: Path
    modality: str
    case: str
    patient: str
    split: str
    image: Path
    targets: tuple[str, ...]


def _datasets(src: Path) -> list[Path]:
    if (src / "cases.csv").is_file():
        return [src]
    found = sorted(p.parent for p in src.glob("*/*/cases.csv"))
    if not found:
        raise EmptyInputError(src.name or str(src), "no cases.csv here nor in <modality>/<dataset>/ below; "
                                                    "not an image/mask pair folder")
    return found


def _read_cases(ds: Path, modality: str | None) -> list[_Case]:
    mod = parse_modality(modality or ds.parent.name).value
    cases = []
    with open(ds / "cases.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"case", "image", "targets"} - set(reader.fieldnames or [])
        if missing:
            raise RCMedInputError(f"{ds.name}/cases.csv", f"missing column(s) {sorted(missing)}")
        for row in reader:
            split = (row.get("split") or "").strip().lower()
            if split not in ("", "train", "val", "test"):
                raise RCMedInputError(f"{ds.name}/cases.csv", f"case {row['case']!r}: unknown split {split!r}")
            targets = tuple(t.strip() for t in (row["targets"] or "").split("|") if t.strip())
            cases.append(_Case(ds, mod, row["case"], (row.get("patient") or "").strip() or row["case"], split,
                               ds / row["image"], targets))
    if not cases:
        raise EmptyInputError(f"{ds.name}/cases.csv", "no cases listed")
    return cases


def _draw(key: str, seed: int) -> float:
    """A stable number in [0, 1) for a patient (the same split on every machine and run)."""
    return (zlib.crc32(f"{seed}:{key}".encode()) & 0xFFFFFFFF) / 2**32


def assign_splits(cases: list[_Case], fractions: tuple[float, float, float] = SPLIT_FRACTIONS, seed: int = 0
                  ) -> dict[str, str]:
    """patient -> split for one dataset: official splits kept; missing ones drawn by patient."""
    official = {c.patient: c.split for c in cases if c.split}
    has_test = "test" in official.values()
    has_val = "val" in official.values()
    tr, va, _ = fractions
    out: dict[str, str] = {}
    for p in sorted({c.patient for c in cases}):
        split = official.get(p, "")
        if split == "val" and not has_test:
            split = "test"  # the dataset's only held-out split is its test split
        if split == "train" and (not has_val or not has_test):
            split = "val" if _draw(p, seed) < va / (tr + va) else "train"
        if not split:
            u = _draw(p, seed)
            split = "train" if u < tr else ("val" if u < tr + va else "test")
        out[p] = split
    return out


def _mask(path: Path, shape: tuple[int, ...], instances: bool) -> np.ndarray:
    arr = load(path).array
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and not instances:
        arr = arr[..., :3].max(axis=-1)
    if arr.shape != shape:
        raise ShapeMismatchError(path.name, f"mask shape {arr.shape} != image shape {shape}")
    if instances:
        if arr.dtype.kind not in "ui":
            raise InvalidMaskError(path.name, f"instance label map must be integer, got {arr.dtype}")
        return arr.astype(np.int32)
    values = np.unique(arr)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        raise InvalidMaskError(path.name, f"mask must be binary (0 and one value), found values {values[:5].tolist()}")
    return arr > 0


def _cross_names(cases: list[_Case], regions: dict[Path, str]) -> dict[str, list[str]]:
    """region -> sorted target names of other regions that cannot appear in it."""
    names: dict[str, set[str]] = {}
    for c in cases:
        names.setdefault(regions[c.dataset], set()).update(c.targets)
    out: dict[str, list[str]] = {}
    for r in names:
        if r == "unknown":
            continue
        own = names[r]
        lend = set()
        for other, ts in names.items():
            if other in (r, "unknown") or any({r, other} <= g for g in _OVERLAP):
                continue
            lend |= ts
        out[r] = sorted(lend - own)
    return out


def pairs_samples(src: Path, *, modality: str | None = None, body_region: str | None = None, seed: int = 0,
                  cross_absent: int = 0) -> Iterator[tuple[Sample, str | None]]:
    """Yield (sample, split) for every case of one pair dataset folder or a tree of them."""
    datasets = _datasets(src)
    cases = [c for ds in datasets for c in _read_cases(ds, modality)]
    regions = {ds: body_region or BODY_REGIONS.get(ds.name, "unknown") for ds in datasets}
    splits = {ds: assign_splits([c for c in cases if c.dataset == ds], seed=seed) for ds in datasets}
    lend = _cross_names(cases, regions) if cross_absent > 0 else {}
    for c in cases:
        if not c.image.is_file():
            raise EmptyInputError(f"{c.dataset.name}/{c.image.name}", "image listed in cases.csv is missing")
        image = load(c.image, modality=c.modality)
        if image.is_volume:
            raise ShapeMismatchError(c.image.name, "pair folders hold 2-D images; convert volumes with --format nnunet")
        shape = image.spatial_shape
        targets, masks, absent = [], [], []
        inst_target, inst = None, None
        for t in c.targets:
            stem = c.dataset / "masks" / c.case / t.replace(" ", "_")
            ipath = stem.with_name(stem.name + ".instances.png")
            if ipath.is_file() and inst_target is None:
                labels = _mask(ipath, shape, instances=True)
                if labels.any():
                    inst_target, inst = t, labels
                else:
                    absent.append(t)
                continue
            mpath = stem.with_name(stem.name + ".png")
            if not mpath.is_file():
                raise EmptyInputError(f"{c.dataset.name}/masks/{c.case}", f"no mask {mpath.name} for listed target {t!r}")
            m = _mask(mpath, shape, instances=False)
            if m.any():
                targets.append(t)
                masks.append(m)
            else:
                absent.append(t)
        region = regions[c.dataset]
        pool = lend.get(region, [])
        if cross_absent > 0 and pool:
            rng = np.random.default_rng([seed, zlib.crc32(c.case.encode())])
            k = min(cross_absent, len(pool))
            absent += [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
        record = Record(id=make_key(c.dataset.name, c.case), case_id=make_key(c.dataset.name, c.patient),
                        modality=c.modality, targets=targets, absent=absent, instance_target=inst_target,
                        body_region=region, source=c.dataset.name,
                        spacing=list(image.spacing) if image.spacing else None)
        arr = np.stack(masks) if masks else np.zeros((0, *shape), bool)
        yield Sample(record=record, image=np.ascontiguousarray(image.array), masks=arr, instances=inst), \
            splits[c.dataset][c.patient]
