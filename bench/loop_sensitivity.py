"""Does the language model read the region the closed loop feeds back? One number per question.

The loop's second round re-reads the found region with the language model (region features at the `<region>`
slots) and decodes again from its new state. Here each present target of some validation records is asked
"Segment the X." and, at the second round, the decoder query from the language model's state *with* the region
fed back is compared with the query from round 1's state (what the "no-region" ablation uses): cosine
similarity and relative change. A change near zero means the language side does not use the region, so feeding
it back cannot help until that path is trained on real data.

Run: `python bench/loop_sensitivity.py --data data/real-built [--split val] [--per-dataset 2] [--model default]`.
Prints one row per dataset and the mean; nothing is written.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch


def main() -> None:
    from rcmed.data.store import iter_records, read_sample
    from rcmed.eval.harness import _per_dataset, record_image, record_truths
    from rcmed.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-dataset", type=int, default=2)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    if args.split == "test":
        raise SystemExit("a diagnostic chooses nothing, but it is still run on validation: use --split val")
    predictor = Predictor.from_pretrained(args.model)
    model = predictor.model
    seen: list[tuple[float, float]] = []
    original = model._rounds

    def measuring(feats, input_ids, attention_mask, visual, first_hidden, rounds, **kw):
        b_idx, pos = model._slots(input_ids)
        if b_idx.numel():
            q1 = model.seg_query(first_hidden[b_idx, pos])
            prev = model.decode(feats, q1, b_idx).masks[:, 0]
            q2 = model.seg_query(model.reread(feats, input_ids, attention_mask, visual, prev, b_idx)[b_idx, pos])
            for a, b in zip(q1.flatten(1), q2.flatten(1), strict=True):
                seen.append((float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                             float((b - a).norm() / a.norm().clamp(min=1e-8))))
        return original(feats, input_ids, attention_mask, visual, first_hidden, rounds, **kw)

    model._rounds = measuring
    by: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for rec in _per_dataset(list(iter_records(args.data, split=args.split)), args.per_dataset):
        sample = read_sample(args.data, rec)
        predictor.set_image(record_image(rec, sample))
        for name, true in record_truths(rec, sample).items():
            if true is None or not true.any() or predictor.read(f"Segment the {name}.", rec.modality).refused:
                continue
            seen.clear()
            predictor.predict(f"Segment the {name}.", flips=())
            by[rec.source or rec.modality] += seen
    print(f"{'dataset':<32}{'questions':>10}{'cosine(q1, q2)':>16}{'|q2 - q1| / |q1|':>18}")
    for d, v in sorted(by.items()):
        a = np.array(v)
        print(f"{d:<32}{len(a):>10}{a[:, 0].mean():>16.4f}{a[:, 1].mean():>18.4f}")
    a = np.array([x for v in by.values() for x in v])
    print(f"{'all':<32}{len(a):>10}{a[:, 0].mean():>16.4f}{a[:, 1].mean():>18.4f}")


if __name__ == "__main__":
    main()
