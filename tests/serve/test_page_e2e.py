"""End to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
upload a phantom, ask, see the overlay and the target list, download the mask; a screenshot is
saved for people to look at. Skipped only where Chromium is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from rcmed.data.synth import synth
from rcmed.io.normalize import normalize

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian chromium/chromium-driver not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_trained):
    import uvicorn

    from rcmed.predictor import Predictor
    from rcmed.serve.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(Predictor.from_pretrained(tiny_trained)), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_ask_see_overlay_and_download(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    img = tmp_path / "ct.png"
    Image.fromarray((normalize(synth("ct", 2, size=64).image) * 255).astype(np.uint8)).save(img)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(server)
        driver.find_element(By.ID, "file").send_keys(str(img))
        driver.find_element(By.ID, "prompt").send_keys("Segment the liver.")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 60).until(ec.visibility_of_element_located((By.ID, "result")))
        assert driver.find_element(By.ID, "text").text == "The liver is here."
        rows = driver.find_elements(By.CSS_SELECTOR, "#targets tbody tr")
        assert len(rows) == 1 and rows[0].text.startswith("liver yes")
        assert driver.find_element(By.ID, "overlay").get_attribute("src").startswith("data:image/png;base64,")
        link = rows[0].find_element(By.TAG_NAME, "a")
        href = link.get_attribute("href")
        mask = Image.open(__import__("io").BytesIO(base64.b64decode(href.split(",", 1)[1])))
        assert mask.size == (64, 64) and np.asarray(mask.convert("L")).max() == 255
        driver.save_screenshot(str(tmp_path / "page.png"))
        shutil.copy(tmp_path / "page.png", "/tmp/rcmed_page_e2e.png")
    finally:
        driver.quit()
