"""Examples for training, streamed from built triplet stores (records carrying `examples`).

Stage "align" shows the model the painted overlay and asks for the colour-region description;
stage "ground" shows the plain image and asks for targets, with one mask per `<seg>` (None for an
absent target); stage "mixed" draws from both (each align example still shown painted), so
grounding does not wash out the descriptions learnt in alignment. Which example of a record is
drawn follows a `DrawPolicy`: per-task weights, a floor on absent-target examples (a record
has few of them, yet they are what teaches the presence head to say "not found"), and per-target
weights for rare or small targets (a record holding one is streamed more often, LVIS repeat-factor
style, and its examples with that target's mask weigh more within the record). The stream
position (samples consumed on this rank) is part of the checkpoint, so a resumed run continues
with exactly the next sample.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from rcmed.data.instructions import ABSENT
from rcmed.data.store import Record, Sample, ShardStream
from rcmed.io.image import MedicalImage, parse_modality
from rcmed.io.normalize import normalize
from rcmed.model.processing import SEG, Example
from rcmed.overlay import paint
from rcmed.postprocess import target_key

ALIGN_TASKS = {"describe_all", "describe_colour"}
GROUND_TASKS = {"segment_name", "segment_multi", "segment_description", "absent", "presence", "locate", "count"}
STAGES = ("align", "ground", "mixed")
MAX_TARGET_WEIGHT = 100.0  # an epoch with a record streamed more often than this is a typo, not a recipe


@dataclass(frozen=True)
class DrawPolicy:
    """How the one example of a record is drawn. `task_weights`: relative weight of each example by its
    task (missing tasks weigh 1, 0 never drawn). `absent_fraction`: when the record has examples about an
    absent target (seg target -1), draw among those with this probability (0: by weight only).
    `target_weights` (name -> w >= 1): a record whose present targets include a weighted name is streamed
    w times per epoch (the largest w of its targets; fractions by a seeded coin, as LVIS repeat-factor
    sampling), and within a record an example whose masks include that target weighs w times more (its
    task weight times the largest w among its masks). So a small target seen in few records (an X-ray
    nodule) is asked for often enough to be learnt. The default policy is the plain uniform draw
    (`rng.choice`), so runs without weights draw exactly as before."""

    task_weights: dict[str, float] = field(default_factory=dict)
    absent_fraction: float = 0.0
    target_weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.task_weights) - ALIGN_TASKS - GROUND_TASKS
        if unknown:
            raise ValueError(f"task_weights: unknown tasks {sorted(unknown)} (known: "
                             f"{sorted(ALIGN_TASKS | GROUND_TASKS)})")
        if any(w < 0 for w in self.task_weights.values()):
            raise ValueError("task_weights must be >= 0")
        if not 0.0 <= self.absent_fraction <= 1.0:
            raise ValueError(f"absent_fraction must be in [0, 1], got {self.absent_fraction}")
        bad = {k: w for k, w in self.target_weights.items()
               if isinstance(w, bool) or not isinstance(w, int | float) or not 1.0 <= w <= MAX_TARGET_WEIGHT}
        if bad:
            raise ValueError(f"target_weights must be numbers in [1, {MAX_TARGET_WEIGHT:g}] (a record is streamed at "
                             f"least once and at most that many times per epoch), got {bad}")
        object.__setattr__(self, "target_weights", {target_key(k): float(w) for k, w in self.target_weights.items()})

    def _largest(self, names: list[str]) -> float:
        return max([self.target_weights.get(target_key(n), 1.0) for n in names] + [1.0])

    def repeat_factor(self, record: Record) -> float:
        """How many times per epoch the record is streamed (>= 1): the largest weight of its targets."""
        return self._largest(region_names(record))

    def _weight(self, example: dict, names: list[str]) -> float:
        masks = [names[k] for k in example.get("seg_targets", []) if 0 <= k < len(names)]
        return self.task_weights.get(example["task"], 1.0) * self._largest(masks)

    def draw(self, examples: list[dict], rng: random.Random, names: list[str] | None = None) -> dict | None:
        """One example of a record; `names[k]` names region k (the record's targets, then its instance
        class), needed only for `target_weights`."""
        pool = [e for e in examples if self.task_weights.get(e["task"], 1.0) > 0]
        if not pool:
            return None
        if self.absent_fraction > 0:
            absent = [e for e in pool if ABSENT in e.get("seg_targets", [])]
            if absent and rng.random() < self.absent_fraction:
                pool = absent
        if not self.task_weights and not self.target_weights:
            return rng.choice(pool)
        weights = [self._weight(e, names or []) for e in pool]
        return rng.choices(pool, weights=weights)[0]


def region_names(record: Record) -> list[str]:
    """Names of a record's regions in mask order: its targets, then its instance class (if any)."""
    return [*record.targets, *([record.instance_target] if record.instance_target else [])]


def sample_examples(sample: Sample, stage: str, rng: random.Random, policy: DrawPolicy | None = None) -> list[Example]:
    """Training examples of one record for a stage (one drawn example per record and pass)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (one of {STAGES})")
    rec = sample.record
    tasks = [e for e in rec.examples if stage == "mixed" or (e["task"] in ALIGN_TASKS) == (stage == "align")]
    ex = (policy or DrawPolicy()).draw(tasks, rng, region_names(rec))
    if ex is None:
        return []
    # the request asked in one of its phrasings, drawn anew each time (stores built before `prompts`: the one kept)
    prompt = rng.choice(ex["prompts"]) if ex.get("prompts") else ex["prompt"]
    img = MedicalImage(array=sample.image, modality=parse_modality(rec.modality), rgb=sample.image.ndim == 3)
    x = normalize(img)
    # region k of the description: masks first (targets), then the instance class, then absent names
    region_masks: list[np.ndarray | None] = list(sample.masks)
    if sample.instances is not None and rec.instance_target:
        region_masks.append(sample.instances > 0)
    if ex["task"] in ALIGN_TASKS:
        painted = paint(x, [m for m in region_masks if m is not None]) / 255.0
        return [Example(painted.astype(np.float32), prompt, ex["answer"], [])]
    masks: list[np.ndarray | None] = []
    for k in ex["seg_targets"]:
        masks.append(region_masks[k] if 0 <= k < len(region_masks) else None)
    if ex["answer"].count(SEG) != len(masks):
        return []
    return [Example(x, prompt, ex["answer"], masks)]


def example_stream(stores: list[str], stage: str, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                   split: str | None = "train", buffer: int = 64, policy: DrawPolicy | None = None) -> Iterator[tuple[int, str, Example]]:
    """Endless (position, record id, example) stream over the stores, epoch after epoch, deterministic for a
    seed; `start` skips that many samples of this rank (resume).

    Several stores are interleaved, not read one after another: each epoch draws a random order of
    store slots (store s gets as many slots as it streams samples this epoch), so every stretch of
    steps mixes the datasets in proportion to their size. Resuming at a position replays that order
    to know how many samples of each store to skip."""
    repeat = policy.repeat_factor if policy and policy.target_weights else None

    def stream(store: str, epoch: int, skip: int) -> ShardStream:
        # ShardStream skips `skip` samples by reading tar headers only (no pixels decoded).
        return ShardStream(store, split=split, seed=seed, epoch=epoch, buffer=buffer, start=skip, rank=rank,
                           world_size=world_size, repeat=repeat)

    def no_samples() -> ValueError:
        return ValueError(f"no training samples in {stores} (split {split!r}, rank {rank}/{world_size})")

    base = 0  # this rank's samples in the epochs already passed (consumed or skipped)
    epoch = 0
    while True:
        if len(stores) == 1:
            order, total = None, None
        else:  # samples per store this epoch (a header-only pass), then the interleaving
            lengths = []
            for store in stores:
                counter = stream(store, epoch, skip=2**62)
                for _ in counter:
                    pass
                lengths.append(counter.n_mine)
            total = sum(lengths)
            order = np.random.default_rng([seed, epoch, 2]).permutation(np.repeat(np.arange(len(stores)), lengths))
        if total == 0:
            raise no_samples()
        if total is not None and start >= base + total:  # this whole epoch was consumed before the resume
            base += total
            epoch += 1
            continue
        done = max(0, start - base)  # samples of this epoch already consumed
        if order is None:
            s = stream(stores[0], epoch, done)
            samples: Iterator[Sample] = iter(s)
        else:
            skips = np.bincount(order[:done], minlength=len(stores))
            its = [iter(stream(store, epoch, int(k))) for store, k in zip(stores, skips, strict=True)]
            samples = (next(its[i]) for i in order[done:])
        j = done
        for sample in samples:
            j += 1
            rng = random.Random(seed * 1_000_003 + base + j)
            for ex in sample_examples(sample, stage, rng, policy):
                yield base + j, sample.record.id, ex
        if order is None:
            total = getattr(s, "n_mine", 0)
            if total == 0:
                raise no_samples()
        base += total
        epoch += 1


def batch_stream(stream: Iterator[tuple[int, str, Example]], batch_size: int, build, prefetch: int = 0
                 ) -> Iterator[tuple[object, int, list[str]]]:
    """(batch, position after its last sample, record ids) from an example stream, in stream order.

    `prefetch` > 0 builds up to that many batches ahead in a background thread (decoding, normalising,
    painting, tokenising and resizing overlap the model's step; the order, and so resume positions,
    stay exactly those of `prefetch=0`). A failure in the thread is raised here, at the batch it hit.
    """

    def one() -> tuple[object, int, list[str]]:
        examples, ids, position = [], [], 0
        while len(examples) < batch_size:
            position, record_id, ex = next(stream)
            ids.append(record_id)
            examples.append(ex)
        return build(examples), position, ids

    if prefetch <= 0:
        while True:
            yield one()
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                item = one()
                while not stop.is_set():
                    try:
                        q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="rcmed-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
