"""The comparison as a person sees it, in a real headless browser (Debian's chromium driven through
chromedriver by Selenium): the report renders with every image decoded at its size, the best
values in bold; the MLflow UI, served on loopback, shows the compared runs with their metrics.

Skipped, saying why, where chromium or chromedriver is absent (``make browser`` installs Debian's).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser` installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is part of the test extras")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _results():
    """Three methods with real PNG grids (crops of the astronaut's face) and distinct metrics."""
    from skimage.data import astronaut

    from fsr_core.data.codec import encode_png
    from fsr_core.restore.batch import side_by_side

    face = astronaut()[20:148, 160:288]
    lr = face[::8, ::8]
    results = []
    for i, (uri, label) in enumerate((("bicubic:x8", "bicubic"), ("models:/a/1", "pretrained"),
                                      ("models:/a/2", "joint"))):
        restored = np.clip(face.astype(int) + 10 * i, 0, 255).astype(np.uint8)
        strip = np.concatenate([side_by_side(lr, face, restored, face)] * 2, axis=0)  # two faces
        results.append({"model": uri, "uri": uri, "label": label, "num_images": 2, "grid_png": encode_png(strip),
                        "means": {"psnr_y": 24.0 + i, "ssim_y": 0.70 + i / 100, "niqe_skvideo": 30.0 - i,
                                  "identity_sim_dlib": 0.9, "hr_niqe_skvideo": 12.0}})
    return results


def test_report_renders_its_images_and_table_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from pipelines.compare import render_report, side_by_side_grid

    results = _results()
    grid = side_by_side_grid(results, hr_size=128)
    path = tmp_path / "report.html"
    path.write_text(render_report(results, title="fsr compare: browser check", side_by_side_png=grid), encoding="utf-8")
    browser.get(path.as_uri())
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 4  # side by side + one grid per method
    sizes = [browser.execute_script("return [arguments[0].complete, arguments[0].naturalWidth, "
                                    "arguments[0].naturalHeight]", img) for img in images]
    # decoded by the browser at the PNGs' sizes: LR | bicubic | 2 methods | truth, and each method's 4 panels
    assert sizes[0] == [True, 5 * 128 + 4 * 2, 2 * 128]
    assert sizes[1:] == [[True, 4 * 128 + 3 * 2, 2 * 128]] * 3
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
    assert len(rows) == 4
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows[1:]] == ["bicubic:x8", "models:/a/1", "models:/a/2"]
    bold = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "td b")]
    assert "26.00" in bold and "28.00" in bold  # best PSNR (joint), best NIQE (lowest, joint)
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    from fsr_core.data.codec import decode_png

    pixels = decode_png(shot.read_bytes())
    assert (pixels < 250).any(axis=-1).mean() > 0.05  # the page shows pixels of the images, not a blank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(tmp_path):
    """``mlflow server`` on loopback over a fresh SQLite store; yields (tracking URI, base URL)."""
    store = f"sqlite:///{tmp_path}/ui.db"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                             "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield base, base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mlflow_ui_shows_the_compared_runs_with_their_metrics(browser, mlflow_ui, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from pipelines import tracking
    from pipelines.compare import log_comparison, render_report

    tracking_uri, base = mlflow_ui
    results = _results()
    experiment = tracking.get_or_create_experiment(tracking_uri, "fsr-compare", artifact_location=None)
    parent = tracking.create_run(tracking_uri, experiment, run_name="compare", tags={"fsr_kind": "compare"})
    log_comparison(results, render_report(results, title="t"), tracking_uri=tracking_uri, experiment_id=experiment,
                   parent_run_id=parent, tags={"identity_sim_dlib_weights_sha256": "0" * 64})
    tracking.end_run(tracking_uri, parent, status="FINISHED")
    from mlflow import MlflowClient

    children = MlflowClient(tracking_uri).search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(c.info.run_name for c in children) == ["bicubic", "joint", "pretrained"]

    # the compare view of the three nested runs: one column per run, the same metric names as rows
    ids = json.dumps([c.info.run_id for c in children], separators=(",", ":"))
    browser.get(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment])}")

    def shown(driver) -> str | bool:
        text = driver.find_element("tag name", "body").text
        return text if all(w in text for w in ("bicubic", "pretrained", "joint", "psnr_y", "niqe_skvideo")) else False

    text = WebDriverWait(browser, 90, poll_frequency=1).until(shown)
    for value in ("24", "25", "26"):  # the three runs' psnr_y
        assert value in text
    # the experiment's runs page lists the comparison's parent run
    browser.get(f"{base}/#/experiments/{experiment}/runs")
    WebDriverWait(browser, 90, poll_frequency=1).until(lambda d: "compare" in d.find_element("tag name", "body").text)
