"""Seeded mutation fuzz of every reader behind `rcmed.io.load`: valid seed files (PNG, TIFF, DICOM, NIfTI,
NPZ) written by the field's own libraries, then bytes flipped, runs overwritten, the file cut short or
grown. Every outcome must be a loaded image or an `RCMedInputError`; anything else, or a read over
`--hang-s` seconds, is counted and printed with its case.

    python bench/fuzz.py --n 2000          # mutations per reader; prints outcome counts per reader
"""

from __future__ import annotations

import argparse
import io
import random
import signal
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from rcmed.errors import RCMedInputError
from rcmed.io.readers import load


def seeds() -> dict[str, tuple[str, bytes]]:
    """Reader -> (file suffix, bytes of a small valid file)."""
    import nibabel as nib
    import tifffile
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    out: dict[str, tuple[str, bytes]] = {}
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="PNG")
    out["png"] = (".png", buf.getvalue())
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.integers(0, 4000, (24, 20), dtype=np.uint16), compression="zlib")
    out["tiff"] = (".tif", buf.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        nib.save(nib.Nifti1Image(rng.normal(0, 100, (12, 10, 4)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1])),
                 f"{tmp}/v.nii.gz")
        out["nifti"] = (".nii.gz", Path(f"{tmp}/v.nii.gz").read_bytes())
        np.savez_compressed(f"{tmp}/CT_x.npz", imgs=rng.integers(-1000, 1000, (3, 12, 10)).astype(np.int16),
                            gts=np.zeros((3, 12, 10), np.uint8), spacing=np.array([0.8, 0.8, 2.5]))
        out["npz"] = (".npz", Path(f"{tmp}/CT_x.npz").read_bytes())
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 12, 10, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.PixelSpacing = 1, -1024, [0.7, 0.7]
        ds.PixelData = rng.integers(0, 4000, (12, 10), dtype=np.uint16).tobytes()
        ds.save_as(f"{tmp}/s.dcm", enforce_file_format=True)
        out["dicom"] = (".dcm", Path(f"{tmp}/s.dcm").read_bytes())
        zbuf = io.BytesIO()  # a zipped series, as uploaded to the server
        with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("series/s1.dcm", out["dicom"][1])
            zf.writestr("series/s2.dcm", out["dicom"][1])
        out["zip"] = (".zip", zbuf.getvalue())
    return out


def _read(path: Path, tmp: Path) -> None:
    """What the server does with an upload: a zip is extracted as a series (its own checks), then loaded."""
    if path.suffix != ".zip":
        load(path)
        return
    import shutil

    from rcmed.serve.app import ServeSettings, extract_series

    dest = tmp / f"x-{path.stem}"
    dest.mkdir()
    try:
        load(extract_series(path, dest, ServeSettings()))
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, overwrite a run with a repeated byte, cut the file, append junk."""
    b = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        start = rng.randrange(len(b))
        b[start:start + rng.randint(1, 16)] = bytes([rng.choice([0, 0xFF, 0x7F, 0x80])]) * rng.randint(1, 16)
    elif kind == 2:
        del b[rng.randint(1, len(b) - 1):]
    else:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


class _Hang(Exception):
    pass


def run(n: int, seed: int = 0, hang_s: float = 10.0, readers: list[str] | None = None) -> dict[str, Counter]:
    """Outcome counts per reader: "loaded", "refused" (RCMedInputError) or the escaping exception's type."""
    def alarm(*_):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, alarm) if hasattr(signal, "SIGALRM") else None
    counts: dict[str, Counter] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (suffix, data) in seeds().items():
                if readers and name not in readers:
                    continue
                c = counts[name] = Counter()
                rng = random.Random(f"{seed}-{name}")
                for i in range(n):
                    path = Path(tmp) / f"case{i}{suffix}"
                    path.write_bytes(mutate(data, rng))
                    if old is not None:
                        signal.setitimer(signal.ITIMER_REAL, hang_s)
                    try:
                        _read(path, Path(tmp))
                        c["loaded"] += 1
                    except RCMedInputError:
                        c["refused"] += 1
                    except _Hang:
                        c["hang"] += 1
                    except Exception as err:  # noqa: BLE001 - counted, that is the point
                        c[type(err).__name__] += 1
                    finally:
                        if old is not None:
                            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="mutations per reader")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=10.0)
    args = ap.parse_args()
    t0 = time.time()
    counts = run(args.n, args.seed, args.hang_s)
    bad = 0
    print("| reader | loaded | refused (RCMedInputError) | other |")
    print("|---|---|---|---|")
    for name, c in counts.items():
        other = {k: v for k, v in c.items() if k not in ("loaded", "refused")}
        bad += sum(other.values())
        print(f"| {name} | {c['loaded']} | {c['refused']} | {other or 0} |")
    print(f"{args.n} mutations per reader in {time.time() - t0:.0f} s; {bad} outcomes other than a load or a clear refusal")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
