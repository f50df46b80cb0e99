"""The plain settings of `PoseDiffusionModule`, one frozen dataclass per concern (training,
sampling, memory), each one constructor argument: in a config, `model.init_args.training: {lr:
1.0e-4}`, `model.init_args.sampling: {num_inference_steps: 10}`, `model.init_args.memory:
{gradient_checkpointing: true}`. A bad value is a ValueError naming the group and the field."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, TypeVar

from grpose.diffusion.draws import check_timestep_sampling
from grpose.diffusion.nonfinite import check_on_nonfinite
from grpose.diffusion.optim import check_schedule
from grpose.diffusion.sampling import NEGATIVE_PROMPT
from grpose.diffusion.transfer import check_dropout

FROZEN = ("unet", "vae", "text_encoder")  # the frozen parts (unless `trainable` names them)


def _named(group: str, check, *args) -> None:
    """Run `check(*args)`; its ValueError ("<field> must ...") is raised again as
    "<group>.<field> must ..."."""
    try:
        check(*args)
    except ValueError as e:
        raise ValueError(f"{group}.{e}") from None


@dataclass(frozen=True)
class TrainingSettings:
    """What training does (and the validation during it).

    Args:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        trainable: parts that learn; ("method",) for pose methods, ("method", "unet") to
            fine-tune the UNet too (HumanSD), ("unet",) to train a base model.
        lr_warmup_steps: linear learning-rate warm-up over the first steps.
        lr_decay: then "constant", or "cosine" decay to zero at the run's last optimizer step.
        timestep_sampling: "uniform", or "cubic" (T2I-Adapter's t = (1 - u^3) T, u ~ U(0, 1):
            more steps at high noise, where the layout a pose fixes is decided).
        pose_dropout: the fraction of training items whose pose is switched off (drawn per
            item), so that the sampler can guide over it.
        source_dropout: the same for the source person of pose-transfer batches, drawn
            independently of the pose (for the guidance over the source).
        on_nonfinite: a NaN / Inf loss "raise"s (naming the step, the loss term and the batch's
            item ids) or "skip"s the batch (no optimizer step; counted in
            `train/skipped_nonfinite`). Every process takes the same decision.
        val_metric_batches: the validation batches whose generated images the model's
            `val_metrics` score, at each validation run (full sampling runs: keep it small).
    """

    lr: float = 1e-5
    weight_decay: float = 1e-2
    trainable: tuple[str, ...] = ("method",)
    lr_warmup_steps: int = 0
    lr_decay: str = "constant"
    timestep_sampling: str = "uniform"
    pose_dropout: float = 0.0
    source_dropout: float = 0.0
    on_nonfinite: str = "raise"
    val_metric_batches: int = 1

    def __post_init__(self):
        object.__setattr__(self, "trainable", tuple(self.trainable))  # a list given in Python
        unknown = set(self.trainable) - {"method", *FROZEN}
        if unknown:
            raise ValueError(f"training.trainable: unknown parts {sorted(unknown)} (parts: "
                             f"{['method', *FROZEN]})")
        _named("training", check_schedule, self.lr_warmup_steps, self.lr_decay)
        _named("training", check_timestep_sampling, self.timestep_sampling)
        _named("training", check_dropout, "pose_dropout", self.pose_dropout)
        _named("training", check_dropout, "source_dropout", self.source_dropout)
        _named("training", check_on_nonfinite, self.on_nonfinite)
        if self.val_metric_batches < 0:
            raise ValueError(f"training.val_metric_batches must be >= 0, got "
                             f"{self.val_metric_batches}")


@dataclass(frozen=True)
class SamplingSettings:
    """How the model samples by default; `generate` and the pipeline may override each per call
    (the seed is the model's `seed`, shared with training's draws).

    Args:
        num_inference_steps: sampler steps.
        conditioning_scale: multiplier of the method's conditioning.
        negative_prompt: the unconditional branch's prompt.
        eta: DDIM's eta (0: deterministic; other schedulers take none and need 0).
    """

    num_inference_steps: int = 50
    conditioning_scale: float = 1.0
    negative_prompt: str = NEGATIVE_PROMPT
    eta: float = 0.0

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f"sampling.num_inference_steps must be >= 1, got "
                             f"{self.num_inference_steps}")


@dataclass(frozen=True)
class MemorySettings:
    """Memory against time and checkpoint size; none changes what the model computes.

    Args:
        gradient_checkpointing: recompute the UNet's activations in the backward pass.
        checkpoint_frozen: also store the frozen parts in checkpoints (off: they come from the
            config).
        cache_frozen: memoise the frozen VAE's posterior (mean, std) per image (keyed by its
            content) and the frozen text encoder's states per caption. Exact (the parts are
            frozen); on the demo's tiny CPU models a step takes 0.91x the time; it holds every
            training image's posterior in memory, so it is for sets that fit (the demo's).
    """

    gradient_checkpointing: bool = False
    checkpoint_frozen: bool = False
    cache_frozen: bool = False


GROUPS = {"training": TrainingSettings, "sampling": SamplingSettings, "memory": MemorySettings}
MOVED = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}
"""A setting's name -> its group (the constructor argument that holds it)."""

Settings = TypeVar("Settings")


def settings_of(cls: type[Settings], value: Settings | Mapping | None) -> Settings:
    """`value` as a `cls`: itself, a mapping of some of its fields (a checkpoint's hparams; the
    rest default), or None (all defaults).

    Args:
        cls: a settings dataclass.
        value: an instance, a mapping, or None.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**value)
    raise TypeError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")


def regrouped(hparams: Mapping) -> dict[str, dict]:
    """The groups of hparams that hold settings flat (a checkpoint saved before the groups):
    {group: its fields (the flat values over any the group holds)}; {} when none is flat.

    Args:
        hparams: a checkpoint's hyper-parameters.
    """
    groups: dict[str, dict] = {}
    for name, value in hparams.items():
        if name in MOVED:
            fields_of = groups.setdefault(MOVED[name], dict(hparams.get(MOVED[name]) or {}))
            if value is not None:  # `trainable: None`: the default then as now
                fields_of[name] = value
    return groups


def as_hparams(value: Any) -> Any:
    """A settings dataclass as a plain dict (tuples as lists: what a config holds), so that
    checkpoints and logs keep no class; anything else unchanged."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(value).items()}
    return value
