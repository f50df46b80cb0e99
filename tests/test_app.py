"""The app: its API on tiny bundles (no bundles, bad JSON, a photo with no one, two methods side
by side), and (`slow`) the page driven in headless Chromium: load, a bad then a good JSON upload,
pick a held-out pose, drag a joint, generate with two methods, two images and their OKS appear,
a screenshot is saved.

The browser test needs Debian's `chromium` + `chromium-driver` and Selenium (`pip install -e
.[app]`); it never downloads a browser or driver, and skips, saying why, where they are missing.
`GRPOSE_APP_RUNS=runs` drives it on the demo's own bundles instead of tiny ones, and
`GRPOSE_APP_SCREENSHOT=docs/img/app.png` keeps its screenshot there."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from grpose.app.server import App, AppError, serve
from grpose.pipeline import PoseError
from tiny_bundles import detector_spec, tiny_module, write_tiny_bundle

POSE = [[[.5, .18, 1], [.52, .16, 1], [.48, .16, 1], [.54, .17, 1], [.46, .17, 1], [.58, .28, 1],
         [.42, .28, 1], [.62, .42, 1], [.38, .42, 1], [.64, .55, 1], [.36, .55, 1], [.55, .55, 1],
         [.45, .55, 1], [.56, .72, 1], [.44, .72, 1], [.57, .88, 1], [.43, .88, 1]]]


def tiny_runs(root, tiny_parts, perturb, names=("grpose_skeleton", "controlnet"),
              held_out: int = 0):
    """A runs folder with tiny bundles (1 sampling step, a detector) and optionally a held-out
    synthetic set, laid out as the demo writes them."""
    for name in names:
        module = tiny_module(tiny_parts, name, perturb, steps=1)
        folder = str(root / "demo" / "bundles" / f"{name}-s0")
        write_tiny_bundle(folder, tiny_parts, module, detector=detector_spec(folder))
    if held_out:
        from grpose.data.synthetic import write_synthetic
        write_synthetic(str(root / "demo" / "data"), "validation", held_out, 64, 0)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_parts):
    from conftest import perturb_zero_parameters
    return tiny_runs(tmp_path_factory.mktemp("runs"), tiny_parts, perturb_zero_parameters,
                     held_out=3)


def test_no_bundles_is_a_clear_message(tmp_path):
    listing = App(str(tmp_path)).listing()
    assert listing["bundles"] == [] and "make demo" in listing["message"]


def test_two_methods_side_by_side_with_their_scores(runs, one_thread):
    app = App(str(runs))
    ids = [b["id"] for b in app.listing()["bundles"]]
    assert ids == ["demo/bundles/controlnet-s0", "demo/bundles/grpose_skeleton-s0"]
    out = app.generate({"pose": POSE, "prompt": "a person", "bundles": ids, "seed": "3"})
    assert [r["bundle"] for r in out["results"]] == ids
    for r in out["results"]:
        image = Image.open(io.BytesIO(base64.b64decode(r["image"].split(",", 1)[1])))
        assert image.size == (64, 64) and r["seed"] == 3
        assert 0.0 <= r["oks"] <= 1.0 and np.asarray(r["detected"]).shape == (1, 17, 3)
    poses = app.poses()
    assert len(poses) == 3 and poses[0]["caption"] and np.asarray(poses[0]["people"]).shape[1:] \
        == (17, 3)


@pytest.mark.parametrize("request_, message", [
    ({"json": "{bad"}, "not valid JSON"),
    ({"json": '{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}'}, "has 3 values"),
    ({"json": json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 54}]})}, "no canvas size"),
    ({"photo": "data:image/png;base64,AAAA", "bundle": "demo/bundles/controlnet-s0"},
     "not an image"),
    ({"photo": "x", "bundle": "../../etc"}, "unknown bundle"),
])
def test_bad_pose_input_is_one_clear_error(runs, request_, message):
    with pytest.raises((AppError, PoseError), match=message):
        App(str(runs)).read_pose(request_)


def test_a_photo_with_no_person_says_so(runs):
    app = App(str(runs))
    pipe = app.pipeline("demo/bundles/controlnet-s0")
    pipe.detector.decode_options["center_threshold"] = 2.0  # finds no one
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "gray").save(buf, format="PNG")
    photo = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    with pytest.raises(PoseError, match="the photo: no person found"):
        app.read_pose({"photo": photo, "bundle": "demo/bundles/controlnet-s0"})


def test_the_server_answers_errors_as_json(runs):
    server = serve(str(runs), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert b"pose-svg" in urllib.request.urlopen(url + "/").read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(
                url + "/api/generate", data=json.dumps({"pose": POSE, "prompt": "x",
                                                        "bundles": []}).encode()))
        assert err.value.code == 400
        assert json.loads(err.value.read()) == {"error": "choose at least one method"}
    finally:
        server.shutdown()
        server.server_close()


# -- the page in a real browser -------------------------------------------------------------------
def browser():
    """Headless Chromium through Selenium, from the system's packages (never downloaded)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is in the [app] extra "
                                    "(pip install -e .[app])")
    from selenium.webdriver.chrome.service import Service
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver); no browser is downloaded")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_app_in_headless_chromium(tmp_path, tiny_parts, perturb_zero_parameters):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    runs = os.environ.get("GRPOSE_APP_RUNS") or str(tiny_runs(
        tmp_path, tiny_parts, perturb_zero_parameters, held_out=4))
    server = serve(runs, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = browser()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bundle-check")) >= 2)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#heldout option")) > 1)
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        driver.find_element(By.ID, "json-file").send_keys(str(bad))  # a bad upload: said so
        wait.until(lambda d: "not valid JSON" in d.find_element(By.ID, "error").text)
        driver.find_element(By.ID, "json-file").send_keys(os.path.abspath(
            "docs/poses/example_openpose.json"))  # an OpenPose file: its 17 joints drawn
        wait.until(lambda d: "pose read from" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "error").text == ""
        assert len(driver.find_elements(By.CSS_SELECTOR, "circle.joint")) == 16  # one ear missing
        Select(driver.find_element(By.ID, "heldout")).select_by_index(1)
        wrist = driver.find_element(By.CSS_SELECTOR, "circle.joint[data-joint='9']")
        before = float(wrist.get_attribute("cx")), float(wrist.get_attribute("cy"))  # x 1000
        # 320 px: 40 px = 125 units; both moves away from the border, so nothing is clipped
        dx, dy = (40 if before[0] < 500 else -40), (50 if before[1] < 500 else -50)
        ActionChains(driver).drag_and_drop_by_offset(wrist, dx, dy).perform()
        wrist = driver.find_element(By.CSS_SELECTOR, "circle.joint[data-joint='9']")
        after = float(wrist.get_attribute("cx")), float(wrist.get_attribute("cy"))
        assert after[0] - before[0] == pytest.approx(dx * 1000 / 320, abs=8), (before, after)
        assert after[1] - before[1] == pytest.approx(dy * 1000 / 320, abs=8), (before, after)
        checks = driver.find_elements(By.CSS_SELECTOR, ".bundle-check")
        chosen = [c for c in checks if c.is_selected()]
        assert len(chosen) == 2
        driver.find_element(By.ID, "prompt").clear()
        driver.find_element(By.ID, "prompt").send_keys("a person in a red shirt")
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 600).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 2
            or d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == ""
        cards = driver.find_elements(By.CSS_SELECTOR, ".result")
        assert len(cards) == 2
        for card in cards:
            assert card.find_element(By.TAG_NAME, "img").get_attribute(
                "src").startswith("data:image/png;base64,")
            assert card.find_element(By.CSS_SELECTOR, ".oks").text.startswith("OKS ")
        shot = os.environ.get("GRPOSE_APP_SCREENSHOT") or str(tmp_path / "app.png")
        os.makedirs(os.path.dirname(os.path.abspath(shot)), exist_ok=True)
        assert driver.save_screenshot(shot) and Image.open(shot).size[0] > 0
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
