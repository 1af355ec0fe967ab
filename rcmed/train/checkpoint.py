"""Checkpoints: safetensors for every tensor (trainable weights, optimizer moments, RNG states)
plus JSON for the rest (step, data position, scheduler, optimizer hyper-parameters). Written into
a temporary folder and renamed into place, so a run killed at any moment (SIGKILL included)
leaves either the previous checkpoint or the new one, never half of one. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"param_groups": state["param_groups"], "state": {}}
    for pid, st in state["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
                meta["state"][str(pid)][k] = "__tensor__"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"opt.{pid}.{k}"] if v == "__tensor__" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler, step: int, position: int, extra: dict | None = None) -> Path:
    """Write `folder` atomically: weights.safetensors, trainer.safetensors, trainer.json."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    np_state = np.random.get_state()
    rng_tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    save_file({**opt_tensors, **rng_tensors}, str(tmp / "trainer.safetensors"))
    py_state = random.getstate()
    meta = {
        "step": step, "position": position, "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        **(extra or {}),
    }
    (tmp / "trainer.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(folder: Path, optimizer: torch.optim.Optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore optimizer, scheduler and RNG states; return (weights, trainer metadata)."""
    folder = Path(folder)
    meta = json.loads((folder / "trainer.json").read_text())
    tensors = load_file(str(folder / "trainer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    n = meta["rng_numpy"]
    np.random.set_state((n[0], tensors["rng.numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    p = meta["rng_python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    return load_file(str(folder / "weights.safetensors")), meta


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (temporary folders are ignored)."""
    ckpts = sorted((Path(run) / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpts = [c for c in ckpts if (c / "trainer.json").is_file()]
    return ckpts[-1] if ckpts else None
