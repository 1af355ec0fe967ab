from __future__ import annotations

import json

import numpy as np
import pytest

from rcmed.data.store import (
    Record,
    Sample,
    ShardStream,
    StoreWriter,
    iter_records,
    make_key,
    read_sample,
    store_stats,
)
from rcmed.errors import ShapeMismatchError, StoreError


def _sample(i: int, case: str) -> Sample:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    m = np.zeros((1, 16, 16), bool)
    m[0, i % 8: i % 8 + 4, 2:6] = True
    rec = Record(id=make_key("t", case, f"s{i:03d}"), case_id=case, modality="ct", targets=["liver"], spacing=[0.5, 0.5])
    return Sample(record=rec, image=img, masks=m)


@pytest.fixture
def store(tmp_path):
    out = tmp_path / "store"
    with StoreWriter(out, shard_samples=7) as w:
        for i in range(40):
            case = f"case{i // 4:02d}"
            w.add(_sample(i, case))
            if i // 4 == 9:
                w.set_split(case, "test")
    return out


def test_store_layout_and_random_access(store):
    info = json.loads((store / "store.json").read_text())
    assert info["n_records"] == 40 and info["n_shards"] == 6
    recs = list(iter_records(store))
    assert len(recs) == 40
    s = read_sample(store, recs[13])
    ref = _sample(13, "case03")
    np.testing.assert_array_equal(s.image, ref.image)
    np.testing.assert_array_equal(s.masks, ref.masks)
    assert s.record.targets == ["liver"] and s.record.spacing == [0.5, 0.5]
    assert [r.case_id for r in iter_records(store, split="test")] == ["case09"] * 4
    assert store_stats(store)["cases"] == 10


def test_shards_are_readable_by_webdataset(store):
    import webdataset as wds

    ds = wds.WebDataset(str(store / "shards" / "shard-000000.tar"), shardshuffle=False)
    first = next(iter(ds))
    assert first["__key__"] == "t-case00-s000"
    assert json.loads(first["json"])["targets"] == ["liver"]


def _ids(stream) -> list[str]:
    return [s.record.id for s in stream]


def test_stream_is_deterministic_by_seed_and_covers_everything(store):
    a = _ids(ShardStream(store, seed=1, buffer=8))
    b = _ids(ShardStream(store, seed=1, buffer=8))
    c = _ids(ShardStream(store, seed=2, buffer=8))
    assert a == b and a != c
    assert sorted(a) == sorted(r.id for r in iter_records(store))
    assert _ids(ShardStream(store, seed=1, epoch=1, buffer=8)) != a


def test_stream_resumes_at_a_position(store):
    full = _ids(ShardStream(store, seed=3, buffer=8))
    assert _ids(ShardStream(store, seed=3, buffer=8, start=17)) == full[17:]


def test_ranks_see_disjoint_data(store):
    r0 = _ids(ShardStream(store, seed=0, rank=0, world_size=2))
    r1 = _ids(ShardStream(store, seed=0, rank=1, world_size=2))
    assert not set(r0) & set(r1)
    assert len(r0) + len(r1) == 40


def test_stream_split_filter(store):
    assert len(_ids(ShardStream(store, split="test"))) == 4


def test_case_in_two_splits_is_refused(tmp_path):
    with pytest.raises(StoreError, match="both 'train' and 'test'"):
        with StoreWriter(tmp_path / "s") as w:
            w.add(_sample(0, "c"))
            w.set_split("c", "train")
            w.set_split("c", "test")
    assert not (tmp_path / "s").exists()  # nothing half-written
    assert list(tmp_path.iterdir()) == []


def test_bad_samples_are_refused(tmp_path):
    bad = _sample(0, "c")
    bad.masks = np.zeros((1, 8, 8), bool)
    with pytest.raises(ShapeMismatchError, match="masks shape"):
        with StoreWriter(tmp_path / "s") as w:
            w.add(bad)
    with pytest.raises(StoreError, match="no samples"):
        with StoreWriter(tmp_path / "e"):
            pass


def test_existing_store_is_not_overwritten(store):
    with pytest.raises(StoreError, match="not empty"):
        StoreWriter(store)


def test_damaged_manifest_is_reported(store):
    with open(store / "manifest.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(StoreError, match="line 41 is not valid JSON"):
        list(iter_records(store))


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a triplet store"):
        list(iter_records(tmp_path))


def test_repeat_factor_streams_records_more_often_and_resumes_exactly(store):
    """`repeat(record)` streams a record that many times per epoch (fractions by a seeded coin); copies
    are samples, so resuming at a position continues exactly; without it the order is the plain one."""
    from collections import Counter

    def rf(rec):
        return 3.0 if rec.id.endswith(("s001", "s002")) else (1.5 if rec.case_id == "case05" else 1.0)

    plain = _ids(ShardStream(store, seed=4, buffer=8))
    assert _ids(ShardStream(store, seed=4, buffer=8, repeat=lambda r: 1.0)) == plain
    full = _ids(ShardStream(store, seed=4, buffer=8, repeat=rf))
    n = Counter(full)
    assert n["t-case00-s001"] == n["t-case00-s002"] == 3 and n["t-case00-s000"] == 1
    assert {n[f"t-case05-s{i:03d}"] for i in range(20, 24)} <= {1, 2}
    assert full == _ids(ShardStream(store, seed=4, buffer=8, repeat=rf))
    assert _ids(ShardStream(store, seed=4, buffer=8, repeat=rf, start=23)) == full[23:]
    # over many epochs the fraction is honoured on average
    extra = sum(Counter(_ids(ShardStream(store, seed=4, epoch=e, buffer=8, repeat=rf)))[f"t-case05-s{i:03d}"]
                for e in range(10) for i in range(20, 24))
    assert 50 <= extra <= 70  # 40 records x 1.5 = 60 expected
