"""T2I-Adapter: diffusers' `T2IAdapter` on the rendered pose, its features added inside the frozen
UNet's down blocks (`down_intrablock_additional_residuals`)."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import torch
from diffusers import T2IAdapter as DiffusersT2IAdapter
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.base import PoseMethod, UNetConditioning, zero_module


class T2IAdapter(PoseMethod):
    """T2I-Adapter (diffusers `T2IAdapter`, `adapter_type="full_adapter"`) on the pose image in
    [0, 1], one feature map per UNet down block (channels = the UNet's `block_out_channels`).

    Zero-init contract: diffusers' adapter is not zero-initialised, so each of its outputs goes
    through a zero-initialised 1x1 conv (`zero_convs`) before it reaches the UNet; the adapter
    itself keeps diffusers' init. `zero_convs=False` drops them: the method is then exactly
    diffusers' `T2IAdapter` (the published layout, which `save_diffusers` writes), and does not
    start as the plain UNet. The features do not depend on x_t, t or the text: `prepare`
    computes them once per sampling run (and once per training step) into `cond.prepared`.
    Inference's conditioning scale multiplies every residual, as the pipeline's
    `adapter_conditioning_scale` does.

    Args:
        downscale_factor: the adapter's pixel-unshuffle factor = the VAE's latent factor (8 for
            SD 1.5, 4 for the tiny base), so that its first feature map is on the latent grid.
        num_res_blocks: ResNet blocks per adapter level (the published adapter: 2).
        zero_convs: zero-initialised 1x1 convs on the adapter's outputs (our contract); False:
            diffusers' layout, exportable as a diffusers `T2IAdapter` folder.
    """

    def __init__(self, downscale_factor: int = 8, num_res_blocks: int = 2,
                 zero_convs: bool = True):
        super().__init__()
        self.downscale_factor, self.num_res_blocks = downscale_factor, num_res_blocks
        self.use_zero_convs = zero_convs
        self.adapter: DiffusersT2IAdapter | None = None
        self.zero_convs = nn.ModuleList()

    def attach(self, unet: nn.Module) -> None:
        channels = list(unet.config.block_out_channels)
        self.adapter = DiffusersT2IAdapter(
            in_channels=3, channels=channels, num_res_blocks=self.num_res_blocks,
            downscale_factor=self.downscale_factor, adapter_type="full_adapter")
        if self.use_zero_convs:
            self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in channels)

    def save_diffusers(self, folder: str) -> None:
        """Write the adapter as a diffusers `T2IAdapter` folder (`save_pretrained`), which
        `StableDiffusionAdapterPipeline` loads; only without zero convs (diffusers' adapter feeds
        each level's output to the next level, so a 1x1 conv on the outputs alone has no place in
        its layout)."""
        if self.adapter is None:
            raise RuntimeError("T2IAdapter.attach(unet) must be called first")
        if self.use_zero_convs:
            raise ValueError("T2IAdapter with zero_convs has no diffusers T2IAdapter layout (the "
                             "1x1 convs on its outputs): train it with zero_convs: false to "
                             "export a diffusers folder")
        self.adapter.save_pretrained(folder, safe_serialization=True)

    def load_diffusers(self, folder: str) -> None:
        """Load a local diffusers `T2IAdapter` folder (e.g. a published pose adapter) into this
        method (attached, `zero_convs=False`); a differing config or tensor is named."""
        if self.adapter is None or self.use_zero_convs:
            raise RuntimeError("load_diffusers needs T2IAdapter(zero_convs=False), attached")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{folder}: not a diffusers T2IAdapter folder (config.json)")
        config = DiffusersT2IAdapter.load_config(folder)
        differ = {k: (v, config.get(k)) for k, v in self.adapter.config.items()
                  if not k.startswith("_") and _plain(config.get(k)) != _plain(v)}
        if differ:
            raise ValueError(f"{folder}: adapter config differs (here, there): {differ}")
        loaded = DiffusersT2IAdapter.from_pretrained(folder, local_files_only=True)
        self.adapter.load_state_dict(loaded.state_dict())

    def prepare(self, cond: PoseCondition) -> PoseCondition:
        if self.adapter is None:
            raise RuntimeError("T2IAdapter.attach(unet) must be called first")
        dtype = next(self.adapter.parameters()).dtype
        pose = ((cond.pose_image + 1) / 2).to(dtype)  # (B, 3, H, W) in [0, 1], as diffusers'
        features = self.adapter(pose)  # one (B, C_l, h_l, w_l) per level
        if self.use_zero_convs:
            features = [conv(f) for conv, f in zip(self.zero_convs, features)]
        return replace(cond, prepared=features)

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        if cond.prepared is None:
            cond = self.prepare(cond)
        features = cond.prepared
        if features[0].shape[-2:] != noisy_latents.shape[-2:]:
            raise ValueError(
                f"T2IAdapter: pose image {tuple(cond.pose_image.shape[-2:])} / downscale_factor "
                f"{self.downscale_factor} gives {tuple(features[0].shape[-2:])}, but the latents "
                f"are {tuple(noisy_latents.shape[-2:])}: set downscale_factor to the VAE's factor")
        return UNetConditioning(intrablock_residuals=list(features))  # the UNet pops from it


def _plain(value):
    return json.loads(json.dumps(value))  # tuples as lists, as a config file holds them
