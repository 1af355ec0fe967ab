"""The trainer: Hugging Face Accelerate drives devices, processes and mixed precision, so the same
config runs on this CPU, under `torchrun` (gloo or NCCL, DDP) or `accelerate launch` with FSDP or
DeepSpeed configs (see `configs/accelerate/`). There is no home-made distributed code here.

Run folder layout::

    RUN/train.json              the TrainConfig
    RUN/metrics.csv             one row per optimizer step: losses, lr, step and data seconds
    RUN/tensorboard/            the same, for TensorBoard
    RUN/checkpoints/step-N/     weights + optimizer + scheduler + RNG + data positions (atomic)
    RUN/model/                  the trained model (`RCMedModel.from_pretrained` reads it)
    RUN/loss.png                loss curve, written at the end
    RUN/ranks/rank-R.json       per process: record ids seen (this session), checksum of the final weights
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from rcmed.model.config import RCMedConfig
from rcmed.model.processing import build_batch
from rcmed.model.rcmed import RCMedModel
from rcmed.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rcmed.train.config import TrainConfig
from rcmed.train.data import DrawPolicy, batch_stream, example_stream

LOSS_KEYS = ("loss", "lm", "mask_bce", "mask_dice", "box_l1", "box_giou", "presence", "iou", "consistency")


def model_config(cfg: TrainConfig) -> RCMedConfig:
    base = RCMedConfig.preset(cfg.model) if not cfg.model.endswith(".json") else RCMedConfig.from_json(Path(cfg.model).read_text())
    for k, v in cfg.model_overrides.items():
        if not hasattr(base, k):
            raise ValueError(f"model_overrides: RCMedConfig has no field {k!r}")
        setattr(base, k, v)
    return base


def _schedule(optimizer, cfg: TrainConfig):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    if cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)


def weights_checksum(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """`Trainer(config).train()` runs (or, with `resume=True`, continues) a training run."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.cfg = config
        self.resume = resume
        self.run = Path(config.out)

    def train(self) -> Path:
        # Deterministic kernels make an interrupted-and-resumed run bit-identical to an
        # uninterrupted one (without them CPU reductions differ in the last bits from run to run).
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(self.cfg.deterministic, warn_only=True)
        try:
            return self._train()
        finally:
            torch.use_deterministic_algorithms(previous)

    def _train(self) -> Path:
        """Set up, run the steps (each logged; a checkpoint every `save_every`), save: one Accelerate process."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        cfg = self.cfg
        if not cfg.data:
            raise ValueError("no training data: set `data` to one or more built stores (rcmed data build)")
        # cpu=True on a machine without accelerators: Accelerate then treats a torchrun launch as
        # MULTI_CPU with the gloo backend (otherwise each process would train alone).
        acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                          cpu=not torch.cuda.is_available(),
                          kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        set_seed(cfg.seed)
        if acc.is_main_process:
            self.run.mkdir(parents=True, exist_ok=True)
            (self.run / "train.json").write_text(cfg.to_json())
        model, optimizer, scheduler, step, positions = self._setup(acc)
        core: RCMedModel = acc.unwrap_model(model)
        params = [p for p in model.parameters() if p.requires_grad]
        rank = acc.process_index
        stream = example_stream(cfg.data, cfg.stage, cfg.seed, start=positions[rank], rank=rank,
                                world_size=acc.num_processes, split=cfg.split, buffer=cfg.shuffle_buffer,
                                policy=DrawPolicy(cfg.task_weights, cfg.absent_fraction, cfg.target_weights))
        size = core.config.vision.img_size
        batches = batch_stream(stream, cfg.batch_size, lambda exs: build_batch(core.processor, exs, size), cfg.prefetch)
        cache = self._feature_cache(core)
        log = _MetricsLog(self.run, cfg, step) if acc.is_main_process else None
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.stage}", unit="step",
                   disable=not acc.is_main_process or not sys.stderr.isatty())
        seen: list[str] = []
        model.train()
        while step < cfg.steps:
            t0 = time.perf_counter()
            sums, data_s, position = self._step(acc, model, core, optimizer, scheduler, params, batches, cache, seen)
            step += 1
            step_s = time.perf_counter() - t0
            all_pos = acc.gather(torch.tensor([position])).tolist()
            if log is not None and step % cfg.log_every == 0:
                log.write(step, sums, scheduler.get_last_lr()[0], step_s, data_s,
                          cfg.batch_size * cfg.grad_accum * acc.num_processes / step_s)
            bar.set_postfix(loss=f"{sums['loss']:.3f}", step_s=f"{step_s:.2f}")
            bar.update(1)
            if step % cfg.save_every == 0 or step == cfg.steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(self.run / "checkpoints" / f"step-{step:07d}", core.trainable_state_dict(), optimizer,
                                    scheduler, step, all_pos[0], extra={"positions": all_pos})
                    _prune(self.run, cfg.keep_checkpoints)
        bar.close()
        batches.close()  # stops the prefetch thread
        self._finish(acc, core, seen, log)
        return self.run / "model"

    def _setup(self, acc) -> tuple:
        """(model, optimizer, scheduler) prepared by Accelerate, from `init_from` or the last checkpoint when
        resuming, with the step and the per-process data positions to go on from."""
        cfg = self.cfg
        model = RCMedModel(model_config(cfg))
        if cfg.init_from:
            _load_trainable(model, Path(cfg.init_from))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        scheduler = _schedule(optimizer, cfg)
        step, positions = 0, [0] * acc.num_processes
        ckpt = latest_checkpoint(self.run) if self.resume else None
        if self.resume and ckpt is None:
            raise ValueError(f"{self.run}: no checkpoint to resume from")
        if ckpt is not None:
            weights, meta = load_checkpoint(ckpt, optimizer, scheduler)
            model.load_trainable(weights)
            step, positions = meta["step"], meta["positions"]
            acc.print(f"resuming {self.run.name} at step {step}")
        model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        return model, optimizer, scheduler, step, positions

    def _feature_cache(self, core: RCMedModel):
        """The frozen encoder's feature cache of `feature_cache`, or None."""
        if not self.cfg.feature_cache:
            return None
        if not core.config.freeze_vision:
            raise ValueError("feature_cache needs a frozen encoder (model_overrides freeze_vision: true)")
        from rcmed.train.feature_cache import FeatureCache

        return FeatureCache(self.cfg.feature_cache, core.image_encoder)

    def _step(self, acc, model, core: RCMedModel, optimizer, scheduler, params, batches, cache,
              seen: list[str]) -> tuple[dict[str, float], float, int]:
        """One optimizer update over `grad_accum` micro-batches: (mean loss terms, seconds waiting for data,
        the data position after it). The record ids drawn are appended to `seen`."""
        cfg = self.cfg
        data_s, position = 0.0, 0
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        for _ in range(cfg.grad_accum):
            td = time.perf_counter()
            batch, position, ids = next(batches)
            seen += ids
            if cache is not None:
                batch.features = cache.features(batch.pixel_values, core.encode)
            data_s += time.perf_counter() - td
            with acc.accumulate(model):
                out = model(batch)
                acc.backward(out["loss"])
                if acc.sync_gradients and cfg.clip_grad > 0:
                    acc.clip_grad_norm_(params, cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            for k in LOSS_KEYS:
                sums[k] += float(out[k].detach()) / cfg.grad_accum
        return sums, data_s, position

    def _finish(self, acc, core: RCMedModel, seen: list[str], log: "_MetricsLog | None") -> None:
        """Each process writes what it saw and its weights' checksums (ranks/); the main one saves the model,
        its targets and the loss plot."""
        acc.wait_for_everyone()
        final = core.trainable_state_dict()
        ranks = self.run / "ranks"
        ranks.mkdir(parents=True, exist_ok=True)
        params = {k: v for k, v in final.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        # BatchNorm statistics are per process under DDP (synchronised from rank 0 at each forward),
        # so replicas are compared on parameters; `checksum` covers everything rank 0 saves.
        (ranks / f"rank-{acc.process_index}.json").write_text(json.dumps(
            {"records_seen": seen, "checksum": weights_checksum(final), "params_checksum": weights_checksum(params)}))
        if log is not None:
            log.close()
            core.save_pretrained(self.run / "model")
            write_targets(self.cfg, self.run / "model" / "targets.json")
            plot_losses(self.run / "metrics.csv", self.run / "loss.png")
        acc.wait_for_everyone()
        acc.end_training()


class _MetricsLog:
    """The main process's log: one row per step in RUN/metrics.csv (appended to when resuming) and, with
    `tensorboard`, the same scalars in RUN/tensorboard."""

    def __init__(self, run: Path, cfg: TrainConfig, step: int) -> None:
        path = run / "metrics.csv"
        new_file = not path.exists()
        self.fh = open(path, "a", newline="")
        self.writer = csv.writer(self.fh)
        if new_file:
            self.writer.writerow(["step", *LOSS_KEYS, "lr", "step_s", "data_s", "samples_per_s"])
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"), purge_step=step + 1 if step else None)

    def write(self, step: int, sums: dict[str, float], lr: float, step_s: float, data_s: float, samples_per_s: float) -> None:
        self.writer.writerow([step, *(round(sums[k], 6) for k in LOSS_KEYS), lr, round(step_s, 4), round(data_s, 4),
                              round(samples_per_s, 2)])
        self.fh.flush()
        if self.tb is not None:
            for k in LOSS_KEYS:
                self.tb.add_scalar(f"loss/{k}", sums[k], step)
            self.tb.add_scalar("lr", lr, step)
            self.tb.add_scalar("time/step_s", step_s, step)
            self.tb.add_scalar("time/data_s", data_s, step)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def write_targets(cfg: TrainConfig, path: Path) -> None:
    """The target names the run trained on, per modality (`rcmed describe` looks for these by default)."""
    from rcmed.data.store import iter_records

    names: dict[str, set[str]] = {}
    for store in cfg.data:
        for r in iter_records(store, split=cfg.split):
            names.setdefault(r.modality, set()).update(r.targets, [r.instance_target] if r.instance_target else [])
    path.write_text(json.dumps({m: sorted(v) for m, v in sorted(names.items())}, indent=1) + "\n")


def _load_trainable(model: RCMedModel, folder: Path) -> None:
    """Start from a previous stage: a model folder (model.safetensors) or a checkpoint folder."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "weights.safetensors", "model/model.safetensors"):
        if (folder / name).is_file():
            model.load_trainable(dict(load_file(str(folder / name))))
            return
    raise ValueError(f"{folder}: no model.safetensors or weights.safetensors to start from")


def _prune(run: Path, keep: int) -> None:
    import shutil

    ckpts = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def plot_losses(metrics: Path, out: Path) -> None:
    """Total and component losses per step, log scale, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(metrics)))
    if not rows:
        return
    import numpy as np

    steps = np.array([int(r["step"]) for r in rows])
    win = max(1, len(rows) // 40)  # moving average: per-step losses of mixed tasks are noisy
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in LOSS_KEYS:
        vals = np.maximum(np.array([float(r[key]) for r in rows]), 1e-6)
        if not (vals > 1e-6).any():
            continue
        smooth = np.convolve(vals, np.ones(win) / win, mode="valid")
        line = ax.plot(steps[win - 1:], smooth, label=key, linewidth=2 if key == "loss" else 1)[0]
        if key == "loss":
            ax.plot(steps, vals, color=line.get_color(), alpha=0.2, linewidth=0.5)
    ax.set_yscale("log")
    ax.set_xlabel(f"step (moving average over {win} steps)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
