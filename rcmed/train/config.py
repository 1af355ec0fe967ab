"""Training configuration: one dataclass, saved as JSON in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class TrainConfig:
    """`stage`: "align" (describe coloured regions of overlays: vision -> language), "ground"
    (prompts -> answers with `<seg>` targets, masks, boxes, presence, loop rounds) or "mixed" (both,
    so grounding keeps the descriptions). `task_weights` / `absent_fraction` / `target_weights`: how
    often a record is streamed and how its example is drawn (`rcmed.train.data.DrawPolicy`; defaults:
    uniform). `data`: built triplet stores (`rcmed data build`). `init_from`: a checkpoint folder to
    start from (stage 2 starts from stage 1). `model`: a preset name ("tiny", "default") or a model config JSON path.
    `model_overrides`: fields of `RCMedConfig` to change (e.g. {"loop_rounds": 1}). Steps count
    optimizer updates; each takes `grad_accum` micro-batches of `batch_size` per process."""

    data: list[str] = field(default_factory=list)
    out: str = "runs/tiny"
    model: str = "tiny"
    model_overrides: dict[str, object] = field(default_factory=dict)
    stage: Literal["align", "ground", "mixed"] = "ground"
    task_weights: dict[str, float] = field(default_factory=dict)
    absent_fraction: float = 0.0
    target_weights: dict[str, float] = field(default_factory=dict)
    init_from: str | None = None
    split: str | None = "train"
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    clip_grad: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    shuffle_buffer: int = 64
    deterministic: bool = True  # torch deterministic kernels: a resumed run ends bit-identical
    tensorboard: bool = True  # also log every metric to RUN/tensorboard
    feature_cache: str | None = None  # folder caching a frozen encoder's features (see feature_cache.py)
    prefetch: int = 2  # batches built ahead in a background thread (0: build inline); order is unchanged

    def __post_init__(self) -> None:
        from rcmed.train.data import STAGES, DrawPolicy

        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("task_weights", "target_weights"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be an object of name: weight, got {getattr(self, name)!r}")
        # raises on unknown tasks or bad values
        DrawPolicy(dict(self.task_weights), float(self.absent_fraction), dict(self.target_weights))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a config JSON; anything wrong with it (missing, not JSON, unknown options, bad values) is an
        `RCMedInputError` naming the file, which the CLI prints as one line. `"extends": "other.json"` (a path
        beside this file) starts from that config, and this one states only what differs: its options replace
        the other's whole (an option that is an object is replaced, not merged). The run folder gets the
        resolved config (`to_json`), so a run never depends on the chain it was read from."""
        from rcmed.errors import RCMedInputError

        d = _read(Path(path), ())
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise RCMedInputError(path, f"unknown training options {sorted(unknown)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise RCMedInputError(path, str(exc)) from None


def _read(path: Path, chain: tuple[Path, ...]) -> dict[str, object]:
    """The options of the config at `path` with those of the configs it extends under them."""
    from rcmed.errors import RCMedInputError

    try:
        d = json.loads(path.read_text())
    except OSError as exc:
        raise RCMedInputError(path, f"cannot read the training config ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise RCMedInputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise RCMedInputError(path, "a training config is a JSON object of options")
    parent = d.pop("extends", None)
    if parent is None:
        return d
    if not isinstance(parent, str) or not parent:
        raise RCMedInputError(path, f"'extends' names another config file beside this one, got {parent!r}")
    base = path.parent / parent
    if base.resolve() in (*chain, path.resolve()):
        raise RCMedInputError(path, f"'extends' goes round in a circle through {parent}")
    return {**_read(base, (*chain, path.resolve())), **d}
