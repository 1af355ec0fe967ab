"""Training data for the modality head (`rcmed.model.modality`): pooled encoder features of store records.

    records of a split --normalise (by the record's modality, or as an image of unknown modality)-->
    model input (3, S, S) --frozen encoder (feature cache)--> embedding --pool--> (N, 512), labels (N,)
"""

from __future__ import annotations

import zlib

import torch

from rcmed.data.store import ShardStream
from rcmed.io.image import MedicalImage, Modality, parse_modality
from rcmed.io.normalize import normalize
from rcmed.model.modality import pooled
from rcmed.model.processing import prepare_image
from rcmed.train.feature_cache import FeatureCache


@torch.inference_mode()
def collect_pooled(model, stores: list[str], split: str, cache: FeatureCache | None, *, as_unknown: bool = False,
                   every: int = 1, seed: int = 0) -> tuple[torch.Tensor, list[str], list[str]]:
    """(features (N, 2C), modality labels, record sources) of one record in `every` of `split`.
    `as_unknown`: normalise as a caller who gave no modality would get (the generic rule), which is
    what the head sees at run time before it has named the modality."""
    feats, labels, sources = [], [], []
    size = model.config.vision.img_size
    for store in stores:
        for sample in ShardStream(store, split=split, seed=seed, epoch=0, buffer=1):
            rec = sample.record
            if every > 1 and zlib.crc32(rec.id.encode()) % every:
                continue
            mod = Modality.UNKNOWN if as_unknown else parse_modality(rec.modality)
            x = normalize(MedicalImage(array=sample.image, modality=mod, rgb=sample.image.ndim == 3))
            pix = prepare_image(x, size)[0][None]
            emb = cache.features(pix, model.encode).embedding if cache is not None else model.encode(pix).embedding
            feats.append(pooled(emb)[0])
            labels.append(parse_modality(rec.modality).value)
            sources.append(rec.source or f"phantom-{rec.modality}")
    if not feats:
        return torch.zeros(0, 2 * model.config.vision.neck_dim), [], []
    return torch.stack(feats), labels, sources
