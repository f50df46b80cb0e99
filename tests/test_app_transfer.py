"""The app with a pose-transfer bundle, through its HTTP API in-process: the listing marks it,
a source image upload (PNG or JPEG data URL) reaches the pipeline (the same image as the
pipeline's own call), a pose bundle beside it ignores the source, a missing source is one clear
error, and the page carries the source upload."""
from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from grpose.app.server import serve
from grpose.data.synthetic_pairs import SyntheticPairs
from test_app import POSE
from tiny_bundles import detector_spec, tiny_module, tiny_transfer_module, write_tiny_bundle

TRANSFER, POSE_ID = "demo/bundles/source_unaligned-s0", "demo/bundles/no_pose-s0"


@pytest.fixture(scope="module")
def source():
    """A synthetic source person: `uint8 (64, 64, 3)`."""
    image = SyntheticPairs(1, seed=2, split="val", resolution=64)[0].source_image
    return ((image + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_parts):
    from conftest import perturb_zero_parameters
    root = tmp_path_factory.mktemp("runs")
    for bundle_id, module in (
            (TRANSFER, tiny_transfer_module(tiny_parts, "source_unaligned",
                                            perturb_zero_parameters, steps=1)),
            (POSE_ID, tiny_module(tiny_parts, "no_pose", perturb_zero_parameters, steps=1))):
        folder = str(root / bundle_id)
        write_tiny_bundle(folder, tiny_parts, module, detector=detector_spec(folder))
    server = serve(str(root), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def upload(image: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def decoded(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_the_listing_marks_the_transfer_bundle(server):
    status, listing = call(server[0], "/api/bundles")
    assert status == 200
    marks = {b["id"]: (b["transfer"], b["sampler"]["source_scale"]) for b in listing["bundles"]}
    assert marks == {TRANSFER: (True, 1.5), POSE_ID: (False, None)}
    with urllib.request.urlopen(server[0] + "/") as page:
        html = page.read().decode()
    assert 'id="source-file"' in html and 'id="source-preview"' in html


def test_a_source_upload_reaches_the_pipeline(server, source, one_thread):
    from grpose.pipeline import PosePipeline
    url, root = server
    people = [[[x / 64, y / 64, c] if c > 0 else [-1, -1, 0] for x, y, c in person]
              for person in SyntheticPairs(1, seed=2, split="val", resolution=64)[0]
              .source_keypoints.tolist()]
    request = {"pose": POSE, "prompt": "a person", "bundles": [TRANSFER, POSE_ID], "seed": 3,
               "source": upload(source), "source_pose": people}
    status, out = call(url, "/api/generate", request)
    assert status == 200, out
    transfer, pose = out["results"]
    assert pose["source_pose"] is None and decoded(pose["image"]).shape == (64, 64, 3)
    np.testing.assert_allclose(transfer["source_pose"], people, atol=1e-5)
    expected = PosePipeline.from_pretrained(str(root / TRANSFER))(
        "a person", np.asarray(POSE) * [64, 64, 1], seed=3, source_image=source,
        source_pose=np.asarray(people) * [64, 64, 1])
    assert np.array_equal(decoded(transfer["image"]), np.asarray(expected.images[0]))
    # a JPEG upload, its pose read by the bundle's detector
    status, out = call(url, "/api/generate", {**request, "source": upload(source, "JPEG"),
                                              "source_pose": None, "bundles": [TRANSFER]})
    assert status == 200 and np.asarray(out["results"][0]["source_pose"]).shape[1:] == (17, 3)


@pytest.mark.parametrize("edit, message", [
    ({"source": None}, f"{TRANSFER}: pose-transfer model(s): upload a source image"),
    ({"source": "data:image/png;base64,AAAA"}, "the uploaded source image is not an image"),
    ({"source_scale": "lots"}, "source_scale: not a number"),
])
def test_a_missing_or_bad_source_is_one_clear_message(server, source, edit, message):
    request = {"pose": POSE, "prompt": "a person", "bundles": [TRANSFER],
               "source": upload(source), **edit}
    status, out = call(server[0], "/api/generate", request)
    assert status == 400 and message in out["error"]


def test_pose_bundles_work_as_before(server):
    status, out = call(server[0], "/api/generate", {"pose": POSE, "prompt": "a person",
                                                    "bundles": [POSE_ID], "seed": 1})
    assert status == 200 and out["results"][0]["source_pose"] is None
    assert decoded(out["results"][0]["image"]).shape == (64, 64, 3)
