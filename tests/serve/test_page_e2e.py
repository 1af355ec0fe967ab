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
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    img = _ct_png(tmp_path)
    driver = _driver(tmp_path)
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


def _ct_png(tmp_path):
    img = tmp_path / "ct.png"
    Image.fromarray((normalize(synth("ct", 2, size=64).image) * 255).astype(np.uint8)).save(img)
    return img


def _driver(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1100"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _shot(driver, tmp_path, name: str) -> None:
    """A screenshot of the page's state; with RCMED_UPDATE_DOCS=1 it also replaces docs/page/NAME.png (the README's)."""
    import os
    from pathlib import Path

    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    if os.environ.get("RCMED_UPDATE_DOCS") == "1":
        docs = Path(__file__).resolve().parents[2] / "docs" / "page"
        docs.mkdir(exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", docs / f"{name}.png")


def test_box_points_legend_and_examples(server, tmp_path):
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    img = _ct_png(tmp_path)
    driver = _driver(tmp_path)
    try:
        driver.get(server)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))
        driver.find_element(By.ID, "file").send_keys(str(img))
        driver.find_element(By.ID, "prompt").send_keys("Segment the liver.")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return answer !== null && !$('result').hidden"))
        # the legend: one entry per found target, in the overlay's colour; hiding it empties the mask layer
        colour = driver.execute_script("return answer.targets[0].colour")
        assert colour == "#e6194b"  # the overlay's first palette colour (red)
        swatch = driver.find_element(By.CSS_SELECTOR, "#legend .swatch").value_of_css_property("background-color")
        assert swatch in ("rgba(230, 25, 75, 1)", "rgb(230, 25, 75)")
        painted = "const c=$('masks'),d=c.getContext('2d').getImageData(0,0,c.width,c.height).data;" \
                  "let n=0;for(let i=3;i<d.length;i+=4)n+=d[i]>0;return n;"
        shown = driver.execute_script(painted)
        assert shown > 0
        _shot(driver, tmp_path, "answer")
        driver.find_element(By.ID, "show0").click()
        assert driver.execute_script(painted) == 0
        driver.find_element(By.ID, "show0").click()
        assert driver.execute_script(painted) == shown
        # a box dragged and points clicked on the 512-px view of a 64-px image arrive in image pixels
        draw = driver.find_element(By.ID, "draw")
        rect = driver.execute_script("return $('draw').getBoundingClientRect().toJSON()")
        scale = rect["width"] / 64
        left, top = -rect["width"] / 2, -rect["height"] / 2  # selenium offsets are from the element's centre
        ActionChains(driver).move_to_element_with_offset(draw, int(left + 8 * scale), int(top + 10 * scale)) \
            .click_and_hold().move_by_offset(int(40 * scale), int(36 * scale)).release().perform()
        ActionChains(driver).move_to_element_with_offset(draw, int(left + 30 * scale), int(top + 30 * scale)).click().perform()
        ActionChains(driver).key_down(Keys.SHIFT).move_to_element_with_offset(draw, int(left + 5 * scale), int(top + 5 * scale)) \
            .click().key_up(Keys.SHIFT).perform()
        box, points = driver.execute_script("return [box, points]")
        assert [abs(a - b) <= 1 for a, b in zip(box, [8, 10, 48, 46], strict=True)] == [True] * 4
        assert [p[2] for p in points] == [1, 0] and abs(points[0][0] - 30) <= 1 and abs(points[1][1] - 5) <= 1
        assert "box" in driver.find_element(By.ID, "marks").text
        _shot(driver, tmp_path, "box_and_points")
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return answer.prompts.box !== null"))
        sent = driver.execute_script("return answer.prompts")
        assert sent["box"] == [float(v) for v in box] and [p[:2] for p in sent["points"]] == [[float(v) for v in p[:2]] for p in points]
        page_mask = driver.execute_script("return answer.targets[0].mask_rle")
        # the same box and points through the API give the same mask
        api = httpx.post(server + "/v1/segment", files={"file": ("ct.png", img.read_bytes(), "image/png")},
                         data={"prompt": "Segment the liver.", "box": ",".join(str(v) for v in box),
                               "points": ";".join(",".join(str(v) for v in p) for p in points)}, timeout=60).json()
        assert api["targets"][0]["mask_rle"] == page_mask
        # clearing removes the marks; an example runs with one click and shows its own image
        driver.find_element(By.ID, "clear").click()
        assert driver.execute_script("return box === null && points.length === 0")
        button = driver.find_element(By.CSS_SELECTOR, "#examples button[data-file='dermoscopy_skin.png']")
        button.click()
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return $('prompt').value.includes('skin lesion')"
                                                                   " && answer.prompts.box === null"))
        assert driver.find_element(By.ID, "modality").get_attribute("value") == "dermoscopy"
        assert driver.execute_script("return $('file').value") == ""  # the chooser no longer names the earlier file
        size = Image.open(__import__("rcmed").__path__[0] + "/samples/demo/dermoscopy_skin.png").size
        assert driver.execute_script("return [$('base').naturalWidth, $('base').naturalHeight]") == list(size)
        _shot(driver, tmp_path, "example")
    finally:
        driver.quit()
