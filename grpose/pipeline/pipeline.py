"""`PosePipeline`: a prompt and a pose in, images out (diffusers style), for any method's bundle,
through `PoseDiffusionModule.generate` (the one denoising path and sampler); a pose-transfer
bundle also takes the source person's image (and pose)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from PIL import Image

from grpose.data.batch import PoseBatch, PoseSample, collate_pose_samples
from grpose.data.pairs import PairBatch, PairSample, collate_pair_samples
from grpose.data.render import render_pose, to_model_range
from grpose.diffusion.module import PoseDiffusionModule
from grpose.methods import TRANSFER_METHODS
from grpose.methods.weights import registry_name
from grpose.pipeline.bundle import (PARTS, Bundle, RenderSettings, SamplerSettings, build_detector,
                                    load_bundle, read_bundle, sampler_settings, save_bundle)
from grpose.pipeline.poses import resolve_pose
from grpose.pipeline.settings import is_transfer
from grpose.pipeline.sources import source_person
from grpose.pose.decode import match_people
from grpose.pose.detector import PoseDetector

FROM_BUNDLE = "bundle"


@dataclass
class PosePipelineOutput:
    """What a `PosePipeline` call returns."""

    images: list[Image.Image]
    pose: np.ndarray  # (P, 17, 3) the target pose, in the images' pixels
    pose_image: Image.Image  # the rendered condition
    seeds: list[int]
    detected: list[np.ndarray] | None = None  # (P_k, 17, 3) per image, with a detector
    oks: list[float] | None = None  # per image: mean OKS of the target people (0 unmatched)
    info: dict = field(default_factory=dict)
    source_pose: np.ndarray | None = None  # (Ps, 17, 3) pose transfer: the source pose used
    source_image: Image.Image | None = None  # pose transfer: the source as conditioned


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`(B, 3, H, W)` in [-1, 1] -> PIL images."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def pose_score(detected: dict[str, torch.Tensor], target: np.ndarray) -> float:
    """Mean OKS of the target people against the detected ones (one-to-one, best score first;
    an unmatched target person counts 0)."""
    gt = torch.from_numpy(target)
    matched = match_people(detected["keypoints"].cpu().float(), detected["scores"].cpu().float(),
                           gt, threshold=0.0)
    return float(matched.mean()) if len(matched) else 0.0


class PosePipeline:
    """Images for a prompt and a pose from a trained model.

        pipe = PosePipeline.from_pretrained("runs/demo/bundles/grpose_skeleton-s0")
        out = pipe("a person dancing", "pose.json", seed=0)   # or (P, 17, 3), or a photo
        out.images[0].save("dancing.png")

    Args:
        module: the model (`PoseDiffusionModule`); its sampler settings are the defaults.
        render: how its pose images are rendered (style, line scale, image size).
        detector: reads poses from photos and the generated images' poses (OKS); optional.
        name: a label (the app's column title).
    """

    def __init__(self, module: PoseDiffusionModule, render: RenderSettings,
                 detector: PoseDetector | None = None, name: str = "model",
                 parts: dict | None = None):
        self.module, self.render, self.detector, self.name = module.eval(), render, detector, name
        self.parts = parts  # the base's specs, when known (`save_pretrained`)

    @classmethod
    def from_pretrained(cls, folder: str, detector: PoseDetector | str | None = FROM_BUNDLE,
                        device: str | torch.device = "cpu") -> PosePipeline:
        """The pipeline of a bundle folder (`grpose.pipeline.bundle`); `detector`: the bundle's
        own ("bundle"), another `PoseDetector`, or None."""
        bundle: Bundle = read_bundle(folder)
        module = load_bundle(folder, bundle).to(device)
        if detector == FROM_BUNDLE:
            detector = build_detector(bundle)
        return cls(module, bundle.render, detector, bundle.name)

    @classmethod
    def from_checkpoint(cls, checkpoint: str, render: RenderSettings,
                        detector: PoseDetector | None = None, **kwargs) -> PosePipeline:
        """The pipeline of a grpose Lightning checkpoint (its parts rebuilt from the configs the
        CLI stored; `kwargs` go to `load_from_checkpoint`, e.g. the parts of a model built in
        Python), rendering poses as `render` says (the training data's `pose_style`,
        `render_scale` and `resolution`)."""
        module = PoseDiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu",
                                                          **kwargs)
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True,
                            mmap=True).get("hyper_parameters", {})
        parts = {p: _plain_spec(stored[p]) for p in PARTS
                 if _is_spec(stored.get(p)) and p not in kwargs}
        return cls(module, render, detector, os.path.basename(checkpoint),
                   parts if len(parts) == len(PARTS) else None)

    def save_pretrained(self, folder: str, parts: dict | None = None) -> str:
        """Write this pipeline as a bundle; `parts`: the base's specs (default: those of the
        checkpoint's configs, `from_checkpoint`)."""
        parts = parts or self.parts
        if parts is None:
            raise ValueError("save_pretrained: the base's configs are unknown (a model built in "
                             "Python, or parts given to from_checkpoint): pass parts= specs")
        return save_bundle(folder, self.module, parts, self.render, name=self.name)

    @property
    def sampler(self) -> SamplerSettings:
        """The model's sampling defaults."""
        return sampler_settings(self.module)

    @property
    def transfer(self) -> bool:
        """A pose-transfer model: each call needs the source person's image."""
        return is_transfer(self.module.method)

    def render_pose(self, people: np.ndarray) -> torch.Tensor:
        """Keypoints `(P, 17, 3)` rendered as the model's pose condition: `(3, H, W)` in
        [-1, 1]."""
        return to_model_range(render_pose(people, self.render.height, self.render.width,
                                          style=self.render.style, scale=self.render.scale))

    def batch(self, prompt: str, people: np.ndarray, num_images: int,
              source: tuple[np.ndarray, np.ndarray] | None = None) -> PoseBatch | PairBatch:
        """The `PoseBatch` of `num_images` copies of one prompt and pose; with `source` (the
        source image `uint8 (H, W, 3)` at the model's size and its people `(Ps, 17, 3)`), the
        `PairBatch` of that source re-rendered in the pose (its target images are blank)."""
        h, w = self.render.height, self.render.width
        pose = self.render_pose(people)  # (3, H, W)
        targets = [PoseSample(image=torch.zeros(3, h, w), pose_image=pose,
                              keypoints=torch.from_numpy(people), caption=prompt,
                              meta={"id": f"pose-{k}"}) for k in range(num_images)]
        if source is None:
            return collate_pose_samples(targets)
        rgb, source_people = source
        image, source_pose = to_model_range(rgb), self.render_pose(source_people)
        return collate_pair_samples([PairSample(
            source_image=image, source_pose_image=source_pose,
            source_keypoints=torch.from_numpy(source_people), image=t.image,
            pose_image=t.pose_image, keypoints=t.keypoints, caption=t.caption, meta=t.meta)
            for t in targets])

    def check_source(self, source_image, source_pose) -> None:
        """A source image for a pose-transfer model, none for a pose model: else one error."""
        try:
            method = registry_name(self.module.method)
        except ValueError:  # a method built in Python, not registered
            method = type(self.module.method).__name__
        if self.transfer and source_image is None:
            raise ValueError(f"{self.name}: {method} is a pose-transfer method: give a source "
                             "image (source_image=, the person to re-render in the pose)")
        if not self.transfer and source_image is not None:
            raise ValueError(f"{self.name}: {method} is a pose method and takes no source image "
                             f"(pose-transfer methods do: {', '.join(TRANSFER_METHODS)})")
        if source_image is None and source_pose is not None:
            raise ValueError(f"{self.name}: a source pose without a source image")

    @torch.no_grad()
    def __call__(self, prompt: str, pose, negative_prompt: str | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 conditioning_scale: float | None = None, seed: int | None = None,
                 num_images: int = 1, canvas: tuple[int, int] | None = None,
                 source_image=None, source_pose=None, source_scale: float | None = None
                 ) -> PosePipelineOutput:
        """Images for `prompt` in `pose`: COCO-17 keypoints `(P, 17, 3)` / a list of people (on
        `canvas` (H, W), default the model's size), a COCO-style or OpenPose JSON file, or a
        photo (through the detector). Image k uses seed `seed + k` (default: the model's);
        `None` settings are the model's. With a detector, each image's detected pose and its
        OKS against the target come back too.

        A pose-transfer model (`transfer`) re-renders a source person in `pose` and needs
        `source_image` (a path, a PIL image or a `uint8 (H, W, 3)` array); it is stretched to
        the model's size as a pose canvas is (no letterbox; area averaging when shrinking,
        bicubic when growing, as the training pairs were). `source_pose`: the source person's
        keypoints in the source image's pixels (the forms `pose` takes: an array, or a COCO /
        OpenPose JSON file, whose canvas is fitted to the source image); None: the detector
        reads it from the source image. `source_scale` overrides the guidance's source scale.
        A pose model given a source image, or a pose-transfer model given none, is an error.
        The output carries the source pose used and the source image as conditioned."""
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        self.check_source(source_image, source_pose)
        size = (self.render.height, self.render.width)
        people = resolve_pose(pose, size, self.detector, canvas)  # (P, 17, 3)
        source = None if source_image is None else source_person(
            source_image, source_pose, size, self.detector)  # (H, W, 3), (Ps, 17, 3)
        batch = self.batch(prompt, people, num_images, source)
        for f in fields(batch):
            if isinstance(getattr(batch, f.name), torch.Tensor):
                setattr(batch, f.name, getattr(batch, f.name).to(self.module.device))
        seed = self.module.hparams.seed if seed is None else int(seed)
        seeds = [seed + k for k in range(num_images)]
        guidance = None
        if guidance_scale is not None or source_scale is not None:
            guidance = self.sampler.guidance(guidance_scale, source_scale)
        images = self.module.generate(batch, seeds, scale=conditioning_scale,
                                      num_inference_steps=num_inference_steps,
                                      guidance=guidance, negative_prompt=negative_prompt)
        out = PosePipelineOutput(to_pil(images), people, to_pil(batch.pose_image[:1])[0], seeds)
        if source is not None:
            out.source_image, out.source_pose = Image.fromarray(source[0]), source[1]
        if self.detector is not None:
            found = self.detector(images.float())
            out.detected = [f["keypoints"].cpu().numpy() for f in found]
            out.oks = [pose_score(f, people) for f in found]
        return out


def _is_spec(value) -> bool:
    return hasattr(value, "get") and value.get("class_path") is not None


def _plain_spec(value) -> dict:
    """A jsonargparse Namespace / dict spec as plain JSON data."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain_spec(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_spec(v) for v in value]
    return value

