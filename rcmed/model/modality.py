"""Modality recognition: which kind of image this is (CT, MRI, X-ray, ...), from the encoder's features.

A user who sends a PNG, or a NIfTI (which carries no modality), gets the image normalised with the
generic rule, and the answer cannot say what the image is. This head names the modality from the
image embedding the model computes anyway, so the predictor can normalise with the modality's own
rule (the CT window the model was trained with) and start its answer with what the image is.

    embedding (B, 256, 64, 64) --mean and max over space--> (B, 512) --linear--> (B, M) logits

A linear probe on frozen features (as CLIP and DINO measure their features) is enough here: the
modalities differ in colour, texture and layout, which the encoder's features already separate; it
trains in seconds on cached features and cannot overfit the way a deeper head would. Saved beside
the model as `modality.safetensors` (weights plus the modality names in the metadata).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FILE = "modality.safetensors"


def pooled(embedding: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) image embedding -> (B, 2C): spatial mean and max."""
    return torch.cat([embedding.mean((2, 3)), embedding.amax((2, 3))], dim=1)


class ModalityHead(nn.Module):
    def __init__(self, names: list[str], dim: int = 512) -> None:
        super().__init__()
        self.names = list(names)
        self.mean = nn.Parameter(torch.zeros(dim), requires_grad=False)  # feature standardisation, from training data
        self.std = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.linear = nn.Linear(dim, len(names))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, 2C) pooled features -> (B, M) logits."""
        return self.linear((feats - self.mean) / self.std)

    @torch.inference_mode()
    def recognise(self, embedding: torch.Tensor) -> tuple[str, float]:
        """(1, C, h, w) embedding -> (modality name, probability)."""
        p = torch.softmax(self(pooled(embedding.float())), -1)[0]
        k = int(p.argmax())
        return self.names[k], float(p[k])

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from rcmed.io.atomic import atomic_path

        with atomic_path(Path(folder) / FILE) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"modalities": json.dumps(self.names)})

    @classmethod
    def load(cls, folder: str | Path) -> "ModalityHead | None":
        """The head saved in `folder`, or None when it has none. A damaged file raises ValueError."""
        from safetensors import safe_open

        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                names = json.loads(f.metadata()["modalities"])
                state = {k: f.get_tensor(k) for k in f.keys()}
            head = cls([str(n) for n in names], dim=state["linear.weight"].shape[1])
            head.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - any damage is one clear message
            raise ValueError(f"{path}: not a modality head ({type(err).__name__}: {err})") from None
        return head.eval()


def fit(feats: torch.Tensor, labels: list[str], *, epochs: int = 300, lr: float = 0.05, weight_decay: float = 1e-3,
        seed: int = 0) -> ModalityHead:
    """Multinomial logistic regression on (N, 2C) pooled features with string labels; each modality
    weighs alike in the loss (the real datasets are far from balanced). Full-batch AdamW."""
    names = sorted(set(labels))
    y = torch.tensor([names.index(v) for v in labels])
    head = ModalityHead(names, feats.shape[1])
    with torch.no_grad():
        head.mean.copy_(feats.mean(0))
        head.std.copy_(feats.std(0).clamp_min(1e-6))
    counts = torch.bincount(y, minlength=len(names)).float()
    weight = counts.sum() / (len(names) * counts)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(head.linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.cross_entropy(head(feats), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()
