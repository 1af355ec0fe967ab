"""Entry point for launchers: `torchrun --nproc_per_node 2 -m rcmed.train.run --config FILE`
(or `accelerate launch -m rcmed.train.run ...`). Same as `rcmed train`."""

from __future__ import annotations

import argparse

from rcmed.train.config import TrainConfig
from rcmed.train.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="TrainConfig JSON")
    ap.add_argument("--resume", help="run folder to continue (its train.json is used)")
    args = ap.parse_args()
    if args.resume:
        from pathlib import Path

        Trainer(TrainConfig.load(Path(args.resume) / "train.json"), resume=True).train()
    elif args.config:
        Trainer(TrainConfig.load(args.config)).train()
    else:
        ap.error("give --config FILE or --resume RUN")


if __name__ == "__main__":
    main()
