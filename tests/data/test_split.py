from __future__ import annotations

import pytest

from rcmed.data.split import check_no_leak, split_by_case
from rcmed.data.store import Record, iter_records
from rcmed.errors import RCMedInputError
from tests.data.test_store import store  # noqa: F401  (fixture: 40 records, 10 cases, case09 in test)


def test_no_case_lands_in_two_splits(store):  # noqa: F811
    report = split_by_case(store, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    recs = list(iter_records(store))
    by_case: dict[str, set[str]] = {}
    for r in recs:
        by_case.setdefault(r.case_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_case.values())
    assert sum(report.cases.values()) == 10 and sum(report.records.values()) == 40
    assert report.cases == {"train": 6, "val": 2, "test": 2}
    assert by_case["case09"] == {"test"}  # the source's own test case keeps its split
    check_no_leak(recs)


def test_split_is_reproducible_and_seeded(store):  # noqa: F811
    split_by_case(store, {"train": 0.5, "test": 0.5}, seed=4, reassign=True)
    a = {r.case_id: r.split for r in iter_records(store)}
    split_by_case(store, {"train": 0.5, "test": 0.5}, seed=4, reassign=True)
    assert a == {r.case_id: r.split for r in iter_records(store)}
    split_by_case(store, {"train": 0.5, "test": 0.5}, seed=5, reassign=True)
    assert a != {r.case_id: r.split for r in iter_records(store)}


def test_bad_fractions(store):  # noqa: F811
    with pytest.raises(RCMedInputError, match="sum to 1"):
        split_by_case(store, {"train": 0.5, "test": 0.2})
    with pytest.raises(RCMedInputError, match="splits must be among"):
        split_by_case(store, {"holdout": 1.0})


def test_leak_check_catches_a_case_in_two_splits():
    recs = [Record(id="a", case_id="p1", modality="ct", split="train"), Record(id="b", case_id="p1", modality="ct", split="test")]
    with pytest.raises(RCMedInputError, match="p1: case appears in both 'train' and 'test'"):
        check_no_leak(recs)
