"""The app's server: a page with a pose editor, and a small JSON API over `PosePipeline` for every
bundle under a runs folder (Python's own `http.server`: nothing to install, nothing reaches the
network; one generation at a time, the CPU being the limit).

API (JSON in and out; a bad request is `{"error": one line}` with status 400 (413: a body over
`Limits.max_body`), an unexpected error `{"error": one line}` with status 500, its traceback on
the console; the server keeps serving):
    GET  /api/bundles   the bundles found (`id`: path under the runs folder) or a message
    GET  /api/poses     the held-out poses of the runs' synthetic sets (normalised to [0, 1])
    GET  /api/progress  the generation under way: `{"busy", "done", "total", "bundle", "step",
                        "steps", "finished": [id, ...]}`
    POST /api/pose      `{"json": text}` (COCO / OpenPose) or `{"photo": data URL, "bundle": id}`
                        -> `{"people": (P, 17, 3) normalised, "note"}` (`note`: a line when the
                        bundle's detector only knows other images than photographs)
    POST /api/generate  `{"pose", "prompt", "bundles": [id, ...], "seed", "guidance_scale",
                        "conditioning_scale", "steps", "source", "source_pose",
                        "source_scale"}` -> per bundle the image (PNG data URL), the detected
                        pose (normalised), its OKS against the target, the seed, the notes
                        (`validate.options` gives each field's range; no seed: one fresh seed
                        for every bundle)

Methods load on first use on one shared base per base (`BaseCache`), at most `max_resident`
of them at once (the least recently used is dropped).

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
import secrets
import threading
import time
from collections import OrderedDict
from http.server import ThreadingHTTPServer

import numpy as np
from PIL import Image

from grpose.app import validate
from grpose.app.handler import make_handler
from grpose.app.validate import AppError, Limits
from grpose.data.humanart import HumanArtDataset
from grpose.pipeline import (BaseCache, PosePipeline, find_bundles, parse_pose_json,
                             read_bundle)
from grpose.pipeline.detectors import photo_note
from grpose.pipeline.poses import detect_people, fit_to

MAX_POSES = 32  # held-out poses offered per run
NO_BUNDLES = ("no bundles under {root}: `make demo` (or `make compare`) writes them under "
              "runs/demo/bundles; `--runs` points the app elsewhere")


class App:
    """The app's state: the bundles under `runs` and their pipelines, built on first use on one
    loaded base per base, at most `max_resident` at once (least recently used dropped).

    Args:
        runs: the folder searched for bundles.
        max_resident: methods kept loaded.
        limits: what one request may ask (`Limits`).
    """

    def __init__(self, runs: str, max_resident: int = 4, limits: Limits | None = None):
        if max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, got {max_resident}")
        self.runs, self.max_resident = os.path.abspath(runs), max_resident
        self.limits = limits or Limits()
        self.pipelines: OrderedDict[str, PosePipeline] = OrderedDict()
        self.bases = BaseCache()
        self.lock = threading.Lock()  # one generation (and model load) at a time
        self.state = {"busy": False, "done": 0, "total": 0, "bundle": None, "step": 0,
                      "steps": 0, "finished": []}

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
            pipe = PosePipeline.from_pretrained(folder, base=self.bases)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[bundle_id] = pipe
            while len(self.pipelines) > self.max_resident:
                self.pipelines.popitem(last=False)
            self.bases.keep({p.base_key for p in self.pipelines.values()})
        self.pipelines.move_to_end(bundle_id)
        return self.pipelines[bundle_id]

    def progress(self) -> dict:
        """The generation under way (what `/api/progress` answers)."""
        return {**self.state, "finished": list(self.state["finished"])}

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
        """The people of a pose upload (normalised keypoints)."""
        return self.pose_answer(request)["people"]

    def pose_answer(self, request: dict) -> dict:
        """`/api/pose`: the people of a JSON upload or a photo, and a note on the detector."""
        if "json" in request:
            try:
                content = json.loads(request["json"])
            except json.JSONDecodeError as err:
                raise AppError(f"the uploaded file is not valid JSON ({err})") from None
            people, canvas = parse_pose_json(content, "the uploaded pose")
            if canvas is None:
                raise AppError("the uploaded pose gives no canvas size (OpenPose "
                               "'canvas_width' / 'canvas_height', or one COCO 'images' entry)")
            return {"people": normalise(people, canvas), "note": None}
        if "photo" in request:
            with self.lock:
                pipe = self.pipeline(str(request.get("bundle", "")))
            if pipe.detector is None:
                raise AppError(f"bundle {request.get('bundle')!r} has no pose detector")
            image = decode_image(request["photo"], "the uploaded photo")
            size = (pipe.render.height, pipe.render.width)
            found = detect_people(image, pipe.detector, size, "the photo")
            return {"people": normalise(found, size),
                    "note": photo_note("the photo", pipe.detector_knows)}
        raise AppError("a pose request needs 'json' or 'photo'")

    def generate(self, request: dict) -> dict:
        """`/api/generate`: one image per chosen bundle (see the module's docstring)."""
        ids = validate.bundle_ids(request, self.limits)
        people = validate.people(request.get("pose"), "the pose", self.limits)
        prompt = validate.prompt(request, self.limits)
        options = validate.options(request, self.limits)
        if options["seed"] is None:  # one fresh seed, the same for every method
            options["seed"] = secrets.randbelow(2**31)
        results = []
        with self.lock:
            source = self.read_source(request, ids)
            self.state.update(busy=True, done=0, total=len(ids), finished=[])
            try:
                for bundle_id in ids:
                    self.state.update(bundle=bundle_id, step=0, steps=0)
                    results.append(self.one(bundle_id, prompt, people, options, source))
                    self.state["done"] += 1
                    self.state["finished"].append(bundle_id)
            finally:
                self.state.update(busy=False, bundle=None)
        return {"results": results}

    def one(self, bundle_id: str, prompt: str, people: np.ndarray, options: dict,
            source: dict) -> dict:
        """One bundle's result for a generate request."""
        pipe = self.pipeline(bundle_id)
        size = (pipe.render.height, pipe.render.width)
        steps = options["num_inference_steps"] or pipe.sampler.num_inference_steps
        self.state["steps"] = steps

        def step_done(p, step, timestep, kwargs):
            self.state["step"] = step + 1
            return kwargs
        start = time.time()
        out = pipe(prompt, fit_to(people, (1.0, 1.0), size), **options,
                   callback_on_step_end=step_done, **(source if pipe.transfer else {}))
        return {
            "bundle": bundle_id, "name": pipe.name, "image": data_url(out.images[0]),
            "seed": out.seeds[0], "seconds": round(time.time() - start, 2),
            "oks": None if out.oks is None else round(out.oks[0], 4),
            "detected": None if out.detected is None else normalise(out.detected[0], size),
            "source_pose": None if out.source_pose is None else normalise(out.source_pose,
                                                                          size),
            "notes": out.info["notes"]}

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
        source = {"source_image": image, "source_scale": validate.scale(
            request, "source_scale", self.limits.max_scale)}
        if request.get("source_pose") is not None:  # normalised to the source image
            people = validate.people(request["source_pose"], "the source pose", self.limits)
            source["source_pose"] = fit_to(people, (1.0, 1.0), (image.height, image.width))
        return source


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


def serve(runs: str = "runs", host: str = "127.0.0.1", port: int = 8765,
          max_resident: int = 4, limits: Limits | None = None) -> ThreadingHTTPServer:
    """The app's server (not yet serving: call `serve_forever`, e.g. in a thread).

    Args:
        runs: the folder searched for bundles.
        host: the address it listens on (default: this machine only).
        port: its port (0: any free one).
        max_resident: methods kept loaded at once (least recently used dropped).
        limits: what one request may ask (`Limits`).
    """
    return ThreadingHTTPServer((host, port), make_handler(App(runs, max_resident, limits)))
