"""Memory of `rcmed serve` under decompression bombs: small uploads that announce or inflate to huge sizes.

Each bomb is sent to a server on 127.0.0.1 while the server's resident memory is sampled every 10 ms; the
table gives the answer's status, the file's size, and the peak above the idle level, beside the peak of an
ordinary request (a 256² PNG) measured in the same run, and the ratio of each to the 1 GB bound of issue 22.
The bombs: an NPZ whose array is 1 GiB of zeros (about 1 MB compressed); a DICOM in the deflated transfer
syntax whose pixels are 8192² 16-bit zeros (128 MiB inflated); a legal 8192² PNG (64 MiB of pixels, reduced
on read); a zip of one member of 1 GiB of zeros. Temporary request folders left behind are counted.

Run: `python bench/serve_bombs.py [--model RUN/model]`. Without --model a randomly initialised tiny model is
saved to a temporary folder (what the readers do does not depend on the weights).
"""

from __future__ import annotations

import argparse
import glob
import io
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, model_folder, rss_mb  # noqa: E402

GIB = 2**30
BOUND_MB = 1024.0


def npz_bomb(path: Path) -> Path:
    """An NPZ (BiomedSegFM layout) whose `imgs` announces 1 GiB; written member by member so this bench never
    holds the GiB itself."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (1024, 1024, 1024)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("imgs.npy", "w", force_zip64=True) as fh:
            fh.write(np.lib.format.magic(1, 0) + header.getvalue())
            chunk = bytes(64 * 2**20)
            for _ in range(GIB // len(chunk)):
                fh.write(chunk)
    return path


def dicom_bomb(path: Path) -> Path:
    """A CT slice of 8192² uint16 zeros in the deflated explicit VR little endian transfer syntax."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 8192
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [0.5, 0.5], 1, -1024
    ds.PixelData = bytes(8192 * 8192 * 2)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bomb(path: Path) -> Path:
    from PIL import Image

    Image.new("L", (8192, 8192)).save(path)
    return path


def zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("series/slice.dcm", "w", force_zip64=True) as fh:
            chunk = bytes(64 * 2**20)
            for _ in range(GIB // len(chunk)):
                fh.write(chunk)
    return path


def ordinary(path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(path)
    return path


def peak_during(pid: int, send) -> tuple[object, float]:
    """(the response, the peak RSS in MB) while `send()` runs, sampled every 10 ms."""
    peak, stop = [rss_mb(pid)], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        response = send()
    finally:
        stop.set()
        t.join()
    return response, max(peak)


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rcmed-bombs-"))
    model = model_folder(args.model, tmp)
    files = {"ordinary 256² PNG": ordinary(tmp / "ordinary.png"), "NPZ announcing 1 GiB": npz_bomb(tmp / "bomb.npz"),
             "deflated DICOM, 8192² (128 MiB)": dicom_bomb(tmp / "bomb.dcm"), "PNG 8192² of zeros": png_bomb(tmp / "bomb.png"),
             "zip with 1 GiB member": zip_bomb(tmp / "bomb.zip")}
    before_tmp = set(glob.glob(str(Path(tempfile.gettempdir()) / "rcmed-req-*")))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rcmed.cli", "serve", "--model", model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(timeout=300) as client:
            def send(path: Path):
                return client.post(f"{url}/v1/segment", files={"file": (path.name, path.read_bytes())},
                                   data={"prompt": "Segment the liver."})

            send(files["ordinary 256² PNG"])  # warm: model and allocator at their working size
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            print(f"server idle RSS {idle:.0f} MB; bound {BOUND_MB:.0f} MB above idle per bomb")
            print("upload".ljust(34) + "size".rjust(10) + "status".rjust(8) + "peak above idle".rjust(18)
                  + "vs ordinary".rjust(13) + "vs bound".rjust(10))
            base = None
            for label, path in files.items():
                r, peak = peak_during(proc.pid, lambda path=path: send(path))
                above = peak - idle
                base = above if base is None else base
                ratio = f"{above / base:.1f}x" if base and base > 1 else "-"
                print(label.ljust(34) + f"{path.stat().st_size / 1e6:8.2f}MB" + f"{r.status_code:8d}"
                      + f"{above:15.0f} MB" + ratio.rjust(13) + f"{above / BOUND_MB:9.2f}x")
                time.sleep(0.5)
        left = set(glob.glob(str(Path(tempfile.gettempdir()) / "rcmed-req-*"))) - before_tmp
        print(f"temporary request folders left: {len(left)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
