"""The app as a robust local service, through its HTTP API: every bad field gets a 400 and one
line naming it (a body too large 413), an unexpected error a 500 with one line (its traceback on
the console), and the server answers the next request; progress while methods generate; methods
loaded lazily on one shared base, at most N resident; a photo read by a detector that only knows
synthetic people comes with a note; bound to 127.0.0.1."""
from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from grpose.app import App, Limits, serve
from grpose.app.handler import make_handler
from test_app import POSE
from tiny_bundles import detector_spec, tiny_module, write_tiny_bundle

IDS = ["demo/bundles/controlnet-s0", "demo/bundles/grpose_skeleton-s0"]
KNOWS = "synthetic 64 px people"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_parts):
    from conftest import perturb_zero_parameters
    root = tmp_path_factory.mktemp("runs")
    for bundle_id in IDS:
        module = tiny_module(tiny_parts, bundle_id.split("/")[-1][:-3], perturb_zero_parameters,
                             steps=2)
        folder = str(root / bundle_id)
        write_tiny_bundle(folder, tiny_parts, module, detector=detector_spec(folder),
                          detector_knows=KNOWS)
    return root


@pytest.fixture(scope="module")
def server(runs):
    app = App(str(runs), max_resident=2, limits=Limits(max_body=64 * 1024))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(app))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", app
    server.shutdown()
    server.server_close()


def call(url: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data=data)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


GOOD = {"pose": POSE, "prompt": "a person", "bundles": IDS[:1], "seed": 1, "steps": 1}


@pytest.mark.parametrize("edit, message", [
    ({"steps": 0}, "steps: must be an integer in 1..200, got 0"),
    ({"steps": -3}, "steps: must be an integer in 1..200, got -3"),
    ({"steps": 2.5}, "steps: must be an integer in 1..200, got 2.5"),
    ({"steps": 1000}, "steps: must be an integer in 1..200, got 1000"),
    ({"steps": "many"}, "steps: must be an integer in 1..200, got 'many'"),
    ({"guidance_scale": "NaN"}, "guidance_scale: must be a finite number in 0..50, got 'NaN'"),
    ({"guidance_scale": 1e9}, "guidance_scale: must be a finite number in 0..50"),
    ({"guidance_scale": "lots"}, "guidance_scale: not a number: 'lots'"),
    ({"conditioning_scale": -1}, "conditioning_scale: must be a finite number in 0..10"),
    ({"conditioning_scale": True}, "conditioning_scale: must be a finite number"),
    ({"seed": -1}, "seed: must be an integer in 0..2147483647, got -1"),
    ({"pose": POSE * 11}, "the pose: at most 10 people, got 11"),
    ({"pose": [[1, 2]]}, "the pose: keypoints must have shape (P, 17, 3)"),
    ({"prompt": 3}, "prompt: must be a string, got int"),
    ({"prompt": "  "}, "write a prompt"),
    ({"prompt": "x" * 2001}, "prompt: at most 2000 characters, got 2001"),
    ({"bundles": "demo"}, "bundles: must be a list of bundle ids"),
    ({"bundles": []}, "choose at least one method"),
    ({"bundles": ["../../etc"]}, "unknown bundle '../../etc'"),
])
def test_each_bad_field_is_a_400_with_one_line(server, edit, message):
    url, _ = server
    status, out = call(url, "/api/generate", {**GOOD, **edit})
    assert status == 400 and message in out["error"] and "\n" not in out["error"], out
    assert call(url, "/api/bundles")[0] == 200  # the server answers the next request


@pytest.mark.parametrize("raw, status, message", [
    (b"{not json", 400, "the request is not JSON"),
    (b"[1, 2]", 400, "the request must be a JSON object"),
    (b"{" + b" " * 70000 + b"}", 413, "the request body is 70002 bytes; at most 65536"),
])
def test_a_bad_body_is_refused(server, raw, status, message):
    url, _ = server
    assert call(url, "/api/generate", raw=raw) == (status, {"error": message})
    assert call(url, "/api/bundles")[0] == 200


def test_an_unexpected_error_is_a_500_and_the_server_goes_on(server, capfd, monkeypatch):
    url, app = server

    def broken(request):
        raise RuntimeError("the model\nexploded")
    monkeypatch.setattr(app, "generate", broken)
    status, out = call(url, "/api/generate", GOOD)
    assert status == 500 and out["error"].startswith(
        "internal error (RuntimeError: the model exploded); the traceback is on the server's")
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: the model" in err
    monkeypatch.undo()
    status, out = call(url, "/api/generate", GOOD)
    assert status == 200 and len(out["results"]) == 1


def test_progress_while_methods_generate(server, monkeypatch, one_thread):
    url, app = server
    seen, one = [], app.one

    def watched(bundle_id, *args):
        seen.append(call(url, "/api/progress")[1])  # asked over HTTP while generating
        result = one(bundle_id, *args)
        seen.append(app.progress())
        return result
    monkeypatch.setattr(app, "one", watched)
    status, out = call(url, "/api/generate", {**GOOD, "bundles": IDS, "steps": 2})
    assert status == 200 and [r["bundle"] for r in out["results"]] == IDS
    assert [(s["busy"], s["done"], s["total"], s["bundle"]) for s in seen[::2]] == [
        (True, 0, 2, IDS[0]), (True, 1, 2, IDS[1])]
    assert seen[2]["finished"] == IDS[:1] and seen[1]["step"] == seen[1]["steps"] == 2
    assert call(url, "/api/progress")[1] == {"busy": False, "done": 2, "total": 2,
                                             "bundle": None, "step": 2, "steps": 2,
                                             "finished": IDS}


def test_lazy_methods_on_one_base_at_most_n_resident(runs, one_thread):
    app = App(str(runs), max_resident=1)
    assert app.pipelines == {}  # nothing loaded before it is asked for
    out = app.generate({**GOOD, "bundles": IDS, "seed": None})
    assert list(app.pipelines) == IDS[1:] and len(app.bases) == 1
    assert out["results"][0]["seed"] == out["results"][1]["seed"]  # one fresh seed for both
    both = App(str(runs), max_resident=2)
    a, b = both.pipeline(IDS[0]), both.pipeline(IDS[1])
    assert a.module.unet is b.module.unet and len(both.bases) == 1
    both.pipeline(IDS[0])  # used last: the other one would go first
    assert list(both.pipelines) == [IDS[1], IDS[0]]
    with pytest.raises(ValueError, match="max_resident must be at least 1"):
        App(str(runs), max_resident=0)


def test_a_photo_comes_with_a_note_on_the_detector(server):
    url, app = server
    app.pipeline(IDS[0]).detector.decode_options.update(center_threshold=0.0, max_people=1)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40, 3), np.uint8)).save(
        buf, format="PNG")
    photo = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    status, out = call(url, "/api/pose", {"photo": photo, "bundle": IDS[0]})
    assert status == 200 and np.asarray(out["people"]).shape[1:] == (17, 3)
    assert f"which knows {KNOWS} only" in out["note"] and "--detector" in out["note"]
    status, out = call(url, "/api/pose", {"json": json.dumps({"people": [], "canvas_width": 1,
                                                              "canvas_height": 1})})
    assert status == 400 and "no person" in out["error"]


def test_bound_to_this_machine_by_default(runs):
    server = serve(str(runs), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
