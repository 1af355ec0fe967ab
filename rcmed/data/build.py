"""`rcmed data build`: describe every record of a triplet store and expand it into instruction
examples, writing a new store of training shards.

One input shard becomes one output shard, built by one worker process, so memory per worker is
one shard and the work spreads over `--workers` processes. A shard is finished when its tar and
its manifest part (`.parts/shard-N.jsonl`) both exist, each written atomically; an interrupted
build resumes by skipping finished shards. The manifest is assembled when all shards are done.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from rcmed.data.describe import describe, describe_instances
from rcmed.data.instructions import build_examples
from rcmed.data.store import (
    FORMAT,
    VERSION,
    Sample,
    check_store,
    decode_sample,
    encode_sample,
    iter_shard,
    write_shard,
)
from rcmed.errors import StoreError
from rcmed.io.atomic import atomic_path
from rcmed.io.image import MedicalImage, parse_modality
from rcmed.io.normalize import normalize


@dataclass(frozen=True)
class BuildReport:
    shards_built: int
    shards_skipped: int
    records: int
    examples: int


def describe_sample(sample: Sample, seed: int = 0) -> Sample:
    """Add descriptions, region facts and instruction examples to one sample's record."""
    rec = sample.record
    image = MedicalImage(array=sample.image, modality=parse_modality(rec.modality), rgb=sample.image.ndim == 3)
    x = normalize(image)
    spacing = tuple(rec.spacing) if rec.spacing else None
    key_seed = seed ^ (zlib.crc32(rec.id.encode()) & 0x7FFFFFFF)  # stable across processes, unlike hash()
    texts, regions, examples = [], [], []
    if rec.targets or rec.absent:
        names = list(rec.targets) + list(rec.absent)
        empty = np.zeros(sample.image.shape[:2], bool)
        masks = list(sample.masks) + [empty] * len(rec.absent)
        d = describe(x, masks, names, modality=rec.modality, spacing=spacing,  # type: ignore[arg-type]
                     orientation=rec.orientation, seed=key_seed)
        texts.append(d.text)
        regions += d.to_json()["regions"]  # type: ignore[operator]
        examples += [e.to_json() for e in build_examples(d, sample.image.shape[:2], modality=rec.modality, seed=key_seed)]
    if sample.instances is not None and rec.instance_target:
        # painted after the present target masks (rcmed.train.data), so its colour comes next
        d = describe_instances(sample.instances, rec.instance_target, image=x, modality=rec.modality,
                               spacing=spacing, seed=key_seed, colour_index=len(rec.targets))  # type: ignore[arg-type]
        texts.append(d.text)
        regions += d.to_json()["regions"]  # type: ignore[operator]
        # region indices count the target masks first: the instance class is region len(targets)
        for e in build_examples(d, sample.image.shape[:2], modality=rec.modality, seed=key_seed):
            e.seg_targets = [k + len(rec.targets) if k >= 0 else k for k in e.seg_targets]
            examples.append(e.to_json())
    rec.descriptions, rec.regions, rec.examples = texts, regions, examples
    return sample


def _build_one(args: tuple[str, str, str, int]) -> tuple[int, int]:
    src_path, rel, out_root, seed = args
    out = Path(out_root)
    items = []
    n_examples = 0
    for rec, data in iter_shard(Path(src_path), rel):
        sample = describe_sample(decode_sample(rec, data), seed)
        n_examples += len(sample.record.examples)
        items.append((sample.record, encode_sample(sample)))
    records = write_shard(out / rel, rel, items)
    part = out / ".parts" / (Path(rel).stem + ".jsonl")
    with atomic_path(part) as tmp:
        tmp.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return len(records), n_examples


def build_store(src: str | Path, out: str | Path, workers: int = 1, seed: int = 0, progress: bool = True) -> BuildReport:
    """Describe and expand store `src` into a new training store at `out` (resumable)."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    check_store(src)
    if (out / "store.json").exists():
        raise StoreError(out.name, "output store is already complete; choose a new folder")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / ".parts").mkdir(exist_ok=True)
    shards = sorted((src / "shards").glob("shard-*.tar"))
    if not shards:
        raise StoreError(src.name, "store has no shards")
    todo, skipped = [], 0
    for sh in shards:
        rel = f"shards/{sh.name}"
        if (out / rel).is_file() and (out / ".parts" / f"{sh.stem}.jsonl").is_file():
            skipped += 1
        else:
            todo.append((str(sh), rel, str(out), seed))
    n_rec = n_ex = 0
    with tqdm(total=len(shards), initial=skipped, desc="build", unit="shard", disable=not progress, leave=False) as bar:
        if workers > 1 and len(todo) > 1:
            with get_context("spawn").Pool(workers) as pool:
                for r, e in pool.imap_unordered(_build_one, todo):
                    n_rec, n_ex = n_rec + r, n_ex + e
                    bar.update(1)
        else:
            for job in todo:
                r, e = _build_one(job)
                n_rec, n_ex = n_rec + r, n_ex + e
                bar.update(1)
    total = 0
    with atomic_path(out / "manifest.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for sh in shards:
            with open(out / ".parts" / f"{sh.stem}.jsonl", encoding="utf-8") as part:
                for line in part:
                    fh.write(line)
                    total += 1
    if (src / "splits.json").is_file():
        shutil.copyfile(src / "splits.json", out / "splits.json")
    info = {"format": FORMAT, "version": VERSION, "n_records": total, "n_shards": len(shards), "built_from": src.name, "seed": seed}
    with atomic_path(out / "store.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    shutil.rmtree(out / ".parts", ignore_errors=True)
    return BuildReport(shards_built=len(todo), shards_skipped=skipped, records=total, examples=n_ex)

