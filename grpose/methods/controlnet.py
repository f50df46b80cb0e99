"""ControlNet: the encoder copy on the rendered pose image (through the hint block)."""
from __future__ import annotations

import os

from diffusers import ControlNetModel

from grpose.data.io import state_mismatch
from grpose.methods.encoder import EncoderCopyMethod


class ControlNet(EncoderCopyMethod):
    """ControlNet (diffusers `ControlNetModel` weights, zero-initialised output convs) on the
    rendered pose. Its published pose condition is the OpenPose-18 render
    (`configs/method/controlnet.yaml` sets it). Its copy is a plain `ControlNetModel`, so it
    reads and writes diffusers ControlNet folders (`load_diffusers`, `save_diffusers`).

    Args:
        conditioning_channels: hint block stages (None: diffusers' (16, 32, 96, 256)).
        gradient_checkpointing: recompute the copy's activations in the backward pass.
        pose_style: the pose render it expects ("openpose" as published); when set, the CLI and
            `PoseDiffusionModule.check_data` reject datasets that render another style.
    """

    def __init__(self, conditioning_channels: tuple[int, ...] | None = None,
                 gradient_checkpointing: bool = False, pose_style: str | None = None):
        super().__init__(conditioning_channels, hint=True,
                         gradient_checkpointing=gradient_checkpointing)
        self.pose_style = pose_style

    def save_diffusers(self, folder: str) -> None:
        """Write the copy as a diffusers ControlNet folder (`config.json` +
        `diffusion_pytorch_model.safetensors`), e.g. for `StableDiffusionControlNetPipeline`."""
        self._require_attached().save_pretrained(folder, safe_serialization=True)

    def load_diffusers(self, folder: str) -> None:
        """Load a local diffusers ControlNet folder (e.g. an OpenPose ControlNet) into the copy;
        a missing, unexpected or misshapen tensor is named."""
        net = self._require_attached()
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"ControlNet: local folder {folder!r} does not exist")
        source = ControlNetModel.from_pretrained(folder, local_files_only=True)
        if source.config.controlnet_conditioning_channel_order != "rgb":
            raise ValueError(f"{folder}: conditioning channel order "
                             f"{source.config.controlnet_conditioning_channel_order!r}, not rgb")
        state = source.state_dict()
        problems = state_mismatch(state, net.state_dict(), most=8)
        if problems:
            raise ValueError(f"{folder}: does not fit this ControlNet ({problems})")
        net.load_state_dict(state)

    def _require_attached(self) -> ControlNetModel:
        if self.controlnet is None:
            raise RuntimeError("ControlNet.attach(unet) must be called first")
        return self.controlnet
