"""Converters from the field's dataset layouts into a triplet store.

Each converter yields `(Sample, split or None)`; `convert()` writes them with `StoreWriter`
(whole store or nothing) and shows progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from rcmed.data.convert.biomedparse import biomedparse_samples
from rcmed.data.convert.instances import instance_samples
from rcmed.data.convert.nnunet import nnunet_samples
from rcmed.data.convert.pairs import pairs_samples
from rcmed.data.convert.segfm import segfm_samples
from rcmed.data.store import Sample, StoreWriter
from rcmed.errors import EmptyInputError, RCMedInputError

CONVERTERS: dict[str, Callable[..., Iterator[tuple[Sample, str | None]]]] = {
    "nnunet": nnunet_samples,
    "biomedparse": biomedparse_samples,
    "instances": instance_samples,
    "segfm": segfm_samples,
    "pairs": pairs_samples,
}


def convert(src: str | Path, fmt: str, out: str | Path, progress: bool = True, shard_samples: int = 1000, **options: object) -> int:
    """Convert the dataset at `src` (layout `fmt`, one of `CONVERTERS`) into a new store at `out`.

    Returns the number of records written. Options go to the converter (modality, body_region, ...).
    """
    from tqdm import tqdm

    if fmt not in CONVERTERS:
        raise RCMedInputError("--format", f"unknown format {fmt!r}; use one of {sorted(CONVERTERS)}")
    src = Path(src)
    if not src.exists():
        raise EmptyInputError(src.name or str(src), "no such file or folder")
    import inspect

    accepted = set(inspect.signature(CONVERTERS[fmt]).parameters) - {"src"}
    opts = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(opts) - accepted)
    if extra:
        raise RCMedInputError("--format", f"format {fmt!r} takes no option(s) {extra}; it takes {sorted(accepted)}")
    n = 0
    with StoreWriter(out, shard_samples=shard_samples) as writer, tqdm(
        desc=f"convert {fmt}", unit="rec", disable=not progress, leave=False
    ) as bar:
        for sample, split in CONVERTERS[fmt](src, **opts):
            writer.add(sample)
            if split is not None:
                writer.set_split(sample.record.case_id, split)
            n += 1
            bar.update(1)
    return n
