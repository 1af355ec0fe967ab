"""The HTTP API on the trained tiny model: answers, limits, auth, overload and bad input."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rcmed.data.synth import synth
from rcmed.io.normalize import normalize
from rcmed.predictor import Predictor
from rcmed.serve.app import ServeSettings, create_app, rle_decode, rle_encode


@pytest.fixture(scope="module")
def predictor(tiny_trained) -> Predictor:
    return Predictor.from_pretrained(tiny_trained)


def _client(predictor, **kw) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(**kw)))


def _png(seed: int = 2, size: int = 64) -> bytes:
    ph = synth("ct", seed, size=size)
    buf = io.BytesIO()
    Image.fromarray((normalize(ph.image) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for m in (rng.random((7, 9)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        np.testing.assert_array_equal(rle_decode(rle_encode(m)), m)


def test_health_model_page_and_segment(predictor):
    c = _client(predictor)
    assert c.get("/v1/health").json() == {"status": "ok"}
    info = c.get("/v1/model").json()
    assert info["sha256"] == predictor.sha256 and info["card"]["config"] == "tiny"
    assert "<title>RCMed</title>" in c.get("/").text
    assert "/v1/segment" in c.get("/openapi.json").json()["paths"]
    r = c.post("/v1/segment", files={"file": ("scan.png", _png(), "image/png")}, data={"prompt": "Segment the liver."})
    assert r.status_code == 200, r.text
    d = r.json()
    (t,) = d["targets"]
    assert t["name"] == "liver" and t["present"]
    mask = rle_decode(t["mask_rle"])
    assert mask.shape == (64, 64) and mask.any() and d["overlay_png"] and d["image_png"]
    r = c.post("/v1/ask", files={"file": ("scan.png", _png(), "image/png")}, data={"prompt": "Segment the tumour."})
    assert r.status_code == 200 and r.json()["targets"][0]["present"] is False


def test_bad_input_gets_4xx_and_the_server_keeps_serving(predictor):
    c = _client(predictor, max_upload_bytes=200_000)
    cases = [
        ({"file": ("x.png", b"not a png at all", "image/png")}, {"prompt": "liver"}, 400),
        ({"file": ("x.exe", b"MZ....", "application/octet-stream")}, {"prompt": "liver"}, 400),
        ({"file": ("x.png", _png(), "image/png")}, {"prompt": "   "}, 400),
        ({"file": ("x.png", _png(), "image/png")}, {"prompt": "liver " * 20000}, 400),
        ({"file": ("x.png", b"\0" * 300_000, "image/png")}, {"prompt": "liver"}, 413),
        ({"file": ("x.png", b"\0" * 3_000_000, "image/png")}, {"prompt": "liver"}, 413),
        ({"file": ("x.png", _png(), "image/png")}, {"prompt": "liver", "box": "1,2,3"}, 400),
    ]
    for files, data, status in cases:
        r = c.post("/v1/segment", files=files, data=data)
        assert r.status_code == status, (data, r.text)
        assert "error" in r.json()
    assert c.post("/v1/segment", files={"file": ("x.png", _png(), "image/png")}, data={"prompt": "Segment the liver."}).status_code == 200


def test_zip_bomb_and_path_names_are_refused(predictor):
    c = _client(predictor, max_unzipped_bytes=1_000_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../../etc/evil.dcm", b"\0" * 5_000_000)  # compresses to a few kB
    r = c.post("/v1/segment", files={"file": ("series.zip", buf.getvalue(), "application/zip")}, data={"prompt": "liver"})
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_token_and_overload(predictor):
    c = _client(predictor, token="s3cret", queue_size=1)
    files = {"file": ("x.png", _png(), "image/png")}
    assert c.post("/v1/segment", files=files, data={"prompt": "liver"}).status_code == 401
    assert c.get("/v1/health").status_code == 200
    ok = {"Authorization": "Bearer s3cret"}
    queue = c.app.state.queue
    assert queue.try_enter()  # occupy the only slot, as a long-running request would
    try:
        r = c.post("/v1/segment", files=files, data={"prompt": "liver"}, headers=ok)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    finally:
        queue.leave()
    assert c.post("/v1/segment", files=files, data={"prompt": "Segment the liver."}, headers=ok).status_code == 200


def test_dicom_series_zip_and_nifti_volume(predictor, ct_series, tmp_path):
    folder, hu = ct_series
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, arcname=f"nested/dir/{f.name}")
    c = _client(predictor)
    r = c.post("/v1/segment", files={"file": ("study.zip", buf.getvalue(), "application/zip")}, data={"prompt": "Segment the liver."})
    assert r.status_code == 200, r.text
    d = r.json()
    assert len(d["slices"]["image_png"]) == hu.shape[0]
    for t in d["targets"]:
        if t["mask_rle"] is not None:
            assert tuple(t["mask_rle"]["size"]) == hu.shape  # in the series' own voxel order
    from tests.conftest import PHI

    for value in PHI.values():  # no patient data in the response (values chosen outside the base64 alphabet)
        assert value not in r.text


def test_huge_image_header_is_refused_with_413(predictor):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    r = _client(predictor).post("/v1/segment", files={"file": ("big.png", png, "image/png")}, data={"prompt": "liver"})
    assert r.status_code == 413 and "20000" in r.json()["error"]


def test_an_oversize_upload_without_content_length_is_stopped_while_streaming(predictor, tmp_path, monkeypatch):
    import tempfile

    c = _client(predictor, max_upload_bytes=2**20)  # 1 MB (the stream may carry 1 MB more of multipart overhead)
    boundary = "xxBOUNDARYxx"

    def body():  # chunked: no Content-Length header; 8 MB in all
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nliver\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(64):
            yield bytes(128 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where Starlette would spool the upload
    r = c.post("/v1/segment", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "uploads are limited" in r.json()["error"]
    # (the in-process test client reads its own generator whole; what matters is that the app read no further
    # than the limit: nothing of the upload's size was spooled to disk)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size > 2**21]
    ok = c.post("/v1/segment", files={"file": ("ct.png", _png(), "image/png")}, data={"prompt": "Segment the liver."})
    assert ok.status_code == 200


def test_a_timed_out_inference_keeps_its_slot_until_it_ends(predictor, monkeypatch):
    """After a 504 the inference cannot be stopped mid-way, so it still counts against --queue-size: a second
    request is told 503 until the first one has really finished, then served."""
    import threading
    import time

    release = threading.Event()
    real = predictor.answer

    def slow(*a, **k):
        release.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(predictor, "answer", slow)
    settings = ServeSettings(timeout_s=0.2, queue_size=1)
    c = TestClient(create_app(predictor, settings))
    files = {"file": ("ct.png", io.BytesIO(_png()), "image/png")}
    first = c.post("/v1/segment", files=files, data={"prompt": "Segment the liver."})
    assert first.status_code == 504 and first.json()["error"] == "inference took longer than 0.2 s"
    busy = c.post("/v1/segment", files={"file": ("ct.png", io.BytesIO(_png()), "image/png")}, data={"prompt": "Segment the liver."})
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    monkeypatch.setattr(predictor, "answer", real)
    settings.timeout_s = 120.0  # the real inference below may take longer than 0.2 s on a loaded machine
    release.set()
    for _ in range(100):  # the slot comes back once the first inference has ended
        r = c.post("/v1/segment", files={"file": ("ct.png", io.BytesIO(_png()), "image/png")}, data={"prompt": "Segment the liver."})
        if r.status_code != 503:
            break
        time.sleep(0.05)
    assert r.status_code == 200, r.text


def test_a_zip_with_a_damaged_member_is_a_400_not_a_500(predictor):
    """A bad CRC or a cut deflate stream in a member used to escape as zipfile/zlib errors (HTTP 500)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("series/a.dcm", bytes(range(256)) * 64)
    data = bytearray(buf.getvalue())
    data[60] ^= 0xFF  # inside the first member's compressed bytes
    c = _client(predictor)
    r = c.post("/v1/segment", files={"file": ("series.zip", bytes(data), "application/zip")}, data={"prompt": "liver"})
    assert r.status_code == 400 and "zip" in r.json()["error"]
    assert c.get("/v1/health").status_code == 200  # and the server keeps serving
