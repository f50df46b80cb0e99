"""ControlNet: the encoder copy on the rendered pose image (through the hint block)."""
from __future__ import annotations

import os

from diffusers import ControlNetModel

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
        state, ours = source.state_dict(), net.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (ours {tuple(ours[k].shape)})"
                 for k, v in state.items() if k in ours and v.shape != ours[k].shape]
        missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        if wrong or missing or unexpected:
            raise ValueError(f"{folder}: does not fit this ControlNet (missing {missing[:8]}, "
                             f"unexpected {unexpected[:8]}, shape mismatches {wrong[:8]})")
        net.load_state_dict(state)

    def _require_attached(self) -> ControlNetModel:
        if self.controlnet is None:
            raise RuntimeError("ControlNet.attach(unet) must be called first")
        return self.controlnet
