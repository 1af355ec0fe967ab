"""CVPR 2025 BiomedSegFM `.npz` cases (see `rcmed.io.npz`): each label of `gts` becomes a target
named by its text prompt; cases flagged `instance_label: 1` become instance label maps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rcmed.data.convert.common import case_samples
from rcmed.data.store import Sample
from rcmed.errors import EmptyInputError
from rcmed.io.image import parse_modality
from rcmed.io.limits import DEFAULT_LIMITS
from rcmed.io.npz import read_segfm


def segfm_samples(
    src: Path, *, modality: str | None = None, body_region: str = "unknown", keep_empty: float = 0.05, seed: int = 0,
) -> Iterator[tuple[Sample, str | None]]:
    """Yield (sample, None) for each slice with foreground (plus a few empty ones) of each case."""
    files = [src] if src.is_file() else sorted(src.rglob("*.npz"))
    if not files:
        raise EmptyInputError(src.name, "no .npz files found (BiomedSegFM layout)")
    for f in files:
        case = read_segfm(f, parse_modality(modality), DEFAULT_LIMITS)
        names = case.label_names or {}
        if case.instance:
            names = {1: next(iter(names.values()), "instances")}
        for s in case_samples(case.image, case.labels, names, case_id=f.stem, source=f.parent.name or "segfm",
                              body_region=body_region, instance=case.instance, keep_empty=keep_empty, seed=seed):
            yield s, None
