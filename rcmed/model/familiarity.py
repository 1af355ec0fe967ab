"""Familiarity: is this image like the images the model learnt a target from?

A model trained on DSB-2018's fluorescence nuclei paints specks all over a phase-contrast photograph of one
cell, and one trained on Drishti-GS1's disc-centred crops calls the optic disc absent on a whole-retina
photograph. The mask (or the "not found") is then a guess, and the user cannot tell. This module measures how far
an image lies from the training images of the target asked, with the features the model computes anyway, so the
answer can say "this image is unlike the images I learnt the X from" beside its mask.

    embedding (1, 256, 64, 64) --mean and max over space (`rcmed.model.modality.pooled`)--> (512,)
      --standardise, PCA (k components, fitted on every training image)--> z (k,)
      --per target: Mahalanobis distance to each of its groups (each real dataset, phantoms of each modality),
        the smallest-->
      d / (the group's median distance over its own training images) = familiarity ratio

A Gaussian in a low-dimensional projection of the encoder's features, with a shrunk covariance (Ledoit-Wolf,
from scikit-learn), is the classic feature-space out-of-distribution score (Lee et al., "A simple unified framework
for detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018); with a few dozen images per target
a full 512-d covariance could not be estimated, hence the projection. Each target keeps one Gaussian per group of
the images it was taught on (each real dataset; the phantoms of each modality), so an image near any of them counts
as familiar (nuclei were taught on fluorescence microscopy and on H&E: one Gaussian around both would be wide). The ratio
to the group's own median makes one cut serve every target; the cut is chosen on validation images
(`scripts/train_default.py familiarity`), and saved with the statistics in `familiarity.safetensors` beside the
model. Only aggregate statistics are saved (means, precisions, medians), nothing of any one image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rcmed.model.modality import pooled

FILE = "familiarity.safetensors"
COMPONENTS = 16  # PCA components of the pooled features (fixed before any measurement: Gaussians of a few dozen images)
MIN_IMAGES = 8  # fewer training images than this in a group: no Gaussian for it


def features(embedding: torch.Tensor) -> np.ndarray:
    """(B, C, h, w) encoder embedding -> (B, 2C) pooled features (`rcmed.model.modality.pooled`), as the statistics
    are fitted on."""
    return pooled(embedding.float()).numpy()


def _distances(z: np.ndarray, centre: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N,) Mahalanobis distances of (N, k) projected features to one Gaussian."""
    d = z - centre
    return np.sqrt(np.einsum("ni,ij,nj->n", d, precision, d))


@dataclass
class Familiarity:
    """Per-target Gaussians over projected encoder features. `keys`: one per Gaussian, "name|group"."""

    mean: np.ndarray  # (512,) standardisation of the pooled features
    std: np.ndarray  # (512,)
    basis: np.ndarray  # (k, 512) PCA components
    keys: list[str]
    centres: np.ndarray  # (G, k)
    precisions: np.ndarray  # (G, k, k)
    medians: np.ndarray  # (G,) median distance of the group's own training images
    images: np.ndarray  # (G,) training images per group
    cut: float = float("inf")  # familiarity ratio above which an image is unfamiliar (chosen on validation)

    def project(self, feats: np.ndarray) -> np.ndarray:
        """(N, 512) pooled features -> (N, k)."""
        return ((np.asarray(feats, np.float64) - self.mean) / self.std) @ self.basis.T

    def ratios(self, feats: np.ndarray, name: str) -> np.ndarray | None:
        """(N,) familiarity ratios of (N, 512) pooled features for target `name` (the smallest over its groups), or
        None when the model holds no statistics for `name` (never taught, or on too few images)."""
        rows = [g for g, k in enumerate(self.keys) if k.split("|")[0] == name]
        if not rows:
            return None
        z = self.project(feats)
        return np.min([_distances(z, self.centres[g], self.precisions[g]) / self.medians[g] for g in rows], axis=0)

    def check(self, feats: np.ndarray, name: str) -> tuple[float, bool] | None:
        """(1, 512) pooled features of one image (`features`) -> (familiarity ratio, familiar?) for target `name`,
        None when unknown."""
        r = self.ratios(feats, name)
        return None if r is None else (float(r[0]), bool(r[0] <= self.cut))

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        from rcmed.io.atomic import atomic_path

        path = Path(folder) / FILE
        arrays = {"mean": self.mean, "std": self.std, "basis": self.basis, "centres": self.centres,
                  "precisions": self.precisions, "medians": self.medians, "images": self.images}
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}, str(tmp),
                      metadata={"keys": json.dumps(self.keys), "cut": repr(float(self.cut))})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "Familiarity | None":
        """The statistics saved in `folder`, or None when it has none. A damaged file raises ValueError."""
        from safetensors import safe_open

        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata()
                a = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
            keys = [str(k) for k in json.loads(meta["keys"])]
            fam = cls(mean=a["mean"], std=a["std"], basis=a["basis"], keys=keys, centres=a["centres"],
                      precisions=a["precisions"], medians=a["medians"], images=a["images"], cut=float(meta["cut"]))
            if not (len(keys) == len(fam.centres) == len(fam.precisions) == len(fam.medians)
                    and fam.basis.shape[1] == fam.mean.shape[0] and fam.centres.shape[1] == fam.basis.shape[0]):
                raise ValueError("the arrays do not agree in size")
        except Exception as err:  # noqa: BLE001 - any damage is one clear message
            raise ValueError(f"{path}: not familiarity statistics ({type(err).__name__}: {err})") from None
        return fam


def fit(feats: np.ndarray, groups: list[list[str]], components: int = COMPONENTS,
        min_images: int = MIN_IMAGES) -> Familiarity:
    """Statistics from (N, 512) pooled features of training images; `groups[i]`: the keys ("name|group") image i
    counts for (each target it holds, with the group of its source: the real dataset, or "phantom-<modality>"). The PCA is fitted on every
    image; each key with at least `min_images` images gets a Gaussian (Ledoit-Wolf covariance). The cut stays
    infinite until `choose_cut` sets it on validation images."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    x = np.asarray(feats, np.float64)
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)
    pca = PCA(n_components=min(components, len(x) - 1), random_state=0).fit((x - mean) / std)
    fam = Familiarity(mean=mean, std=std, basis=pca.components_, keys=[], centres=np.zeros((0, pca.n_components_)),
                      precisions=np.zeros((0, pca.n_components_, pca.n_components_)), medians=np.zeros(0),
                      images=np.zeros(0))
    z = fam.project(x)
    keys, centres, precisions, medians, images = [], [], [], [], []
    for key in sorted({k for g in groups for k in g}):
        rows = [i for i, g in enumerate(groups) if key in g]
        if len(rows) < min_images:
            continue
        lw = LedoitWolf().fit(z[rows])
        dist = _distances(z[rows], lw.location_, lw.precision_)
        keys.append(key)
        centres.append(lw.location_)
        precisions.append(lw.precision_)
        medians.append(max(float(np.median(dist)), 1e-6))
        images.append(len(rows))
    fam.keys, fam.centres, fam.precisions = keys, np.array(centres), np.array(precisions)
    fam.medians, fam.images = np.array(medians), np.array(images, np.float64)
    return fam


def choose_cut(ratios: list[float] | np.ndarray, keep: float) -> float:
    """The cut that calls `keep` (a share, e.g. 0.95) of validation images familiar: their `keep` quantile."""
    r = np.asarray(ratios, np.float64)
    if r.size == 0 or not 0 < keep <= 1:
        raise ValueError("choose_cut needs validation ratios and 0 < keep <= 1")
    return float(np.quantile(r, keep))
