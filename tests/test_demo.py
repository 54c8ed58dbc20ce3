"""`mednet demo` driven in a real browser (headless Chromium through Selenium) with a model fine-tuned here:
uploads of a CT DICOM, a chest X-ray PNG, a NIfTI volume and an unreadable file; the labels shown are the model's
top-k, the saliency overlay is an image that differs from the input, and no patient identifier reaches the page."""

import io
import os
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from conftest import data_path

from mednet_hf.medical_io import read_dicom, read_path

pytestmark = pytest.mark.slow  # end to end: RUN_SLOW=1

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def _need(condition: bool, reason: str) -> None:
    """Missing browser or demo extra: a skip on a laptop, a failure in CI (`.ci/run` installs them)."""
    if not condition:
        (pytest.fail if IN_CI else pytest.skip)(reason)


@pytest.fixture(scope="module")
def explainer(finetuned):  # the session's fine-tuned checkpoint (conftest)
    from mednet_hf.demo import Explainer

    try:
        return Explainer(finetuned["export"], top_k=2)
    except ImportError as e:  # grad-cam, from the demo extra
        _need(False, str(e))


def test_explanation_is_the_model_top_k_and_a_real_overlay(explainer, finetuned):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    image = read_path(data_path("dicom/CT_small.dcm"))
    shown = explainer.explain(image)
    model = AutoModelForImageClassification.from_pretrained(finetuned["export"]).eval()
    pixels = AutoImageProcessor.from_pretrained(finetuned["export"])(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixel_values=pixels).logits.softmax(-1)[0]
    expected = {model.config.id2label[i]: p for i, p in enumerate(probs.tolist())}
    assert list(shown.scores) == sorted(expected, key=expected.get, reverse=True)
    assert all(abs(shown.scores[k] - expected[k]) < 1e-6 for k in shown.scores)
    size = pixels.shape[-1]  # the release's input size
    assert shown.model_view.shape == shown.overlay.shape == (size, size, 3)
    assert np.abs(shown.overlay.astype(int) - shown.model_view).mean() > 5
    # The last stage is 1×1 at 28 px and 2×2 at 64 px, so the CAM comes from the deepest stage with at least 4×4
    # cells (layer2 at 28 px, layer3 at 64 px), and the page says so.
    assert shown.cam_layer == {28: "layer2", 64: "layer3"}[size] and "layer4" in shown.cam_note


def test_header_summary_has_no_phi(explainer):
    from mednet_hf.demo import header_summary

    path = data_path("dicom/CT_small.dcm")
    phi = read_dicom(path, include_phi=True).phi
    summary = header_summary(read_path(path), read_path(path), "lung")
    assert "| modality | CT |" in summary and "lung preset: center -600, width 1500" in summary
    assert phi and not [v for v in map(str, phi.values()) if len(v) > 2 and v in summary]  # not PatientSex "O"


def _browser():
    _need(CHROMIUM is not None and CHROMEDRIVER is not None, "chromium and chromedriver are not installed")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _need(False, "selenium is not installed (the dev extra)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def page(finetuned):
    from mednet_hf.demo import serve

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        app = serve(finetuned["export"], [str(data_path("dicom/CT_small.dcm"))], top_k=2, block=False)
    except ImportError as e:  # gradio, from the demo extra
        _need(False, str(e))
    driver = _browser()
    yield app, driver
    driver.quit()
    app.close()


def _upload(page, path, expect: str):
    """Open the page afresh, upload `path`, and wait until the status line names the file (or says it cannot)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, driver = page
    driver.get(app.local_url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))
    WebDriverWait(driver, 120).until(lambda d: expect in d.find_element(By.ID, "status").text)
    return driver


def _shown_labels(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#predictions dt")]


def _shown_image(driver, elem_id: str) -> np.ndarray:
    from PIL import Image
    from selenium.webdriver.common.by import By

    src = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} img").get_attribute("src")
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


@pytest.mark.parametrize("relative", ["dicom/CT_small.dcm", "cxr/00000001_000.png", "nifti/anatomical.nii"])
def test_browser_upload_shows_the_top_k_and_a_saliency_overlay(page, explainer, relative, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mednet_hf.demo import enlarge, pick

    path = data_path(relative)
    driver = _upload(page, path, "Grad-CAM")
    expected = explainer.explain(pick(read_path(path), None))
    WebDriverWait(driver, 30).until(lambda d: len(_shown_labels(d)) == 2)
    assert _shown_labels(driver) == list(expected.scores)
    view, overlay = _shown_image(driver, "model-view"), _shown_image(driver, "saliency")
    assert np.array_equal(view, enlarge(expected.model_view))  # the page shows exactly what the model gets
    assert overlay.shape == view.shape and np.abs(overlay.astype(int) - view).mean() > 5
    text = driver.find_element(By.TAG_NAME, "body").text
    if relative.startswith("dicom"):
        phi = read_dicom(path, include_phi=True).phi
        assert "CT" in driver.find_element(By.ID, "header").text
        assert not [v for v in map(str, phi.values()) if len(v) > 2 and v in text]
    if relative.startswith("nifti"):  # a volume: the slice slider is there, at the middle slice
        assert driver.find_element(By.ID, "slice").is_displayed()
    shot = tmp_path / f"demo-{path.stem}.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_browser_unreadable_file_gets_a_message(page):
    from selenium.webdriver.common.by import By

    driver = _upload(page, data_path("dicom/rtstruct.dcm"), "Cannot use")
    status = driver.find_element(By.ID, "status").text
    assert "rtstruct.dcm" in status and "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    assert _shown_labels(driver) == []
