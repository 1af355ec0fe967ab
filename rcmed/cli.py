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

from rcmed.errors import RCMedError

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
    fmt: str = typer.Option(..., "--format", "-f", help="nnunet | biomedparse | instances | segfm"),
    out: Path = typer.Option(..., "--out", "-o", help="New store folder (must not exist or be empty)."),
    modality: Optional[str] = typer.Option(None, help="Modality when the dataset does not say it."),
    body_region: Optional[str] = typer.Option(None, help="Body region tag for every record."),
    target: Optional[str] = typer.Option(None, help="Object class name for instance folders (default: cells)."),
    keep_empty: Optional[float] = typer.Option(None, help="Fraction of empty volume slices kept as negatives (default 0.05)."),
    shard_samples: int = typer.Option(1000, help="Records per shard."),
) -> None:
    """Convert a dataset folder into a triplet store (manifest + WebDataset shards)."""
    from rcmed.data.convert import convert

    n = convert(src, fmt, out, progress=sys.stderr.isatty(), shard_samples=shard_samples, modality=modality,
                body_region=body_region, target=target, keep_empty=keep_empty)
    typer.echo(f"wrote {n} records to {out}")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
