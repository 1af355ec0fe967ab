"""Split a triplet store by case (patient), never by slice or record.

Cases are shuffled by seed and dealt into splits by fraction of cases; cases the source already
placed (e.g. an nnU-Net `imagesTs` case) keep their split unless `reassign=True`. The result is
written to the store's `splits.json`; shards and manifest stay untouched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcmed.data.store import SPLITS, UNASSIGNED, Record, iter_records, read_splits, write_splits
from rcmed.errors import RCMedInputError


@dataclass(frozen=True)
class SplitReport:
    """Counts after splitting: cases and records per split."""

    cases: dict[str, int]
    records: dict[str, int]

    def table(self) -> str:
        rows = [f"{'split':<11}{'cases':>8}{'records':>10}"]
        for s in (*SPLITS, UNASSIGNED):
            if self.cases.get(s) or self.records.get(s):
                rows.append(f"{s:<11}{self.cases.get(s, 0):>8}{self.records.get(s, 0):>10}")
        return "\n".join(rows)


def check_no_leak(records: Iterable[Record]) -> None:
    """Raise if any case id appears under two different splits."""
    seen: dict[str, str] = {}
    for r in records:
        if r.split == UNASSIGNED:
            continue
        prev = seen.setdefault(r.case_id, r.split)
        if prev != r.split:
            raise RCMedInputError(r.case_id, f"case appears in both {prev!r} and {r.split!r} splits; splits must be by case")


def _allocate(fractions: list[float], n: int) -> list[int]:
    """Largest-remainder rounding: integer counts summing to n, each within 1 of fraction * n."""
    exact = [f * n for f in fractions]
    counts = [int(np.floor(e)) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_by_case(
    store: str | Path,
    fractions: dict[str, float],
    seed: int = 0,
    reassign: bool = False,
) -> SplitReport:
    """Assign every case of `store` to a split and write `splits.json`.

    Args:
        fractions: split -> fraction of cases, e.g. {"train": 0.8, "val": 0.1, "test": 0.1}; must sum to 1.
        reassign: also re-deal cases that already have a split.
    """
    if set(fractions) - set(SPLITS) or any(v < 0 for v in fractions.values()):
        raise RCMedInputError("fractions", f"splits must be among {SPLITS} with non-negative fractions, got {fractions}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise RCMedInputError("fractions", f"fractions must sum to 1, got {total:.3f}")
    existing = {} if reassign else read_splits(store)
    case_records: Counter[str] = Counter(r.case_id for r in iter_records(store))
    free = sorted(c for c in case_records if c not in existing)
    order = np.random.default_rng(seed).permutation(len(free))
    names = [s for s in SPLITS if fractions.get(s, 0) > 0]
    # Fractions are of all cases: cases the source already placed count towards their split.
    targets = _allocate([fractions[s] for s in names], len(case_records))
    placed = Counter(existing[c] for c in case_records if c in existing)
    counts = [max(0, t - placed[s]) for s, t in zip(names, targets, strict=True)]
    while sum(counts) > len(free):
        counts[counts.index(max(counts))] -= 1
    cases = dict(existing)
    pos = 0
    for name, count in zip(names, counts, strict=True):
        for idx in order[pos: pos + count]:
            cases[free[int(idx)]] = name
        pos += count
    write_splits(store, cases, {"seed": seed, "fractions": fractions})
    n_cases: Counter[str] = Counter()
    n_records: Counter[str] = Counter()
    for case, n in case_records.items():
        s = cases.get(case, UNASSIGNED)
        n_cases[s] += 1
        n_records[s] += n
    return SplitReport(cases=dict(n_cases), records=dict(n_records))
