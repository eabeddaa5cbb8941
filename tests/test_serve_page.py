"""The service's page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium): pick an
image, wait for its boxes, check the labels drawn against the API's answer, move the score slider, see an error."""

from __future__ import annotations

import shutil

import httpx
import pytest
from PIL import Image

from multibox.serve.app import create_app
from multibox.serve.backend import TorchBackend
from serve_support import LiveServer, encode, noise_image, tiny_checkpoint

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'multibox[dev]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them: apt-get install chromium "
    "chromium-driver)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = TorchBackend(tiny_checkpoint(tmp_path_factory.mktemp("page")), device="cpu")
    with LiveServer(create_app(backend)) as live:
        yield live


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _labels(driver) -> list[str] | None:
    return driver.execute_script(
        "const c = document.querySelector('#results canvas'); return c && c.dataset.labels ? "
        "JSON.parse(c.dataset.labels) : null;"
    )


def _expected(detections: list[dict], threshold: float) -> list[str]:
    return [f"{d['class']} {d['score']:.2f}" for d in detections if d["score"] >= threshold]


def test_page_draws_the_boxes_with_labels_and_the_slider_filters(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "noise.png"
    path.write_bytes(encode(noise_image(180, 240, seed=7), "PNG"))
    api = httpx.post(f"{server.url}/v1/detect", params={"score": 0.05}, content=path.read_bytes()).json()

    browser.get(server.url + "/")
    assert "multibox" in browser.title and "circle, square" in browser.page_source
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 60).until(lambda d: _labels(d) is not None)
    drawn = _labels(browser)
    assert drawn == _expected(api["detections"], 0.30) and len(drawn) > 0
    assert all(label.startswith(("circle ", "square ")) for label in drawn)
    size = browser.execute_script("const c = document.querySelector('#results canvas'); return [c.width, c.height];")
    assert size == [240, 180]  # the image at its own size (under the page's 640-pixel cap)
    # the best box is drawn last (nothing over it): its left edge's column is covered by the 2-pixel outline (or by
    # its label's background, the same colour), in its class's colour
    last = api["detections"][0]
    x, y = int(last["box"][0]), int((last["box"][1] + last["box"][3]) / 2)
    pixel = browser.execute_script(
        "const c = document.querySelector('#results canvas'); "
        "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data);",
        x,
        y,
    )
    colour = [0x3C, 0xB4, 0x4B, 255] if last["label"] == 2 else [0xE6, 0x19, 0x4B, 255]
    assert pixel == colour, (x, y, pixel)

    # the slider filters the boxes already received, without a new request
    top = sorted((d["score"] for d in api["detections"]), reverse=True)
    threshold = round((top[2] + top[3]) / 2, 2) if round(top[2], 2) != round(top[3], 2) else top[2]
    browser.execute_script(
        "const s = document.getElementById('score'); s.value = arguments[0]; s.dispatchEvent(new Event('input'));",
        threshold,
    )
    assert _labels(browser) == _expected(api["detections"], threshold)
    assert browser.find_element(By.ID, "score-value").text == f"{threshold:.2f}"
    browser.save_screenshot(str(tmp_path / "page.png"))  # the three best boxes
    shot = Image.open(tmp_path / "page.png")
    assert shot.size[0] >= 1000 and shot.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_page_shows_the_servers_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "broken.jpg"
    path.write_bytes(encode(noise_image(50, 50, seed=1), "JPEG")[:300])
    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 60).until(lambda d: "broken.jpg: 400" in status.text)
    assert "truncated" in status.text and status.get_attribute("class") == "error"
    assert _labels(browser) is None  # nothing drawn
