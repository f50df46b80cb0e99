"""The app's server: a page with a pose editor, and a small JSON API over `PosePipeline` for every
bundle under a runs folder (Python's own `http.server`: nothing to install, nothing reaches the
network; one generation at a time, the CPU being the limit).

API (JSON in and out; an error is `{"error": message}` with status 400):
    GET  /api/bundles   the bundles found (`id`: path under the runs folder) or a message
    GET  /api/poses     the held-out poses of the runs' synthetic sets (normalised to [0, 1])
    POST /api/pose      `{"json": text}` (COCO / OpenPose) or `{"photo": data URL, "bundle": id}`
                        -> `{"people": (P, 17, 3) normalised}`
    POST /api/generate  `{"pose", "prompt", "bundles": [id, ...], "seed", "guidance_scale",
                        "conditioning_scale", "steps", "source", "source_pose",
                        "source_scale"}` -> per bundle the image (PNG data URL), the detected
                        pose (normalised) and its OKS against the target

Pose-transfer bundles (`"transfer": true` in the listing) re-render a source person: `source`
is its image (a PNG / JPEG data URL, like the photo upload), `source_pose` optionally its
keypoints normalised to the source image (default: the bundle's detector reads them); the
results then carry the source pose used. Pose bundles chosen beside them ignore the source; a
transfer bundle without one is an error naming it.
"""
from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from grpose.data.humanart import HumanArtDataset
from grpose.pipeline import PoseError, PosePipeline, find_bundles, parse_pose_json, read_bundle
from grpose.pipeline.poses import as_people, detect_people, fit_to

PAGE = os.path.join(os.path.dirname(__file__), "page.html")
MAX_POSES = 32  # held-out poses offered per run
NO_BUNDLES = ("no bundles under {root}: `make demo` (or `make compare`) writes them under "
              "runs/demo/bundles; `--runs` points the app elsewhere")


class AppError(ValueError):
    """A request the app cannot serve: shown to the user as it is."""


class App:
    """The app's state: the bundles under `runs` and their pipelines (built on first use)."""

    def __init__(self, runs: str):
        self.runs = os.path.abspath(runs)
        self.pipelines: dict[str, PosePipeline] = {}
        self.lock = threading.Lock()  # one generation at a time

    def bundles(self) -> list[dict]:
        found = []
        for folder in find_bundles(self.runs) if os.path.isdir(self.runs) else []:
            try:
                b = read_bundle(folder)
            except (ValueError, FileNotFoundError) as err:  # listed, so the user sees why
                found.append({"id": os.path.relpath(folder, self.runs), "error": str(err)})
                continue
            found.append({"id": os.path.relpath(folder, self.runs), "name": b.name,
                          "method": b.method, "size": [b.render.height, b.render.width],
                          "detector": b.detector is not None, "transfer": b.transfer,
                          "sampler": {"steps": b.sampler.num_inference_steps,
                                      "guidance_scale": b.sampler.guidance_scale,
                                      "source_scale": b.sampler.source_scale,
                                      "conditioning_scale": b.sampler.conditioning_scale,
                                      "seed": b.sampler.seed}})
        return found

    def listing(self) -> dict:
        found = self.bundles()
        return {"bundles": found, "message": None if found else NO_BUNDLES.format(root=self.runs)}

    def pipeline(self, bundle_id: str) -> PosePipeline:
        folder = os.path.normpath(os.path.join(self.runs, bundle_id))
        if os.path.commonpath([folder, self.runs]) != self.runs or not os.path.isfile(
                os.path.join(folder, "bundle.json")):
            raise AppError(f"unknown bundle {bundle_id!r} (not a bundle under {self.runs})")
        if bundle_id not in self.pipelines:
            self.pipelines[bundle_id] = PosePipeline.from_pretrained(folder)
        return self.pipelines[bundle_id]

    def poses(self) -> list[dict]:
        """Held-out poses of each run whose synthetic set is there (`<run>/data`)."""
        runs = sorted({os.path.dirname(os.path.dirname(os.path.join(self.runs, b["id"])))
                       for b in self.bundles()})
        poses = []
        for run in runs:
            data = os.path.join(run, "data")
            if not os.path.isfile(os.path.join(data, "mapping_file_validation.json")):
                continue
            ds = HumanArtDataset(data, "validation", layout="mapping", min_people=0)
            for i, rec in enumerate(ds.records[:MAX_POSES]):
                image, people = ds.load_raw(rec)  # (H, W, 3), (P, 17, 3) in its pixels
                poses.append({"name": f"{os.path.relpath(run, self.runs)} #{i}",
                              "caption": rec.caption, "people": normalise(people, image.shape)})
        return poses

    def read_pose(self, request: dict) -> list:
        if "json" in request:
            try:
                content = json.loads(request["json"])
            except json.JSONDecodeError as err:
                raise AppError(f"the uploaded file is not valid JSON ({err})") from None
            people, canvas = parse_pose_json(content, "the uploaded pose")
            if canvas is None:
                raise AppError("the uploaded pose gives no canvas size (OpenPose "
                               "'canvas_width' / 'canvas_height', or one COCO 'images' entry)")
            return normalise(people, canvas)
        if "photo" in request:
            pipe = self.pipeline(str(request.get("bundle", "")))
            if pipe.detector is None:
                raise AppError(f"bundle {request.get('bundle')!r} has no pose detector")
            image = decode_image(request["photo"], "the uploaded photo")
            size = (pipe.render.height, pipe.render.width)
            return normalise(detect_people(image, pipe.detector, size, "the photo"), size)
        raise AppError("a pose request needs 'json' or 'photo'")

    def generate(self, request: dict) -> dict:
        ids = request.get("bundles") or []
        if not ids:
            raise AppError("choose at least one method")
        people = as_people(request.get("pose"), "the pose")
        prompt = str(request.get("prompt", "")).strip()
        if not prompt:
            raise AppError("write a prompt")
        options = {k: _number(request.get(k), k, kind) for k, kind in (
            ("seed", int), ("guidance_scale", float), ("conditioning_scale", float))}
        options["num_inference_steps"] = _number(request.get("steps"), "steps", int)
        source = self.read_source(request, ids)
        results = []
        with self.lock:
            for bundle_id in ids:
                pipe = self.pipeline(bundle_id)
                size = (pipe.render.height, pipe.render.width)
                start = time.time()
                out = pipe(prompt, fit_to(people, (1.0, 1.0), size), **options,
                           **(source if pipe.transfer else {}))
                results.append({
                    "bundle": bundle_id, "name": pipe.name, "image": data_url(out.images[0]),
                    "seed": out.seeds[0], "seconds": round(time.time() - start, 2),
                    "oks": None if out.oks is None else round(out.oks[0], 4),
                    "detected": None if out.detected is None else normalise(out.detected[0],
                                                                            size),
                    "source_pose": None if out.source_pose is None else normalise(
                        out.source_pose, size)})
        return {"results": results}

    def read_source(self, request: dict, ids: list[str]) -> dict:
        """The source person's pipeline arguments for the chosen pose-transfer bundles (an
        error naming them when no source image came); `{}` when none is chosen."""
        transfer = [i for i in ids if self.pipeline(i).transfer]
        if not transfer:
            return {}
        if not request.get("source"):
            raise AppError(f"{', '.join(transfer)}: pose-transfer model(s): upload a source "
                           "image (the person to re-render in the pose)")
        image = decode_image(request["source"], "the uploaded source image")
        source = {"source_image": image,
                  "source_scale": _number(request.get("source_scale"), "source_scale", float)}
        if request.get("source_pose") is not None:  # normalised to the source image
            people = as_people(request["source_pose"], "the source pose")
            source["source_pose"] = fit_to(people, (1.0, 1.0), (image.height, image.width))
        return source


def _number(value, name: str, kind):
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise AppError(f"{name}: not a number: {value!r}") from None


def normalise(people: np.ndarray, canvas: tuple) -> list:
    """Keypoints `(P, 17, 3)` on a canvas (H, W) -> nested lists with x / W, y / H (missing joints
    stay `[-1, -1, 0]`)."""
    people = np.asarray(people, dtype=np.float64).reshape(-1, 17, 3).copy()
    present = people[..., 2] > 0
    people[..., 0] = np.where(present, people[..., 0] / canvas[1], -1)
    people[..., 1] = np.where(present, people[..., 1] / canvas[0], -1)
    return np.round(people, 5).tolist()


def decode_image(data: str, what: str) -> Image.Image:
    """A base64 image upload (a data URL or bare base64; PNG, JPEG, ...) as an RGB image."""
    try:
        raw = base64.b64decode(str(data).split(",", 1)[-1], validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise AppError(f"{what} is not an image ({err})") from None


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def make_handler(app: App):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: the app prints what matters
            pass

        def reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def answer(self, fn) -> None:
            try:
                body, status = fn(), 200
            except (AppError, PoseError, FileNotFoundError) as err:
                body, status = {"error": str(err)}, 400
            except ValueError as err:  # bad input caught deeper (a malformed pose, bundle)
                body, status = {"error": str(err)}, 400
            self.reply(status, json.dumps(body).encode())

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                with open(PAGE, "rb") as f:
                    self.reply(200, f.read(), "text/html; charset=utf-8")
            elif self.path == "/api/bundles":
                self.answer(app.listing)
            elif self.path == "/api/poses":
                self.answer(lambda: {"poses": app.poses()})
            else:
                self.reply(404, b'{"error": "not found"}')

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                return self.reply(400, b'{"error": "the request is not JSON"}')
            routes = {"/api/pose": lambda: {"people": app.read_pose(request)},
                      "/api/generate": lambda: app.generate(request)}
            if self.path not in routes:
                return self.reply(404, b'{"error": "not found"}')
            self.answer(routes[self.path])
    return Handler


def serve(runs: str = "runs", host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The app's server (not yet serving: call `serve_forever`, e.g. in a thread)."""
    return ThreadingHTTPServer((host, port), make_handler(App(runs)))
