"""The reference methods `rcmed eval` scores beside the model, on the same records (`--baseline`):

- "litemedsam-box": LiteMedSAM given the true box of each present target (an oracle upper reference);
- "litemedsam-cc-box": LiteMedSAM given the true box of each connected component, the masks joined (the fair
  oracle for targets of many parts: one box around a hundred nuclei says nothing);
- "otsu-watershed": Otsu's threshold and a distance-transform watershed (a classical nuclei reference);
- "unet": a MONAI U-Net trained on the store's train split within a CPU budget (kept beside its weights).

Each takes the normalised image (H, W) or (H, W, 3) in [0, 1] and the true mask (H, W) bool (for its box), and
returns a mask (H, W) bool in source pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rcmed.data.store import iter_records, read_sample
from rcmed.errors import RCMedInputError
from rcmed.io.image import MedicalImage, parse_modality
from rcmed.io.normalize import normalize


class LiteMedSAMBox:
    """The oracle baseline: LiteMedSAM given the true box of each present target."""

    name = "litemedsam-box"

    def __init__(self) -> None:
        from rcmed.model.medsam import LiteMedSAM

        self.model = LiteMedSAM.from_pretrained()

    def __call__(self, x: np.ndarray, true: np.ndarray) -> np.ndarray:
        import torch

        from rcmed.model.processing import postprocess_mask, prepare_image, prepare_mask

        pix, geom = prepare_image(x, 256)
        t = prepare_mask(true, geom)
        ys, xs = torch.nonzero(t, as_tuple=True)
        if ys.numel() == 0:
            return np.zeros(true.shape, bool)
        box = torch.tensor([[float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]])
        with torch.inference_mode():
            out = self.model.segment_boxes(self.model.encode(pix[None]), box)
        return postprocess_mask(out.masks[0, 0], geom)


class LiteMedSAMComponentBoxes:
    """The fair oracle for scattered targets: LiteMedSAM given the true box of *each connected
    component* (one box around a union of a hundred nuclei is no reference), masks united. One
    encoder pass per image; boxes decoded 64 at a time."""

    name = "litemedsam-cc-box"

    def __init__(self) -> None:
        from rcmed.model.medsam import LiteMedSAM

        self.model = LiteMedSAM.from_pretrained()
        self._cache: tuple[int, object] | None = None

    def __call__(self, x: np.ndarray, true: np.ndarray) -> np.ndarray:
        import torch

        from rcmed.model.processing import postprocess_mask, prepare_image, prepare_mask

        pix, geom = prepare_image(x, 256)
        mask = prepare_mask(true, geom) > 0
        if not bool(mask.any()):
            return np.zeros(true.shape, bool)
        key = hash(x.tobytes())
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode():
                self._cache = (key, self.model.encode(pix[None]))
        with torch.inference_mode():
            logits = self.model.segment_components(self._cache[1], mask, max_boxes=None)
        return postprocess_mask(logits, geom)


class OtsuWatershed:
    """The classical baseline for cells and nuclei: Otsu threshold (foreground = the minority
    side, so dark H&E nuclei and bright fluorescent ones both work), distance transform, local
    maxima as markers, watershed. Applies to instance targets only."""

    name = "otsu-watershed"
    instance_only = True

    def labels(self, x: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.filters import threshold_otsu
        from skimage.segmentation import watershed

        g = x if x.ndim == 2 else x[..., :3].mean(axis=-1)
        if float(g.max() - g.min()) < 1e-6:
            return np.zeros(g.shape, np.int32)
        fg = g > threshold_otsu(g)
        if fg.mean() > 0.5:
            fg = ~fg
        dist = ndi.distance_transform_edt(fg)
        peaks = peak_local_max(dist, min_distance=3, labels=ndi.label(fg)[0])
        markers = np.zeros(g.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return watershed(-dist, markers, mask=fg).astype(np.int32)

    def __call__(self, x: np.ndarray, true: np.ndarray) -> np.ndarray:
        return self.labels(x) > 0


class UNetBaseline:
    """The specialist baseline: a MONAI 2-D U-Net trained on the store's training split, one
    sigmoid channel per target name seen there, for a fixed CPU time budget (give it the budget
    RCMed had). A target name it never saw gets an empty mask."""

    name = "unet"

    def __init__(self, store: str | Path, budget_s: float = 60.0, size: int = 128, seed: int = 0,
                 weights: str | Path | None = None,
                 checkpoint: Callable[[UNetBaseline, float], None] | None = None, checkpoint_every: int = 0,
                 max_steps: int | None = None) -> None:
        """Training stops at `budget_s` seconds or at `max_steps` steps (when given), whichever comes first.
        `weights`: a file to load the trained net from when it exists (trained on the same store, size,
        budget and step limit; its header says so), else where to save it after training. `checkpoint(self, seconds)`, when
        given, is called every `checkpoint_every` training steps with the net in eval mode (to score it on the way:
        is the budget enough to converge?); the time it takes is not counted in the budget."""
        import time

        import torch
        from monai.networks.nets import UNet
        from safetensors.torch import load_file, save_file

        from rcmed.model.processing import prepare_image, prepare_mask

        self.size = size
        train = list(iter_records(store, split="train"))
        if not train:
            raise RCMedInputError(str(store), "the U-Net baseline needs a 'train' split in the store")
        self.names = sorted({n for r in train for n in r.targets} | {r.instance_target for r in train if r.instance_target})
        torch.manual_seed(seed)
        self.net = UNet(spatial_dims=2, in_channels=3, out_channels=len(self.names), channels=(16, 32, 64, 128),
                        strides=(2, 2, 2), num_res_units=1)
        self._cache: tuple[int, np.ndarray] | None = None
        meta = {"names": json.dumps(self.names), "size": str(size), "budget_s": str(budget_s), "seed": str(seed),
                "train_records": str(len(train))}
        if max_steps is not None:
            meta["max_steps"] = str(max_steps)
        if weights is not None and Path(weights).is_file():
            from safetensors import safe_open

            with safe_open(str(weights), "pt") as fh:
                if fh.metadata() != {**meta, "steps": fh.metadata().get("steps", "")}:
                    raise RCMedInputError(str(weights), "U-Net weights were trained on another store, size or budget")
                self.steps = int(fh.metadata()["steps"])
            self.net.load_state_dict(load_file(str(weights)))
            self.net.eval()
            return
        xs, ys, ws = [], [], []
        for r in train:
            s = read_sample(store, r)
            img = MedicalImage(array=s.image, modality=parse_modality(r.modality), rgb=s.image.ndim == 3)
            x, geom = prepare_image(normalize(img), size)
            y = torch.zeros(len(self.names), size, size)
            # the loss sees only the channels this record labels (present or known absent): a dataset that does not
            # outline the heart says nothing about the heart in its images
            w = torch.zeros(len(self.names))
            for n in r.absent:
                if n in self.names:
                    w[self.names.index(n)] = 1.0
            for k, n in enumerate(r.targets):
                y[self.names.index(n)] = prepare_mask(s.masks[k], geom)
                w[self.names.index(n)] = 1.0
            if s.instances is not None and r.instance_target:
                y[self.names.index(r.instance_target)] = prepare_mask(s.instances > 0, geom)
                w[self.names.index(r.instance_target)] = 1.0
            xs.append(x)
            ys.append(y)
            ws.append(w)
        x_all, y_all, w_all = torch.stack(xs), torch.stack(ys), torch.stack(ws)
        opt = torch.optim.Adam(self.net.parameters(), lr=2e-3)
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        self.steps = 0
        while time.perf_counter() - start < budget_s and (max_steps is None or self.steps < max_steps):
            idx = torch.as_tensor(rng.choice(len(x_all), size=min(8, len(x_all)), replace=False))
            logits = self.net(x_all[idx])
            p = torch.sigmoid(logits)
            y, w = y_all[idx], w_all[idx]
            inter = (p * y).sum((2, 3))
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean((2, 3))
            soft_dice = 1 - (2 * inter + 1) / (p.sum((2, 3)) + y.sum((2, 3)) + 1)
            loss = ((bce + soft_dice) * w).sum() / w.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.steps += 1
            if checkpoint is not None and checkpoint_every and self.steps % checkpoint_every == 0:
                paused = time.perf_counter()
                self.net.eval()
                self._cache = None
                checkpoint(self, paused - start)
                self.net.train()
                self._cache = None
                start += time.perf_counter() - paused
        self.net.eval()
        if weights is not None:
            Path(weights).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(weights),
                      metadata={**meta, "steps": str(self.steps)})

    def predict(self, x: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
        import torch

        from rcmed.model.processing import postprocess_mask, prepare_image

        if name not in self.names:
            return np.zeros(shape, bool)
        key = hash(x.tobytes())
        if self._cache is None or self._cache[0] != key:
            pix, geom = prepare_image(x, self.size)
            with torch.no_grad():
                logits = self.net(pix[None])[0]
            self._cache = (key, (logits, geom))  # type: ignore[assignment]
        logits, geom = self._cache[1]  # type: ignore[misc]
        return postprocess_mask(logits[self.names.index(name)], geom)
