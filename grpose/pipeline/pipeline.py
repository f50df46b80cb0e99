"""`PosePipeline`: a prompt and a pose in, images out, in diffusers' conventions (prompt lists,
`num_images_per_prompt`, `generator`, `output_type`, `return_dict`, `torch_dtype` / `.to()`, a
swappable `scheduler`, `callback_on_step_end`), for any method's bundle, through the diffusion
module's one denoising path (`PoseDiffusionModule.generate`'s images for the same seeds, bit for
bit); a pose-transfer bundle also takes the source person's image (and pose)."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils import BaseOutput
from PIL import Image

from grpose.data.batch import PoseBatch, PoseSample, collate_pose_samples
from grpose.data.pairs import PairBatch, PairSample, collate_pair_samples
from grpose.data.render import render_pose, to_model_range
from grpose.diffusion.module import PoseDiffusionModule
from grpose.methods import TRANSFER_METHODS
from grpose.methods.weights import registry_name
from grpose.pipeline.bundle import RenderSettings, SamplerSettings, sampler_settings
from grpose.pipeline.call import (CALLBACK_INPUTS, OUTPUT_TYPES, check_count, convert,
                                  denoise, initial_noise, negative_list, pose_score, prompt_list,
                                  to_pil)
from grpose.pipeline.detectors import FROM_BUNDLE, PhotoDetectorWarning, warn_photo
from grpose.pipeline.loading import PretrainedMixin
from grpose.pipeline.poses import is_photo, resolve_pose
from grpose.pipeline.settings import guidance_spec, is_transfer
from grpose.pipeline.sources import source_person
from grpose.pose.detector import PoseDetector

__all__ = ["FROM_BUNDLE", "PosePipeline", "PosePipelineOutput", "pose_score", "to_pil"]


@dataclass
class PosePipelineOutput(BaseOutput):
    """What a `PosePipeline` call returns (diffusers' `BaseOutput`: `out.images`, `out[0]`,
    `out.to_tuple()`, which `return_dict=False` gives)."""

    images: list[Image.Image] | np.ndarray | torch.Tensor  # as `output_type` asks
    pose: np.ndarray | None = None  # (P, 17, 3) the target pose, in the images' pixels
    pose_image: Image.Image | None = None  # the rendered condition
    seeds: list[int] | None = None  # per image (None: the noise came from generators)
    detected: list[np.ndarray] | None = None  # (P_k, 17, 3) per image, with a detector
    oks: list[float] | None = None  # per image: mean OKS of the target people (0 unmatched)
    info: dict = field(default_factory=dict)  # the settings used, timings, notes
    source_pose: np.ndarray | None = None  # (Ps, 17, 3) pose transfer: the source pose used
    source_image: Image.Image | None = None  # pose transfer: the source as conditioned


class PosePipeline(PretrainedMixin):
    """Images for a prompt and a pose from a trained model.

        pipe = PosePipeline.from_pretrained("runs/demo/bundles/grpose_skeleton-s0")
        out = pipe("a person dancing", "pose.json", seed=0)   # or (P, 17, 3), or a photo
        out.images[0].save("dancing.png")

    Args:
        module: the model (`PoseDiffusionModule`); its sampler settings are the defaults.
        render: how its pose images are rendered (style, line scale, image size).
        detector: reads poses from photos and the generated images' poses (OKS); optional.
        name: a label (the app's column title).
        parts: the base's specs (`save_pretrained` writes them; from a bundle or a checkpoint).
        folder: where the relative files of `parts` / `detector_spec` are (a bundle's folder).
        detector_spec: the detector's spec, written by `save_pretrained`.
        detector_knows: what the detector was trained on (a photo read with it says so).
        trained_unet: `save_pretrained` stores the whole UNet (default: the module trains it).
    """

    def __init__(self, module: PoseDiffusionModule, render: RenderSettings,
                 detector: PoseDetector | None = None, name: str = "model",
                 parts: dict | None = None, folder: str | None = None,
                 detector_spec: dict | None = None, detector_knows: str | None = None,
                 trained_unet: bool | None = None):
        self.module, self.render, self.detector, self.name = module.eval(), render, detector, name
        self.parts, self.folder, self.trained_unet = parts, folder, trained_unet
        self.detector_spec, self.detector_knows = detector_spec, detector_knows
        self.base_key: str | None = None  # set by from_pretrained (bundles sharing a base)
        self.progress_bar_config: dict = {}

    # -- diffusers' handles ----------------------------------------------------------------------
    def to(self, device: str | torch.device | None = None,
           dtype: torch.dtype | None = None) -> PosePipeline:
        """Move the model (method and base: shared with the pipelines on the same base) to
        `device` and / or `dtype`; sampling then runs there, in that dtype. Returns self."""
        if device is not None:
            self.module.to(device)
        if dtype is not None:
            if not dtype.is_floating_point:
                raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
            self.module.to(dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.module.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's (and its sampling's) dtype."""
        return self.module.dtype

    @property
    def scheduler(self) -> SchedulerMixin:
        """The sampling scheduler (`PoseDiffusionModule.sampler`); swap it as in diffusers:
        `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`."""
        return self.module.sampler

    @scheduler.setter
    def scheduler(self, scheduler: SchedulerMixin) -> None:
        if not isinstance(scheduler, SchedulerMixin):
            raise ValueError(f"scheduler must be a diffusers scheduler, got "
                             f"{type(scheduler).__name__}")
        self.module.sampler = scheduler

    @property
    def components(self) -> dict:
        """The loaded parts, by name (diffusers' `pipe.components`)."""
        m = self.module
        return {"unet": m.unet, "vae": m.vae, "text_encoder": m.text_encoder,
                "method": m.method, "scheduler": m.sampler, "detector": self.detector}

    def set_progress_bar_config(self, **kwargs) -> None:
        """The sampling loop's progress bar: `disable=True` hides it (shown by default)."""
        unknown = sorted(set(kwargs) - {"disable"})
        if unknown:
            raise ValueError(f"set_progress_bar_config: {unknown}: only 'disable' reaches the "
                             "sampling loop's progress bar")
        self.progress_bar_config = dict(kwargs)

    @property
    def sampler(self) -> SamplerSettings:
        """The model's sampling defaults."""
        return sampler_settings(self.module)

    @property
    def transfer(self) -> bool:
        """A pose-transfer model: each call needs the source person's image."""
        return is_transfer(self.module.method)

    # -- one call ---------------------------------------------------------------------------------
    def render_pose(self, people: np.ndarray) -> torch.Tensor:
        """Keypoints `(P, 17, 3)` rendered as the model's pose condition: `(3, H, W)` in
        [-1, 1]."""
        return to_model_range(render_pose(people, self.render.height, self.render.width,
                                          style=self.render.style, scale=self.render.scale))

    def batch(self, prompt: str | list[str], people: np.ndarray, num_images: int = 1,
              source: tuple[np.ndarray, np.ndarray] | None = None) -> PoseBatch | PairBatch:
        """The `PoseBatch` of one pose for each of `prompt`'s captions, `num_images` times each
        (in diffusers' order: `[p0, p0, p1, p1]`); with `source` (the source image
        `uint8 (H, W, 3)` at the model's size and its people `(Ps, 17, 3)`), the `PairBatch` of
        that source re-rendered in the pose (its target images are blank)."""
        h, w = self.render.height, self.render.width
        pose = self.render_pose(people)  # (3, H, W)
        captions = [p for p in prompt_list(prompt) for _ in range(num_images)]
        targets = [PoseSample(image=torch.zeros(3, h, w), pose_image=pose,
                              keypoints=torch.from_numpy(people), caption=caption,
                              meta={"id": f"pose-{k}"}) for k, caption in enumerate(captions)]
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
    def __call__(self, prompt: str | list[str], pose,
                 negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 conditioning_scale: float | None = None, seed: int | None = None,
                 num_images: int | None = None, canvas: tuple[int, int] | None = None,
                 source_image=None, source_pose=None, source_scale: float | None = None, *,
                 num_images_per_prompt: int = 1, generator=None, output_type: str = "pil",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple = CALLBACK_INPUTS):
        """Images for each prompt in `pose`, in diffusers' conventions.

        Args:
            prompt: a caption, or a list of them (each gets `num_images_per_prompt` images, in
                diffusers' order `[p0, p0, p1, p1]`).
            pose: COCO-17 keypoints `(P, 17, 3)` / a list of people (on `canvas` (H, W),
                default the model's size), a COCO-style or OpenPose JSON file, or a photo
                (through the detector; a detector that knows only other images says so in a
                `PhotoDetectorWarning`).
            negative_prompt: one, or one per prompt (default: the model's).
            num_inference_steps: sampling steps (default: the model's).
            guidance_scale: the guidance's (first) scale (default: the model's).
            conditioning_scale: the method's residual multiplier (default: the model's).
            seed: image k's noise from seed `seed + k` (`PoseDiffusionModule.generate`'s
                draw); with neither seed nor generator, a fresh random seed (in `seeds`).
            num_images: the older name of `num_images_per_prompt`.
            canvas: the (H, W) that keypoints are given on.
            source_image: pose transfer: the source person (a path, a PIL image or a
                `uint8 (H, W, 3)` array), stretched to the model's size as training pairs were.
            source_pose: its keypoints in the source image's pixels (an array, or a COCO /
                OpenPose JSON file); None: the detector reads them.
            source_scale: the guidance's source scale (default: the model's).
            num_images_per_prompt: images per prompt.
            generator: a `torch.Generator` (the batch's noise from it) or a list of one per
                image (image k from generator k), as diffusers.
            output_type: "pil", "np" (float32 `(N, H, W, 3)` in [0, 1]), "pt" (`(N, 3, H, W)`
                in [0, 1]) or "latent" (`(N, 4, h, w)`, not decoded, no detection).
            return_dict: False returns `PosePipelineOutput.to_tuple()` (images first).
            callback_on_step_end: `f(pipe, step, timestep, callback_kwargs) -> callback_kwargs`
                after every step (`callback_kwargs["latents"]`: read only).
            callback_on_step_end_tensor_inputs: the tensors given to it (only "latents").

        A pose model given a source image, or a pose-transfer model given none, is an error.
        With a detector, each image's detected pose and its OKS against the target come back.
        """
        start = time.time()
        if num_images is not None:
            if num_images_per_prompt != 1:
                raise ValueError("give num_images_per_prompt or num_images, not both")
            num_images_per_prompt = num_images
        per_prompt = check_count("num_images_per_prompt", num_images_per_prompt)
        prompts = prompt_list(prompt)
        settings = self.module.sampling_settings
        negatives = negative_list(negative_prompt, prompts, settings.negative_prompt)
        steps = check_count("num_inference_steps", settings.num_inference_steps
                            if num_inference_steps is None else num_inference_steps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - set(CALLBACK_INPUTS))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {unknown}: only "
                             f"{list(CALLBACK_INPUTS)} are given to the callback")
        self.check_source(source_image, source_pose)
        size = (self.render.height, self.render.width)
        notes = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            people = resolve_pose(pose, size, self.detector, canvas)  # (P, 17, 3)
            if is_photo(pose):
                warn_photo(str(pose) if isinstance(pose, (str, os.PathLike)) else "the photo",
                           self.detector_knows)
            source = None if source_image is None else source_person(
                source_image, source_pose, size, self.detector)  # (H, W, 3), (Ps, 17, 3)
            if source_image is not None and source_pose is None:
                warn_photo("the source image", self.detector_knows)
        for w in caught:  # said again to the caller; the detector's notes kept in the info
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if issubclass(w.category, PhotoDetectorWarning):
                notes.append(str(w.message))
        batch = self.batch(prompts, people, per_prompt, source).to(self.device, self.dtype)
        vae = self.module.vae
        shape = (vae.config.latent_channels, *self.module.latent_size(size))
        latents, seeds, origin, generators = initial_noise(len(batch), shape, self.device,
                                                           self.dtype, seed, generator)
        guidance = self.module.guidance
        if guidance_scale is not None or source_scale is not None:
            guidance = self.sampler.guidance(guidance_scale, source_scale)
        scale = settings.conditioning_scale if conditioning_scale is None else conditioning_scale
        latents = denoise(self.module, batch, latents, [n for n in negatives
                                                        for _ in range(per_prompt)],
                          guidance, steps, scale, callback_on_step_end, self,
                          not self.progress_bar_config.get("disable", False), generators)
        out = PosePipelineOutput(latents, people, to_pil(batch.pose_image[:1].float())[0], seeds)
        if output_type != "latent":
            latent_scale = self.module.hparams.latent_scale
            decoded = vae.decode(latents / latent_scale).sample.clamp(-1, 1)  # (N, 3, H, W)
            out.images = convert(decoded, output_type)
            if self.detector is not None:
                found = self.detector(decoded.float())
                out.detected = [f["keypoints"].cpu().numpy() for f in found]
                out.oks = [pose_score(f, people) for f in found]
        if source is not None:
            out.source_image, out.source_pose = Image.fromarray(source[0]), source[1]
        out.info = {"name": self.name, "method": type(self.module.method).__name__,
                    "num_inference_steps": steps, "guidance": guidance_spec(guidance),
                    "conditioning_scale": scale, "scheduler": type(self.scheduler).__name__,
                    "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
                    "noise": origin, "num_images": len(batch), "notes": notes,
                    "seconds": round(time.time() - start, 3)}
        return out if return_dict else out.to_tuple()
