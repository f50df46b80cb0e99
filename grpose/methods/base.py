"""The one conditioning interface: what a pose method may give the frozen UNet.

A method is built from hyper-parameters alone (so YAML can name it); `attach(unet)` builds what
depends on the frozen UNet (e.g. a trainable copy of its encoder). Its forward maps
`(x_t, t, text states, PoseCondition)` to a `UNetConditioning`; `grpose.diffusion.denoiser`
is the one place that applies it to the UNet. At initialisation every method's conditioning
leaves the UNet's prediction unchanged.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from grpose.data.condition import PoseCondition
from grpose.methods.film import FiLM
from grpose.methods.reference import Reference


@dataclass
class UNetConditioning:
    """What a method adds to the UNet; None where it adds nothing.

    down_residuals / mid_residual: added to the UNet's skip connections / mid block output
    (ControlNet); intrablock_residuals: added inside the down blocks (T2I-Adapter);
    extra_channels: concatenated to the UNet input (HumanSD; the UNet's `conv_in` must take them);
    modulation: FiLM of named UNet blocks (see `grpose.methods.film`);
    reference: tokens joined to named self-attention layers (see `grpose.methods.reference`).
    """

    down_residuals: list[torch.Tensor] | None = None  # one per UNet skip connection
    mid_residual: torch.Tensor | None = None
    intrablock_residuals: list[torch.Tensor] | None = None
    extra_channels: torch.Tensor | None = None  # (B, C_extra, h, w)
    modulation: dict[str, FiLM] | None = None
    reference: dict[str, Reference] | None = None

    def map(self, fn, extra_channels: bool = True) -> UNetConditioning:
        """`fn` applied to every tensor (to both FiLM terms, to references' per-item scales, not
        their tokens); `extra_channels=False` leaves those as they are."""
        def each(xs):
            return None if xs is None else [fn(x) for x in xs]
        return UNetConditioning(
            each(self.down_residuals), None if self.mid_residual is None else fn(self.mid_residual),
            each(self.intrablock_residuals),
            self.extra_channels if self.extra_channels is None or not extra_channels
            else fn(self.extra_channels),
            None if self.modulation is None else {k: f.map(fn) for k, f in self.modulation.items()},
            None if self.reference is None else {k: r.map(fn) for k, r in self.reference.items()})

    def scaled(self, scale: float) -> UNetConditioning:
        """Residuals and FiLM deltas times `scale` (the conditioning scale of inference)."""
        return self if scale == 1.0 else self.map(lambda x: x * scale, extra_channels=False)

    def masked(self, active: torch.Tensor) -> UNetConditioning:
        """Everything zeroed for the items where `active (B,)` is False (the plain UNet there)."""
        return self.map(lambda x: x * active.view(-1, *[1] * (x.ndim - 1)).to(x.dtype))


class PoseMethod(nn.Module):
    """Base class of every method: pose + noisy latents + timestep + text states in,
    `UNetConditioning` out.

    `handles_inactive`: False (default) lets the denoising path zero the conditioning of items
    whose `PoseCondition.active` is False; a method with its own unconditional behaviour (e.g.
    Stable-Pose's all-ones masks) sets it True and reads `active` itself.

    `settings` holds the arguments a method was built with (`grpose.methods.save_method` writes
    them beside its weights).
    """

    handles_inactive = False

    def __new__(cls, *args, **kwargs):
        # `settings`: the constructor's arguments, defaults filled in (what an export records)
        method = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        bound = signature.bind_partial(None, *args, **kwargs)
        bound.apply_defaults()
        settings = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is not inspect.Parameter.VAR_POSITIONAL:
                settings.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
        object.__setattr__(method, "settings", settings)
        return method

    def attach(self, unet: nn.Module) -> None:
        """Build the parts that depend on the frozen UNet. Called once by the diffusion module."""

    def prepare(self, cond: PoseCondition) -> PoseCondition:
        """Work that depends on the pose alone (not on x_t, t or the text), returned in
        `cond.prepared` for `forward` to read: the sampler calls it once per sampling run, the
        denoising path once per call where it was not done. Default: nothing to prepare."""
        return cond

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_states: torch.Tensor, cond: PoseCondition) -> UNetConditioning:
        raise NotImplementedError

    def training_logs(self) -> dict[str, torch.Tensor]:
        """Scalars about the method itself (e.g. how far its zero-initialised parts opened),
        logged by the diffusion module as `train/method/<key>` each training step. Default:
        none."""
        return {}


class NoPose(PoseMethod):
    """Plain text-to-image (SD without pose): adds nothing to the UNet."""

    def forward(self, noisy_latents, timesteps, text_states, cond) -> UNetConditioning:
        return UNetConditioning()


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (for zero-initialised injection layers)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
