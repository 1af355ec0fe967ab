"""HTTP API and web page (FastAPI): `rcmed serve`.

Endpoints: `GET /v1/health`, `GET /v1/model`, `POST /v1/segment`, `POST /v1/ask` (multipart:
`file` = an image, a NIfTI, or a zip of one DICOM series; `prompt`; optional `box` "x0,y0,x1,y1"),
and `GET /` (the web page). Masks come back as run-length encodings (see `rle_encode`) and the
overlay as a base64 PNG.

Limits, all enforced before inference: upload size, decompressed zip size and member count,
image size (the readers' header checks), prompt length, a per-request timeout, and a bounded
inference queue that answers 503 with Retry-After when full. Optional bearer-token auth. Client
file names never touch the filesystem (only a whitelisted extension is kept); temporary files
live in a per-request temporary folder that is always removed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import tempfile
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile  # module level: FastAPI resolves annotations here
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from rcmed.errors import CorruptFileError, ImageTooLargeError, LimitExceededError, RCMedError, RCMedInputError
from rcmed.io.image import parse_modality
from rcmed.io.limits import ReadLimits
from rcmed.overlay import PALETTE
from rcmed.predictor import Answer, Predictor

ALLOWED_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".npz", ".zip")


@dataclass
class ServeSettings:
    max_upload_bytes: int = 64 * 2**20
    max_unzipped_bytes: int = 1 * 2**30
    max_zip_members: int = 5000
    max_pixels: int = 8192 * 8192  # per image or volume, checked from the header before decoding
    timeout_s: float = 120.0
    queue_size: int = 4
    token: str | None = None


class InferenceQueue:
    """At most `size` requests in the building (running + waiting); one runs at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._count = 0
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcmed-infer")

    def try_enter(self) -> bool:
        with self._lock:
            if self._count >= self.size:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._count -= 1


def rle_encode(mask: np.ndarray) -> dict[str, object]:
    """Row-major run lengths of a boolean mask, starting with a (possibly empty) run of zeros:
    {"size": [H, W] (or [D, H, W]), "counts": [zeros, ones, zeros, ...]}."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def rle_decode(rle: dict[str, object]) -> np.ndarray:
    size = [int(s) for s in rle["size"]]  # type: ignore[union-attr]
    out = np.zeros(int(np.prod(size)), bool)
    pos, val = 0, False
    for n in rle["counts"]:  # type: ignore[union-attr]
        if val:
            out[pos: pos + int(n)] = True
        pos += int(n)
        val = not val
    return out.reshape(size)


def _suffix(name: str) -> str:
    low = (name or "").lower()
    for s in sorted(ALLOWED_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return s
    raise RCMedInputError("file", f"unsupported upload type; send one of {', '.join(ALLOWED_SUFFIXES)}")


def extract_series(zip_path: Path, dest: Path, settings: ServeSettings) -> Path:
    """Extract a zipped DICOM series safely: sizes checked from the directory first, member
    names replaced by counters (no client path reaches the filesystem)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError):
        raise RCMedInputError("file", "not a readable zip archive") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > settings.max_zip_members:
            raise LimitExceededError("file", f"zip holds {len(members)} files; the limit is {settings.max_zip_members}")
        total = sum(m.file_size for m in members)
        if total > settings.max_unzipped_bytes:
            raise LimitExceededError("file", f"zip expands to {total:,} bytes; the limit is {settings.max_unzipped_bytes:,}")
        folder = dest / "series"
        folder.mkdir()
        written = 0
        for k, m in enumerate(members):
            with open(folder / f"{k:06d}.dcm", "wb") as dst:
                try:
                    with zf.open(m) as src:
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > settings.max_unzipped_bytes:  # the directory lied about sizes
                                raise LimitExceededError("file", "zip expands beyond the size limit")
                            dst.write(chunk)
                # a bad CRC, a cut deflate stream, a lying local header (a failed write into the request's own
                # temporary folder would read as damage too)
                except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
                    raise CorruptFileError("file", f"damaged zip archive ({exc.__class__.__name__})") from None
                except (NotImplementedError, RuntimeError) as exc:  # unknown compression, encrypted member
                    raise RCMedInputError("file", f"zip member cannot be read: {str(exc)[:120]}") from None
    return folder


def _overlay_pngs(image, answer: Answer, max_slices: int = 64) -> tuple[list[str], list[str]]:
    """Base64 PNGs of the image and of the image with masks: one for a 2-D image, one per axial
    slice for a volume (evenly subsampled to at most `max_slices`, for the page's slice slider)."""
    from PIL import Image

    from rcmed.io.normalize import normalize
    from rcmed.io.slices import to_slices
    from rcmed.overlay import paint

    def png(rgb: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    masks = [t.mask for t in answer.targets if t.mask is not None]
    if not image.is_volume:
        base = normalize(image)
        return [png(paint(base, []))], [png(paint(base, masks, alpha=0.6))]
    stack = to_slices(image)
    norm = normalize(image.with_array(stack.slices))
    mstacks = [to_slices(image.with_array(m)).slices for m in masks]
    picks = np.unique(np.linspace(0, len(stack) - 1, min(len(stack), max_slices)).round().astype(int))
    return ([png(paint(norm[k], [])) for k in picks], [png(paint(norm[k], [m[k] for m in mstacks], alpha=0.6)) for k in picks])


class BodyLimit:
    """ASGI middleware: counts request body bytes as they arrive and answers 413 once they pass `limit`,
    whether or not a Content-Length was sent (chunked uploads). Starlette spools a multipart body to a
    temporary file before the route runs, so the route's own cap would come after the whole body was
    written to disk; this stops reading the stream instead (the app sees a disconnect, and whatever it
    would answer to that is replaced by the 413)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        total = 0
        state = {"over": False, "answered": False}

        async def counted():
            nonlocal total
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def answer_413():
            if not state["answered"]:
                state["answered"] = True
                await JSONResponse({"error": f"request body over {self.limit:,} bytes; uploads are limited"},
                                   status_code=413, headers={"Connection": "close"})(scope, receive, send)

        async def guarded(message):
            if state["over"]:
                await answer_413()  # instead of the app's answer to the cut stream
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not state["over"]:
                raise
        if state["over"]:
            await answer_413()


def _parse_points(text: str) -> list[list[float]]:
    """'x,y,label;x,y,label' -> [[x, y, label], ...] (label 1 inside, 0 outside), at most 64 points."""
    out = []
    for part in text.strip().strip(";").split(";"):
        try:
            x, y, lab = (float(v) for v in part.split(","))
        except ValueError:
            raise RCMedInputError("points", "points must be 'x,y,label;x,y,label' with label 1 (inside) or 0 (outside)") from None
        if lab not in (0.0, 1.0) or not (np.isfinite(x) and np.isfinite(y)):
            raise RCMedInputError("points", f"bad point {part!r}: finite x, y and a label of 1 or 0")
        out.append([x, y, lab])
    if not out or len(out) > 64:
        raise RCMedInputError("points", f"{len(out)} points; give 1 to 64")
    return out


def _examples() -> dict[str, dict[str, object]]:
    """The bundled demo samples (rcmed/samples/demo/demo.json) that exist, by file name."""
    import json

    folder = Path(__file__).resolve().parents[1] / "samples" / "demo"
    try:
        cases = json.loads((folder / "demo.json").read_text())
    except (OSError, ValueError):
        return {}
    return {c["file"]: {**c, "path": folder / c["file"]} for c in cases if (folder / c["file"]).is_file()}


async def save_upload(file: UploadFile, folder: Path, cfg: ServeSettings) -> Path:
    """The upload written into `folder` in chunks, refused past `cfg.max_upload_bytes`; a zip is extracted
    (`extract_series`). Returns the file (or series folder) to read."""
    suffix = _suffix(file.filename or "")
    path = folder / f"upload{suffix}"
    size = 0
    with open(path, "wb") as fh:
        while chunk := await file.read(1 << 20):
            size += len(chunk)
            if size > cfg.max_upload_bytes:
                raise LimitExceededError("file", f"upload larger than {cfg.max_upload_bytes:,} bytes")
            fh.write(chunk)
    if size == 0:
        raise RCMedInputError("file", "empty upload")
    return extract_series(path, folder, cfg) if suffix == ".zip" else path


def infer(predictor: Predictor, cfg: ServeSettings, path: Path, prompt: str, box: list[float] | None, with_masks: bool,
          modality: str | None = None, points: list[list[float]] | None = None) -> dict[str, object]:
    """Read the upload at `path` within `cfg`'s limits and answer `prompt` on it: the answer.json fields, with
    `prompts` (box and points in image pixels) and, `with_masks`, per target its run-length mask and overlay
    colour, plus the image and overlay PNGs (base64; per axial slice too for a volume)."""
    from rcmed.io.readers import load

    image = load(path, modality=modality, limits=ReadLimits(max_voxels=cfg.max_pixels, max_side=16384,
                                                           max_bytes=cfg.max_pixels * 4))
    answer = predictor.answer(image, prompt, boxes=[box] if box else None,
                              points=[p[:2] for p in points] if points else None,
                              point_labels=[int(p[2]) for p in points] if points else None)
    data = predictor.answer_json(answer)
    # what reached the model, in image pixels (the page draws in screen pixels and converts)
    data["prompts"] = {"box": box, "points": points}
    if with_masks:
        colour = iter(PALETTE)  # the overlay paints the found targets in palette order
        for t, d in zip(answer.targets, data["targets"], strict=True):  # type: ignore[arg-type]
            d["mask"] = None
            d["mask_rle"] = rle_encode(t.mask) if t.mask is not None else None
            d["colour"] = "#%02x%02x%02x" % next(colour)[1] if t.mask is not None else None
        images, overlays = _overlay_pngs(image, answer)
        # one PNG each for a 2-D image; for a volume, lists over axial slices (middle one first)
        data["image_png"], data["overlay_png"] = images[len(images) // 2], overlays[len(overlays) // 2]
        if image.is_volume:
            data["slices"] = {"image_png": images, "overlay_png": overlays}
    return data


def _parse_fields(prompt: str, modality: str | None, box: str | None,
                  points: str | None) -> tuple[str | None, list[float] | None, list[list[float]] | None]:
    """The form fields checked: (modality or None, box [x0, y0, x1, y1] or None, points or None); anything
    wrong is an `RCMedInputError` (a 400 naming the field)."""
    if not prompt or not prompt.strip():
        raise RCMedInputError("prompt", "empty prompt")
    modality = (modality or "").strip() or None
    if modality is not None:
        parse_modality(modality)  # an unknown name is a 400 naming the valid ones
    box_v = None
    if box:
        try:
            box_v = [float(v) for v in box.split(",")]
        except ValueError:
            raise RCMedInputError("box", "box must be 'x0,y0,x1,y1'") from None
        if len(box_v) != 4:
            raise RCMedInputError("box", "box must have four numbers x0,y0,x1,y1")
    return modality, box_v, _parse_points(points) if points else None


def create_app(predictor: Predictor, settings: ServeSettings | None = None):
    """The FastAPI app around one loaded predictor."""
    from rcmed import __version__

    cfg = settings or ServeSettings()
    queue = InferenceQueue(cfg.queue_size)
    lock = threading.Lock()
    app = FastAPI(title="RCMed", version=__version__, description="Medical vision-language assistant: text + masks.")
    app.state.queue = queue
    app.add_middleware(BodyLimit, limit=cfg.max_upload_bytes + 2**20)  # multipart overhead allowed

    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # Refuse an announced oversize body before it is received (multipart overhead allowed).
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_upload_bytes + 2**20:
            return _error(413, f"request body of {int(length):,} bytes; uploads are limited to {cfg.max_upload_bytes:,} bytes")
        if cfg.token and request.url.path.startswith("/v1/") and request.url.path != "/v1/health":
            if request.headers.get("authorization") != f"Bearer {cfg.token}":
                return _error(401, "missing or wrong bearer token")
        return await call_next(request)

    @app.get("/v1/health")
    async def health() -> dict[str, object]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict[str, object]:
        c = predictor.model.config
        return {"name": predictor.name, "version": __version__, "sha256": predictor.sha256,
                "card": {"config": c.name, "lm": c.lm, "image_size": c.vision.img_size, "loop_rounds": c.loop_rounds}}

    def _infer(path: Path, prompt: str, box: list[float] | None, with_masks: bool,
               modality: str | None = None, points: list[list[float]] | None = None) -> dict[str, object]:
        with lock:  # the predictor holds one image at a time
            return infer(predictor, cfg, path, prompt, box, with_masks, modality, points)

    async def _handle(file: UploadFile, prompt: str, box: str | None, with_masks: bool, modality: str | None = None,
                      points: str | None = None):
        if not queue.try_enter():
            return _error(503, "inference queue full; retry later", {"Retry-After": "5"})
        still_running = False  # after a 504 the slot is freed only when the inference itself ends
        try:
            modality, box_v, points_v = _parse_fields(prompt, modality, box, points)
            with tempfile.TemporaryDirectory(prefix="rcmed-req-") as tmp:
                path = await save_upload(file, Path(tmp), cfg)
                job = queue.executor.submit(_infer, path, prompt, box_v, with_masks, modality, points_v)
                try:
                    return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), timeout=cfg.timeout_s)
                except asyncio.TimeoutError:
                    # a job still waiting is dropped; one already running cannot be stopped, so it keeps its
                    # slot until it ends: `queue_size` bounds the work, not only the open requests
                    if not job.cancel():
                        still_running = True
                        job.add_done_callback(lambda _: queue.leave())
                    return _error(504, f"inference took longer than {cfg.timeout_s:g} s")
        except RCMedError as exc:
            status = 413 if isinstance(exc, (LimitExceededError, ImageTooLargeError)) else 400
            return _error(status, str(exc))
        finally:
            if not still_running:
                queue.leave()

    @app.post("/v1/segment")
    async def segment(file: UploadFile = File(...), prompt: str = Form(...), box: str | None = Form(None),
                      modality: str | None = Form(None), points: str | None = Form(None)):
        """Segment what the prompt names. Returns answer.json fields plus `mask_rle` and `colour` (its colour
        in the overlay) per target, `overlay_png` (base64) and `prompts` (the box and points used, image
        pixels). `modality` (optional; "ct", "mri", ...): without it, a DICOM's own tag is used, else the
        model recognises it. `box`: "x0,y0,x1,y1"; `points`: "x,y,label;x,y,label" (label 1 inside, 0
        outside), image pixels."""
        return await _handle(file, prompt, box, with_masks=True, modality=modality, points=points)

    examples = _examples()

    @app.get("/v1/examples")
    async def example_list() -> list[dict[str, str]]:
        """The bundled sample images the page offers as one-click examples."""
        return [{k: e[k] for k in ("file", "modality", "prompt")} for e in examples.values()]

    @app.get("/v1/examples/{name}")
    async def example_file(name: str):
        if name not in examples:  # only listed files: no path from the request reaches the file system
            return _error(404, f"no example {name!r}")
        return FileResponse(examples[name]["path"], filename=name)

    @app.post("/v1/ask")
    async def ask(file: UploadFile = File(...), prompt: str = Form(...), modality: str | None = Form(None)):
        """Ask about an image; returns the answer text and targets (no masks)."""
        return await _handle(file, prompt, None, with_masks=False, modality=modality)

    page = (Path(__file__).parent / "static" / "index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None) -> None:
    import uvicorn

    cfg = settings or ServeSettings()
    cfg.token = cfg.token or os.environ.get("RCMED_TOKEN") or None
    app = create_app(Predictor.from_pretrained(model), cfg)
    uvicorn.run(app, host=host, port=port, log_level="info")
