"""The page in a real browser (headless Chromium via selenium), against a real ``smatch serve``.

It loads the page, uploads the example pair through the file inputs, clicks three points on the source,
waits for three target markers, downloads the JSON and compares it with ``smatch infer`` on the same points.
Skipped with the reason when Chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
``SMATCH_SERVE_SCREENSHOT=PATH`` also saves the screenshot there (docs/serve.png), and
``SMATCH_SERVE_MODEL=MODEL.onnx`` serves that model instead of the tiny random one (e.g. the demo model).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the [dev] extra) is not installed")
from simplematch.runtime.infer import run_infer  # noqa: E402
from tests.helpers import make_onnx, subprocess_env  # noqa: E402
from tests.serve.helpers import EXAMPLES, running_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CLICKS = ((0.3, 0.35), (0.62, 0.45), (0.5, 0.8))  # fractions of the shown source image
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does it)",
)


def _browser(downloads: Path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-proxy-server"):  # fmt: skip
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    # An explicit driver path: selenium never tries to download one.
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def _wait(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_click_three_points_and_download_equals_smatch_infer(tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    model = Path(
        os.environ.get("SMATCH_SERVE_MODEL") or make_onnx(tmp_path / "conv.onnx", input_size=64, channels=16)
    )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with running_server(model, log=tmp_path / "server.log") as url:
        driver = _browser(downloads)
        try:
            driver.get(url + "/")
            _wait(lambda: "px on" in driver.find_element(By.ID, "model").text, what="model line")
            driver.find_element(By.ID, "src-file").send_keys(str(EXAMPLES / "src.png"))
            _wait(lambda: "300×200" in driver.find_element(By.ID, "status").text, what="source upload")
            driver.find_element(By.ID, "tgt-file").send_keys(str(EXAMPLES / "tgt.png"))
            _wait(lambda: "280×220" in driver.find_element(By.ID, "status").text, what="target upload")
            svg = driver.find_element(By.ID, "src-svg")
            box = svg.rect  # CSS pixels; the image is shown scaled, the page maps clicks to image pixels
            for fx, fy in CLICKS:
                dx, dy = (fx - 0.5) * box["width"], (fy - 0.5) * box["height"]
                ActionChains(driver).move_to_element_with_offset(svg, int(dx), int(dy)).click().perform()
                time.sleep(0.3)
            targets = "#tgt-svg circle.marker.target"
            markers = _wait(
                lambda: (
                    len(driver.find_elements(By.CSS_SELECTOR, targets)) == 3
                    and driver.find_elements(By.CSS_SELECTOR, targets)
                ),
                what="three target markers",
            )
            assert len(markers) == 3
            drawn = sorted(
                (int(m.get_attribute("data-i")), float(m.get_attribute("cx")), float(m.get_attribute("cy")))
                for m in markers
            )
            _wait(
                lambda: "3 of 3 matches kept" in driver.find_element(By.ID, "status").text,
                what="match status",
            )
            driver.find_element(By.ID, "download").click()
            path = _wait(lambda: next(iter(downloads.glob("matches*.json")), None), what="the download")
            shot = tmp_path / "serve.png"
            driver.save_screenshot(str(shot))
            if os.environ.get("SMATCH_SERVE_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["SMATCH_SERVE_SCREENSHOT"])
        finally:
            driver.quit()
    page_json = json.loads(path.read_text())
    points = [k["source"] for k in page_json["keypoints"]]
    assert len(points) == 3
    # Clicks land where they were made (image pixels = fraction of the shown image x its size), and each
    # target marker is drawn at its match.
    for (x, y), (fx, fy) in zip(points, CLICKS, strict=True):
        assert abs(x - fx * 300) < 1.5 and abs(y - fy * 200) < 1.5, (x, y, fx, fy)
    for (i, cx, cy), row in zip(drawn, page_json["keypoints"], strict=True):
        assert abs(cx - row["target"][0]) < 1e-3 and abs(cy - row["target"][1]) < 1e-3, (i, cx, cy, row)
    (tmp_path / "kps.json").write_text(json.dumps(points))
    src, tgt, kps, out = (
        EXAMPLES / "src.png",
        EXAMPLES / "tgt.png",
        tmp_path / "kps.json",
        tmp_path / "infer.json",
    )
    cli = [
        sys.executable,
        "-m",
        "simplematch.cli",
        "infer",
        src,
        tgt,
        "--kps",
        kps,
        "--model",
        model,
        "--out",
        out,
    ]
    subprocess.run([str(a) for a in cli], env=subprocess_env(), check=True, capture_output=True, timeout=120)
    infer = json.loads((tmp_path / "infer.json").read_text())  # what `smatch infer --out` wrote
    for key in set(infer) - {"timing_ms", "source", "target", "written_at"}:
        assert page_json[key] == infer[key], key
    assert (page_json["source"], page_json["target"]) == ("src.png", "tgt.png")
    # The downloaded file works as `smatch infer --kps` (its targets become the sources).
    chained = run_infer(EXAMPLES / "tgt.png", EXAMPLES / "src.png", path, model=model)
    assert [k["source"] for k in chained["keypoints"]] == [k["target"] for k in page_json["keypoints"]]


def test_page_drag_keyboard_and_slider(tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    model = make_onnx(tmp_path / "conv.onnx", input_size=64, channels=16)
    with running_server(model, log=tmp_path / "server.log") as url:
        driver = _browser(tmp_path)
        try:
            driver.get(url + "/")
            driver.find_element(By.ID, "examples").click()  # the bundled pair, from the package
            _wait(lambda: "280×220" in driver.find_element(By.ID, "status").text, what="examples")
            svg = driver.find_element(By.ID, "src-svg")
            box = svg.rect
            scale = 300 / box["width"]  # image pixels per CSS pixel
            points = lambda: driver.execute_script("return state.points")  # noqa: E731
            answered = lambda n: driver.execute_script(  # noqa: E731 -- the page's last answer, n points
                "const r = state.result; return !!r && r.keypoints.length === arguments[0]"
                " && JSON.stringify(r.keypoints.map(k => k.source)) === JSON.stringify(state.points)",
                n,
            )
            for fx, fy in ((0.25, 0.5), (0.6, 0.4)):
                ActionChains(driver).move_to_element_with_offset(
                    svg, int((fx - 0.5) * box["width"]), int((fy - 0.5) * box["height"])
                ).click().perform()
            _wait(lambda: answered(2), what="two matches")
            before = points()
            # Drag point 1 by 40 CSS px to the right.
            ActionChains(driver).move_to_element_with_offset(
                svg, int(-0.25 * box["width"]), 0
            ).click_and_hold().move_by_offset(20, 0).move_by_offset(20, 0).release().perform()
            _wait(lambda: answered(2) and points()[0] != before[0], what="the drag")
            dragged = points()
            assert abs(dragged[0][0] - (before[0][0] + 40 * scale)) < 1.5 * scale and dragged[1] == before[1]
            # Keys: ] selects point 2, Shift+Right moves it 10 px, + adds one at the centre, Delete drops it.
            ActionChains(driver).send_keys("]").key_down(Keys.SHIFT).send_keys(Keys.ARROW_RIGHT).key_up(
                Keys.SHIFT
            ).perform()
            _wait(lambda: answered(2) and points()[1][0] != dragged[1][0], what="the key move")
            assert points()[1] == [dragged[1][0] + 10, dragged[1][1]]
            ActionChains(driver).send_keys("+").perform()
            _wait(lambda: answered(3), what="the added point")
            assert points()[2] == [149.5, 99.5]
            ActionChains(driver).send_keys(Keys.DELETE).perform()
            _wait(lambda: answered(2), what="the removed point")
            # Slider at 1.0: every match is rejected, crossed out on the source, no target marker.
            driver.execute_script(
                "const s = document.getElementById('min-conf'); s.value = '1';"
                " s.dispatchEvent(new Event('input'));"
            )
            _wait(
                lambda: "0 of 2 matches kept" in driver.find_element(By.ID, "status").text, what="rejection"
            )
            assert driver.execute_script("return state.result.min_confidence") == 1
            assert driver.find_elements(By.CSS_SELECTOR, "#tgt-svg circle.marker.target") == []
            assert len(driver.find_elements(By.CSS_SELECTOR, "#src-svg path.cross")) == 2
            assert len(driver.find_elements(By.CSS_SELECTOR, "#points tbody tr.rejected")) == 2
        finally:
            driver.quit()
