"""The real annotated nuclei image that installs offline, cut into tiles for training and held-out
evaluation.

Source: `img2d.tif` / `mask2d.tif` from the StarDist wheel (a 512x512 uint16 fluorescence image
from the 2018 Data Science Bowl, CC0, with a 125-nucleus instance label map), fetched and
checksummed by `rcmed.model.pretrained`. There is a single image, so the held-out split is by
tile, not by patient: test tiles come from the same slide as training tiles (same staining,
microscope and nucleus size) and say less about new slides than a case split would. Nuclei cut
by a tile border are kept as partial objects in both neighbours' label maps (relabelled per tile).
No absent targets are declared: nothing but nuclei is labelled, so nothing else is known absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rcmed.data.store import Record, Sample, StoreWriter
from rcmed.errors import ShapeMismatchError

SOURCE = "dsb2018-stardist"


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(image (512, 512) uint16, labels (512, 512) int32), verified against pinned checksums."""
    import tifffile

    from rcmed.model.pretrained import STARDIST_IMAGE, STARDIST_MASK, fetch_member

    image = tifffile.imread(fetch_member(STARDIST_IMAGE))
    labels = tifffile.imread(fetch_member(STARDIST_MASK)).astype(np.int32)
    if image.shape != labels.shape:
        raise ShapeMismatchError("mask2d.tif", f"label map {labels.shape} != image {image.shape}")
    return image, labels


def is_test_tile(row: int, col: int) -> bool:
    """Held-out tiles: one per tile row, on a diagonal, so test nuclei come from every part of the image."""
    return (row + col) % 4 == 0


def nuclei_tiles(image: np.ndarray, labels: np.ndarray, tile: int = 128) -> Iterator[tuple[Sample, str]]:
    """(sample, split) per tile; tiles relabel their nuclei 1..N; tiles without nuclei are skipped."""
    from skimage.segmentation import relabel_sequential

    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    for r in range(rows):
        for c in range(cols):
            sl = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            lab = relabel_sequential(labels[sl])[0].astype(np.int32)
            if lab.max() == 0:
                continue
            case = f"{SOURCE}-r{r}c{c}"
            record = Record(id=case, case_id=case, modality="microscopy", instance_target="nuclei",
                            body_region="cells", source=SOURCE)
            sample = Sample(record=record, image=np.ascontiguousarray(image[sl]), masks=np.zeros((0, tile, tile), bool),
                            instances=lab)
            yield sample, "test" if is_test_tile(r, c) else "train"


def nuclei_store(out: str | Path, tile: int = 128) -> int:
    """Write the tiles into a new triplet store with their train/test split; returns the tile count."""
    image, labels = stardist_nuclei()
    n = 0
    with StoreWriter(out) as w:
        for sample, split in nuclei_tiles(image, labels, tile):
            w.add(sample)
            w.set_split(sample.record.case_id, split)
            n += 1
    return n
