"""The triplet store: image-mask-description records in WebDataset shards plus a JSONL manifest.

Layout of a store folder::

    STORE/store.json          format, version, record and shard counts
    STORE/manifest.jsonl      one `Record` per line (streamed, never loaded whole)
    STORE/splits.json         case id -> split ("train"/"val"/"test"); the only place splits live
    STORE/shards/shard-000000.tar
        {key}.json            the same `Record` (WebDataset layout: files sharing a key form a sample)
        {key}.npz             image (H, W[, 3]), masks (K, H, W) bool, instances (H, W) int32 or absent

Splits are per case (patient), stored once in `splits.json`, so a case can never sit in two splits
and re-splitting never rewrites shards. The manifest records each sample's byte offset in its
shard, so one record is read without scanning. Shard streaming (`ShardStream`) shuffles
deterministically by seed and epoch with a bounded buffer, and resumes at any sample position
by skipping tar headers without decoding pixels. Memory is flat in the store size.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from rcmed.errors import InvalidMaskError, ShapeMismatchError, StoreError
from rcmed.io.atomic import atomic_path

FORMAT = "rcmed-triplets"
VERSION = 1
SPLITS = ("train", "val", "test")
UNASSIGNED = "unassigned"


@dataclass
class Record:
    """One triplet's metadata. Arrays live in the shard; see `Sample`.

    `targets[k]` names `masks[k]` (present targets); `absent` names targets known not to be in the
    image (negatives for "not present" answers); `instance_target` names the objects of the
    instance label map, if any. `spacing` is mm per (row, col); `orientation` the RAS letters of
    (row, col) when known (e.g. "PL" for an axial slice). `split` is filled from `splits.json`.
    """

    id: str
    case_id: str
    modality: str
    targets: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    instance_target: str | None = None
    body_region: str = "unknown"
    task: str = "segment"
    descriptions: list[str] = field(default_factory=list)
    source: str = ""
    spacing: list[float] | None = None
    orientation: str | None = None
    slice_index: int | None = None
    regions: list[dict[str, object]] = field(default_factory=list)
    examples: list[dict[str, object]] = field(default_factory=list)
    split: str = UNASSIGNED
    shard: str | None = None
    offset: int | None = None
    size: int | None = None

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("split")  # splits live in splits.json only
        return d

    @classmethod
    def from_json(cls, d: dict[str, object], split: str = UNASSIGNED) -> "Record":
        names = {f.name for f in fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in names})  # type: ignore[arg-type]
        rec.split = split
        return rec


@dataclass
class Sample:
    """A record with its arrays. `image`: (H, W) or (H, W, 3) in physical units or uint8;
    `masks`: (K, H, W) bool, one per `record.targets`; `instances`: (H, W) int32 label map or None."""

    record: Record
    image: np.ndarray
    masks: np.ndarray
    instances: np.ndarray | None = None

    def validate(self) -> None:
        """Raise a clear error if arrays and record disagree."""
        spatial = self.image.shape[:2]
        what = self.record.id
        if self.image.ndim not in (2, 3) or (self.image.ndim == 3 and self.image.shape[-1] not in (3, 4)):
            raise ShapeMismatchError(what, f"image must be (H, W) or (H, W, 3), got {self.image.shape}")
        if self.masks.ndim != 3 or self.masks.shape[1:] != spatial:
            raise ShapeMismatchError(what, f"masks shape {self.masks.shape} != (K, {spatial[0]}, {spatial[1]})")
        if self.masks.dtype != bool:
            raise InvalidMaskError(what, f"masks must be boolean, got {self.masks.dtype}")
        if len(self.record.targets) != self.masks.shape[0]:
            raise ShapeMismatchError(what, f"{len(self.record.targets)} target names for {self.masks.shape[0]} masks")
        if self.instances is not None:
            if self.instances.shape != spatial:
                raise ShapeMismatchError(what, f"instance map shape {self.instances.shape} != image {spatial}")
            if self.instances.dtype.kind not in "ui":
                raise InvalidMaskError(what, "instance label map must be integer")
            if not self.record.instance_target:
                raise InvalidMaskError(what, "instance label map without instance_target name")


_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(*parts: object) -> str:
    """A WebDataset-safe sample key (no dots: WebDataset splits keys at the first dot)."""
    return _KEY_BAD.sub("_", "-".join(str(p) for p in parts if p is not None and str(p) != "")).strip("_")


def _encode_arrays(sample: Sample) -> bytes:
    buf = io.BytesIO()
    arrays = {"image": sample.image, "masks": sample.masks}
    if sample.instances is not None:
        arrays["instances"] = sample.instances.astype(np.int32)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _decode_arrays(record: Record, data: bytes) -> Sample:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            inst = z["instances"] if "instances" in z.files else None
            return Sample(record=record, image=z["image"], masks=z["masks"], instances=inst)
    except (ValueError, OSError, KeyError, EOFError) as exc:
        raise StoreError(record.id, f"sample arrays are damaged in {record.shard} ({exc.__class__.__name__})") from None


class StoreWriter:
    """Write samples into a new store. Use as a context manager::

        with StoreWriter(out) as w:
            w.add(sample); w.set_split(case_id, "test")

    Shards are closed whole (temporary file, then rename) before their manifest lines are written;
    the store only appears at `out` when the writer exits without error.
    """

    def __init__(self, out: str | Path, shard_samples: int = 1000, shard_bytes: int = 256 * 2**20) -> None:
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            raise StoreError(self.out.name, "output folder exists and is not empty; choose a new folder")
        self.shard_samples = shard_samples
        self.shard_bytes = shard_bytes
        self._tmp = self.out.parent / f".{self.out.name}.partial"
        self._splits: dict[str, str] = {}
        self._pending: list[tuple[Record, bytes]] = []
        self._pending_bytes = 0
        self._n_shards = 0
        self._n_records = 0
        self._keys: set[str] = set()

    def __enter__(self) -> "StoreWriter":
        import shutil

        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        (self._tmp / "shards").mkdir(parents=True)
        self._manifest = open(self._tmp / "manifest.jsonl", "w", encoding="utf-8")
        return self

    def add(self, sample: Sample) -> None:
        sample.validate()
        key = sample.record.id
        if key != make_key(key):
            raise StoreError(key, "record id must be a WebDataset-safe key; build it with make_key()")
        if key in self._keys:
            raise StoreError(key, "duplicate record id")
        self._keys.add(key)
        data = _encode_arrays(sample)
        self._pending.append((sample.record, data))
        self._pending_bytes += len(data)
        if len(self._pending) >= self.shard_samples or self._pending_bytes >= self.shard_bytes:
            self._flush()

    def set_split(self, case_id: str, split: str) -> None:
        """Put a whole case into a split; a case already in another split is an error."""
        if split not in SPLITS:
            raise StoreError("split", f"unknown split {split!r}; use one of {SPLITS}")
        prev = self._splits.get(case_id)
        if prev is not None and prev != split:
            raise StoreError(case_id, f"case is in both {prev!r} and {split!r}; a case must stay in one split")
        self._splits[case_id] = split

    def _flush(self) -> None:
        if not self._pending:
            return
        rel = f"shards/shard-{self._n_shards:06d}.tar"
        for rec in write_shard(self._tmp / rel, rel, self._pending):
            self._manifest.write(json.dumps(rec.to_json()) + "\n")
        self._manifest.flush()
        self._n_records += len(self._pending)
        self._n_shards += 1
        self._pending, self._pending_bytes = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        try:
            if exc_type is None:
                self._flush()
        finally:
            self._manifest.close()
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        if self._n_records == 0:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise StoreError(self.out.name, "no samples were written; check the input folder and options")
        write_splits(self._tmp, self._splits, {"source": "converter"})
        info = {"format": FORMAT, "version": VERSION, "n_records": self._n_records, "n_shards": self._n_shards}
        (self._tmp / "store.json").write_text(json.dumps(info, indent=2))
        if self.out.exists():
            self.out.rmdir()
        self._tmp.replace(self.out)


def write_shard(path: Path, rel: str, items: list[tuple[Record, bytes]]) -> list[Record]:
    """Write (record, npz bytes) pairs as one WebDataset tar, atomically; fill each record's
    `shard`, `offset` and `size` (where its arrays sit) and return the records."""
    import webdataset as wds

    with atomic_path(path, suffix=".tar") as tmp:
        with open(tmp, "wb") as fh:
            sink = wds.TarWriter(fh, encoder=False, mtime=0.0)
            for rec, data in items:
                rec.shard = rel
                sink.write({"__key__": rec.id, "json": json.dumps(rec.to_json()).encode(), "npz": data})
            sink.close()
    # Record where each sample's arrays sit so one record can be read without a scan.
    with tarfile.open(path, "r:") as tf:
        where = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
    for rec, _ in items:
        rec.offset, rec.size = where[f"{rec.id}.npz"]
    return [rec for rec, _ in items]


def iter_shard(path: Path, rel: str) -> Iterator[tuple[Record, bytes]]:
    """Stream (record, npz bytes) pairs of one shard in file order."""
    try:
        with tarfile.open(path, "r:") as tf:
            pending: dict[str, dict[str, bytes]] = {}
            for m in tf:
                key, _, ext = m.name.partition(".")
                pending.setdefault(key, {})[ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
                parts = pending[key]
                if "json" in parts and "npz" in parts:
                    del pending[key]
                    rec = Record.from_json(json.loads(parts["json"]))
                    rec.shard = rel
                    yield rec, parts["npz"]
    except tarfile.TarError as exc:
        raise StoreError(rel, f"damaged shard ({exc})") from None


def encode_sample(sample: Sample) -> bytes:
    """The `.npz` bytes stored for a sample."""
    sample.validate()
    return _encode_arrays(sample)


def decode_sample(record: Record, data: bytes) -> Sample:
    """Inverse of `encode_sample`."""
    return _decode_arrays(record, data)


def check_store(store: Path) -> None:
    """Raise `StoreError` unless `store` is a triplet store this version reads."""
    info = store / "store.json"
    if not info.is_file():
        raise StoreError(store.name, "not a triplet store (no store.json); create one with `rcmed data convert`")
    meta = json.loads(info.read_text())
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise StoreError(store.name, f"unsupported store format {meta.get('format')!r} v{meta.get('version')}")


def read_splits(store: str | Path) -> dict[str, str]:
    """case id -> split, from `splits.json` (empty if the store was never split)."""
    p = Path(store) / "splits.json"
    if not p.is_file():
        return {}
    return dict(json.loads(p.read_text()).get("cases", {}))


def write_splits(store: str | Path, cases: dict[str, str], info: dict[str, object]) -> None:
    """Atomically replace `splits.json`."""
    bad = {s for s in cases.values() if s not in SPLITS}
    if bad:
        raise StoreError("splits", f"unknown split names {sorted(bad)}")
    with atomic_path(Path(store) / "splits.json") as tmp:
        tmp.write_text(json.dumps({**info, "cases": dict(sorted(cases.items()))}, indent=1))


def iter_records(store: str | Path, split: str | None = None) -> Iterator[Record]:
    """Stream the manifest, one `Record` at a time, optionally only one split."""
    root = Path(store)
    check_store(root)
    splits = read_splits(root)
    with open(root / "manifest.jsonl", encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                raise StoreError("manifest.jsonl", f"line {n} is not valid JSON; the manifest is damaged") from None
            rec = Record.from_json(d, splits.get(str(d.get("case_id")), UNASSIGNED))
            if split is None or rec.split == split:
                yield rec


def read_sample(store: str | Path, record: Record) -> Sample:
    """Load one record's arrays by seeking to its offset in its shard."""
    if record.shard is None or record.offset is None or record.size is None:
        raise StoreError(record.id, "record has no shard location")
    path = Path(store) / record.shard
    try:
        with open(path, "rb") as fh:
            fh.seek(record.offset)
            data = fh.read(record.size)
    except OSError as exc:
        raise StoreError(record.shard, f"cannot read shard ({exc.__class__.__name__})") from None
    if len(data) != record.size:
        raise StoreError(record.shard, "shard is truncated")
    return _decode_arrays(record, data)


@dataclass
class _Entry:
    shard: str
    record: Record
    offset: int
    size: int


class ShardStream:
    """Stream samples from the shards in a deterministic shuffled order.

    The order is a function of (`seed`, `epoch`): shard order is permuted, then samples pass a
    shuffle buffer of `buffer` entries. `start` skips that many samples of this rank's stream
    without decoding them (resume after interruption). With `world_size > 1`, rank r takes every
    world_size-th sample of the common order, so ranks see disjoint data. `repeat(record)` (>= 1), when
    given, streams a record that many times per epoch (the fraction by a coin seeded by seed and epoch;
    LVIS repeat-factor sampling); copies count as samples, so positions and resume stay exact.
    """

    def __init__(
        self,
        store: str | Path,
        split: str | None = None,
        seed: int = 0,
        epoch: int = 0,
        buffer: int = 256,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat: Callable[[Record], float] | None = None,
    ) -> None:
        self.root = Path(store)
        check_store(self.root)
        self.repeat = repeat
        self.split, self.seed, self.epoch, self.buffer = split, seed, epoch, max(1, buffer)
        self.start, self.rank, self.world_size = start, rank, world_size
        self.splits = read_splits(self.root)

    def _entries(self, rng: np.random.Generator) -> Iterator[_Entry]:
        copies = np.random.default_rng([self.seed, self.epoch, 1])  # own generator: the order without repeats is unchanged
        shards = sorted((self.root / "shards").glob("shard-*.tar"))
        for i in rng.permutation(len(shards)):
            rel = f"shards/{shards[i].name}"
            try:
                with tarfile.open(shards[i], "r:") as tf:
                    pending: dict[str, dict[str, tarfile.TarInfo]] = {}
                    for m in tf:
                        key, _, ext = m.name.partition(".")
                        pending.setdefault(key, {})[ext] = m
                        parts = pending[key]
                        if "json" in parts and "npz" in parts:
                            del pending[key]
                            fh = tf.extractfile(parts["json"])
                            d = json.loads(fh.read())  # type: ignore[union-attr]
                            rec = Record.from_json(d, self.splits.get(str(d.get("case_id")), UNASSIGNED))
                            if self.split is None or rec.split == self.split:
                                n = 1
                                if self.repeat is not None:
                                    r = max(1.0, float(self.repeat(rec)))
                                    n = int(r) + int(copies.random() < r - int(r))
                                for _ in range(n):
                                    yield _Entry(rel, rec, parts["npz"].offset_data, parts["npz"].size)
            except tarfile.TarError as exc:
                raise StoreError(rel, f"damaged shard ({exc})") from None

    def _order(self) -> Iterator[_Entry]:
        rng = np.random.default_rng([self.seed, self.epoch])
        buf: list[_Entry] = []
        for entry in self._entries(rng):
            buf.append(entry)
            if len(buf) >= self.buffer:
                yield buf.pop(int(rng.integers(len(buf))))
        while buf:
            yield buf.pop(int(rng.integers(len(buf))))

    def __iter__(self) -> Iterator[Sample]:
        mine = 0
        self.n_mine = 0  # this rank's samples in the whole stream, skipped ones included (final after iteration)
        for n, entry in enumerate(self._order()):
            if n % self.world_size != self.rank:
                continue
            mine += 1
            self.n_mine = mine
            if mine <= self.start:
                continue
            rec = entry.record
            rec.shard, rec.offset, rec.size = entry.shard, entry.offset, entry.size
            yield read_sample(self.root, rec)


def store_stats(store: str | Path) -> dict[str, object]:
    """Records, cases, per-split, per-modality and per-target counts, from one manifest pass."""
    from collections import Counter

    splits: Counter[str] = Counter()
    modalities: Counter[str] = Counter()
    targets: Counter[str] = Counter()
    cases: set[str] = set()
    n = 0
    for r in iter_records(store):
        n += 1
        cases.add(r.case_id)
        splits[r.split] += 1
        modalities[r.modality] += 1
        targets.update(r.targets)
        if r.instance_target:
            targets[r.instance_target] += 1
    return {"records": n, "cases": len(cases), "splits": dict(splits), "modalities": dict(modalities),
            "targets": dict(targets.most_common())}
