"""ControlNet: the encoder copy on the rendered pose image (through the hint block)."""
from __future__ import annotations

from grpose.methods.encoder import EncoderCopyMethod


class ControlNet(EncoderCopyMethod):
    """ControlNet (diffusers `ControlNetModel` weights, zero-initialised output convs) on the
    rendered pose. Its published pose condition is the OpenPose-18 render
    (`configs/method/controlnet.yaml` sets it).

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
