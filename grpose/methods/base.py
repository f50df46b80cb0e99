"""The one conditioning interface: what a pose method may give the frozen UNet.

A method is built from hyper-parameters alone (so YAML can name it); `attach(unet)` builds what
depends on the frozen UNet (e.g. a trainable copy of its encoder); a method that feeds the UNet
extra input channels declares them (`PoseMethod.extra_input_channels`) and the base class widens
the UNet's `conv_in` for them after `attach`, whatever other methods share the UNet (each
`attach` sees the UNet's plain input, `latent_input`). Its forward maps
`(x_t, t, text states, PoseCondition)` to a `UNetConditioning`; `grpose.diffusion.denoiser`
is the one place that applies it to the UNet. At initialisation every method's conditioning
leaves the UNet's prediction unchanged.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


class ConvIn(nn.Conv2d):
    """A UNet's `conv_in` widened to `latent_channels + k` inputs (one weight, so its state dict
    is that of a plain conv with more input channels). It convolves the latent and the extra
    channels separately and adds them: the same sum, but zero extra channels add exact zeros,
    and an input with the latent channels only is taken as extra channels all zero.

    Args:
        conv: the UNet's plain, zero-padded `conv_in` (its weight and bias are copied; the new
            input channels get the default conv init).
        extra_channels: the number of input channels added after the latent ones.
    """

    def __init__(self, conv: nn.Conv2d, extra_channels: int):
        if conv.padding_mode != "zeros":
            raise ValueError(f"widening a conv_in needs zero padding, got padding_mode "
                             f"{conv.padding_mode!r}")
        super().__init__(conv.in_channels + extra_channels, conv.out_channels, conv.kernel_size,
                         conv.stride, conv.padding, conv.dilation, conv.groups,
                         conv.bias is not None, conv.padding_mode,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.latent_channels = conv.in_channels
        with torch.no_grad():
            self.weight[:, :conv.in_channels].copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.requires_grad_(conv.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.latent_channels
        if x.shape[1] not in (n, self.in_channels):
            raise ValueError(f"conv_in takes {n} or {self.in_channels} channels, got {x.shape[1]}")
        # one memory format for both inputs, so that both give the same bits
        out = self.conv(x[:, :n].contiguous(), self.weight[:, :n], self.bias)
        if x.shape[1] == n:
            return out
        return out + self.conv(x[:, n:], self.weight[:, n:], None)

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """`F.conv2d` with this conv's stride, padding, dilation and groups."""
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def latent_conv(self) -> nn.Conv2d:
        """A plain conv on the latent channels only, holding a copy of their weights (built
        without drawing from the global RNG)."""
        conv = nn.utils.skip_init(nn.Conv2d, self.latent_channels, self.out_channels,
                                  self.kernel_size, self.stride, self.padding, self.dilation,
                                  self.groups, self.bias is not None, self.padding_mode,
                                  device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight[:, :self.latent_channels])
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.requires_grad_(self.weight.requires_grad)


def widen_unet_input(unet: nn.Module, channels: int) -> None:
    """Make `unet.conv_in` take `channels` input channels after the latent ones (`ConvIn`) and
    set `unet.config.in_channels` to match. Idempotent: a UNet already widened by the same
    number is left as it is; by another number, a ValueError.

    Args:
        unet: a diffusers `UNet2DConditionModel` (or any module with a `conv_in` conv).
        channels: extra input channels; 0 leaves the UNet alone.
    """
    if channels == 0:
        return
    conv = unet.conv_in
    if isinstance(conv, ConvIn):
        if conv.in_channels != conv.latent_channels + channels:
            raise ValueError(f"the UNet's conv_in already takes {conv.in_channels} channels, "
                             f"not {conv.latent_channels} + {channels}")
        return
    unet.conv_in = ConvIn(conv, channels)
    unet.register_to_config(in_channels=unet.conv_in.in_channels)


@contextmanager
def latent_input(unet: nn.Module):
    """Within the block, a widened UNet has a plain `conv_in` on the latent channels only (and
    the matching `config.in_channels`), so that what a method copies from it (e.g. ControlNet's
    encoder copy) is what it would copy from the unwidened UNet; the widened conv is put back
    afterwards. A UNet that is not widened is left alone.

    Args:
        unet: the UNet a method attaches to.
    """
    conv = getattr(unet, "conv_in", None)
    if not isinstance(conv, ConvIn):
        yield unet
        return
    unet.conv_in = conv.latent_conv()
    unet.register_to_config(in_channels=conv.latent_channels)
    try:
        yield unet
    finally:
        unet.conv_in = conv
        unet.register_to_config(in_channels=conv.in_channels)


_ATTACHING: ContextVar[frozenset] = ContextVar("grpose_attaching", default=frozenset())


def _declared_input(attach):
    """`attach` run on the UNet's plain input, then the UNet widened for the method's
    `extra_input_channels` (only by the outermost call: a subclass's `attach` calling
    `super().attach` runs once inside it)."""
    @functools.wraps(attach)
    def wrapped(self, unet: nn.Module) -> None:
        if id(self) in _ATTACHING.get():
            return attach(self, unet)
        token = _ATTACHING.set(_ATTACHING.get() | {id(self)})
        try:
            with latent_input(unet):
                attach(self, unet)
        finally:
            _ATTACHING.reset(token)
        try:
            widen_unet_input(unet, self.extra_input_channels)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
    wrapped.declared_input = True
    return wrapped


class PoseMethod(nn.Module):
    """Base class of every method: pose + noisy latents + timestep + text states in,
    `UNetConditioning` out.

    `handles_inactive`: False (default) lets the denoising path zero the conditioning of items
    whose `PoseCondition.active` is False; a method with its own unconditional behaviour (e.g.
    Stable-Pose's all-ones masks) sets it True and reads `active` itself.

    `settings` holds the arguments a method was built with (`grpose.methods.save_method` writes
    them beside its weights).

    `extra_input_channels`: the channels the method concatenates to the UNet input
    (`UNetConditioning.extra_channels`; 0 by default). The base class, not the method, widens
    the UNet's `conv_in` for them (`widen_unet_input`) after every `attach`, and every `attach`
    (a subclass's override too) sees the UNet's plain input (`latent_input`): methods built on
    one shared UNet give the same predictions in any order.
    """

    handles_inactive = False
    extra_input_channels: int = 0

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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        attach = cls.__dict__.get("attach")
        if attach is not None and not getattr(attach, "declared_input", False):
            cls.attach = _declared_input(attach)  # every override gets the declared input step

    @_declared_input
    def attach(self, unet: nn.Module) -> None:
        """Build the parts that depend on the frozen UNet. Called once by the diffusion module;
        then the UNet's `conv_in` takes `extra_input_channels` more inputs."""

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
