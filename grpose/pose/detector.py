"""Pluggable pose detectors: images in, people out, whatever runs underneath.

Every detector maps images `(B, 3, H, W)` in [-1, 1] to one dict per image with
`keypoints (P, 17, 3)` (x, y, conf in input pixels) and `scores (P,)`, so the evaluation code
does not care whether our own network or an external export finds the people.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from grpose.data.skeletons import NUM_JOINTS
from grpose.pose.decode import decode_people

DECODE_OPTIONS = ("center_threshold", "joint_threshold", "snap_radius", "max_people")
MAP_OUTPUTS = ("centers", "heatmaps", "offsets", "refinements")
INPUT_RANGES = ("minus_one_one", "zero_one", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PoseDetector(ABC):
    """Interface: `detector(images (B, 3, H, W) in [-1, 1])` -> list of
    `{"keypoints": (P, 17, 3), "scores": (P,)}`, one per image."""

    @abstractmethod
    def __call__(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        ...


def load_pose_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """The network and decoding options of a `PoseEstimatorModule` Lightning checkpoint.

    The network is rebuilt from the `network_config` the module stored (class path and init
    args), then its weights are loaded strictly.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters", {})
    config = hparams.get("network_config")
    if not config:
        raise ValueError(f"{path}: no network_config in the checkpoint's hyper-parameters; "
                         "build the network yourself and pass NetworkDetector(network=...)")
    module_name, _, class_name = config["class_path"].rpartition(".")
    if not module_name.startswith("grpose."):  # a checkpoint names code: only ours is imported
        raise ValueError(f"{path}: network class {config['class_path']!r} is not a grpose class "
                         "(a checkpoint may only name grpose's own networks)")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path}: network class {config['class_path']} is not an nn.Module")
    network = cls(**config.get("init_args", {}))
    prefix = "network."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    network.load_state_dict(state)
    return network, {k: hparams[k] for k in DECODE_OPTIONS if k in hparams}


class NetworkDetector(PoseDetector):
    """Our pose network (e.g. `PoseNetwork`) plus `decode_people`.

    Args:
        network: the network; it is put in eval mode. Give this or `checkpoint`.
        checkpoint: path to a `PoseEstimatorModule` checkpoint (its decoding options are used
            unless `decode` overrides them).
        decode: decoding options (`center_threshold`, `joint_threshold`, `snap_radius`,
            `max_people`).
        device: where the network runs (None: wherever the input images are); outputs come back
            on the device of the input images.
    """

    def __init__(self, network: nn.Module | None = None, checkpoint: str | None = None,
                 decode: dict | None = None, device: str | None = None):
        if (network is None) == (checkpoint is None):
            raise ValueError("NetworkDetector needs exactly one of `network` and `checkpoint`")
        options = {}
        if checkpoint is not None:
            network, options = load_pose_checkpoint(checkpoint)
        unknown = set(decode or {}) - set(DECODE_OPTIONS)
        if unknown:
            raise ValueError(f"unknown decode options {sorted(unknown)}; known: {DECODE_OPTIONS}")
        self.decode_options = {**options, **(decode or {})}
        self.device = None if device is None else torch.device(device)
        self.network = network.eval() if device is None else network.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        device = images.device if self.device is None else self.device
        outputs = self.network.to(device)(images.to(device))
        people = decode_people(outputs, tuple(images.shape[-2:]), **self.decode_options)
        return [{k: v.to(images.device) for k, v in p.items()} for p in people]


def _import_onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        raise ImportError("OnnxDetector needs onnxruntime, which is not installed: "
                          "`pip install onnxruntime` (or onnxruntime-gpu)") from e


def scale_input(images: torch.Tensor, input_range: str) -> np.ndarray:
    """Images in [-1, 1] -> float32 array in the range an external model expects."""
    if input_range == "minus_one_one":
        x = images
    elif input_range == "zero_one":
        x = (images + 1) / 2
    elif input_range == "imagenet":
        mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
        x = ((images + 1) / 2 - mean) / images.new_tensor(IMAGENET_STD)[:, None, None]
    else:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    return x.detach().float().cpu().numpy()


class OnnxDetector(PoseDetector):
    """An external ONNX pose model run with onnxruntime (imported only when built).

    Two output layouts:
      - `"maps"`: the model returns our network's maps (as `PoseNetwork` exported with
        `torch.onnx.export`); `outputs` names the ONNX output holding each of `centers`,
        `heatmaps`, `offsets`, `refinements`, which `decode_people` turns into people.
      - `"people"`: the model returns people directly; `outputs` names `keypoints`
        `(B, P, 17, 3)` (input pixels) and `scores` `(B, P)`; people under `score_threshold` go.

    Args:
        path: local `.onnx` file.
        layout: "maps" or "people".
        outputs: our name -> ONNX output name (default: the same names).
        input_range: what the model expects: "minus_one_one", "zero_one" or "imagenet".
        decode: decoding options for the "maps" layout (see `NetworkDetector`).
        score_threshold: minimum person score in the "people" layout.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path: str, layout: str = "maps", outputs: dict[str, str] | None = None,
                 input_range: str = "minus_one_one", decode: dict | None = None,
                 score_threshold: float = 0.0, providers: list[str] | None = None):
        if layout not in ("maps", "people"):
            raise ValueError(f"layout must be 'maps' or 'people', got {layout!r}")
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        ort = _import_onnxruntime()
        self.session = ort.InferenceSession(path, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        names = MAP_OUTPUTS if layout == "maps" else ("keypoints", "scores")
        self.outputs = {n: (outputs or {}).get(n, n) for n in names}
        missing = set(self.outputs.values()) - {o.name for o in self.session.get_outputs()}
        if missing:
            raise ValueError(f"{path}: the model has no outputs named {sorted(missing)}")
        self.layout, self.input_range = layout, input_range
        self.decode_options, self.score_threshold = dict(decode or {}), score_threshold

    def __call__(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        feed = {self.input_name: scale_input(images, self.input_range)}
        values = self.session.run(list(self.outputs.values()), feed)
        found = {n: torch.from_numpy(np.asarray(v)).to(images.device)
                 for n, v in zip(self.outputs, values)}
        if self.layout == "maps":
            b, _, h, w = found["heatmaps"].shape
            for name in ("offsets", "refinements"):
                found[name] = found[name].reshape(b, NUM_JOINTS, 2, h, w)
            return decode_people(found, tuple(images.shape[-2:]), **self.decode_options)
        return [{"keypoints": kp[s >= self.score_threshold], "scores": s[s >= self.score_threshold]}
                for kp, s in zip(found["keypoints"], found["scores"])]


class PoseNetFeatures(nn.Module):
    """Globally pooled features of our pose network for images in [0, 1]: the FID / KID feature
    space of the demo, where no Inception weights exist offline. Give `network` or the
    `checkpoint` of a `PoseEstimatorModule`."""

    def __init__(self, network: nn.Module | None = None, checkpoint: str | None = None):
        super().__init__()
        if (network is None) == (checkpoint is None):
            raise ValueError("PoseNetFeatures needs exactly one of `network` and `checkpoint`")
        self.network = network if network is not None else load_pose_checkpoint(checkpoint)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1]
        return self.network(images * 2 - 1)["features"].mean(dim=(2, 3))  # (B, C)
