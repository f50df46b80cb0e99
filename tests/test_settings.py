"""`PoseDiffusionModule`'s settings groups: their defaults, their checks, the shipped configs'
grouped keys, and the groups through a checkpoint (built in Python and by the CLI)."""
import copy
import glob
import inspect
from dataclasses import asdict

import lightning as L
import pytest
import torch
import yaml

from grpose.diffusion import (MemorySettings, PoseDiffusionModule, SamplingSettings,
                              TrainingSettings)
from grpose.diffusion.components import SD15_LATENT_SCALE, noise_scheduler
from grpose.diffusion.sampling import NEGATIVE_PROMPT
from grpose.diffusion.settings import MOVED, settings_of
from grpose.methods import ControlNet

# The constructor's flat defaults before the settings were grouped.
OLD_DEFAULTS = dict(lr=1e-5, weight_decay=1e-2, trainable=["method"], num_inference_steps=50,
                    conditioning_scale=1.0, negative_prompt=NEGATIVE_PROMPT, eta=0.0,
                    val_metric_batches=1, checkpoint_frozen=False, gradient_checkpointing=False,
                    timestep_sampling="uniform", on_nonfinite="raise", lr_warmup_steps=0,
                    lr_decay="constant", cache_frozen=False, pose_dropout=0.0,
                    source_dropout=0.0)


def test_the_groups_defaults_are_the_old_defaults():
    grouped = {**asdict(TrainingSettings()), **asdict(SamplingSettings()),
               **asdict(MemorySettings())}
    grouped["trainable"] = list(grouped["trainable"])
    assert grouped == OLD_DEFAULTS and set(MOVED) == set(OLD_DEFAULTS)
    params = inspect.signature(PoseDiffusionModule).parameters
    assert params["seed"].default == 42 and params["latent_scale"].default == SD15_LATENT_SCALE
    assert not set(MOVED) & set(params)  # each setting in exactly one place


@pytest.mark.parametrize("build, message", [
    (lambda: TrainingSettings(lr_decay="linear"), r"training\.lr_decay must be one of"),
    (lambda: TrainingSettings(lr_warmup_steps=-1), r"training\.lr_warmup_steps must be >= 0"),
    (lambda: TrainingSettings(timestep_sampling="cosine"), r"training\.timestep_sampling"),
    (lambda: TrainingSettings(pose_dropout=1.0), r"training\.pose_dropout must be in \[0, 1\)"),
    (lambda: TrainingSettings(source_dropout=-0.1), r"training\.source_dropout"),
    (lambda: TrainingSettings(on_nonfinite="ignore"), r"training\.on_nonfinite must be one of"),
    (lambda: TrainingSettings(trainable=["decoder"]), r"training\.trainable: unknown parts"),
    (lambda: TrainingSettings(val_metric_batches=-1), r"training\.val_metric_batches"),
    (lambda: SamplingSettings(num_inference_steps=0), r"sampling\.num_inference_steps"),
])
def test_a_bad_value_names_its_group_and_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_settings_from_a_mapping_and_the_frozen_instance():
    assert settings_of(TrainingSettings, {"lr": 2e-4}) == TrainingSettings(lr=2e-4)
    assert settings_of(MemorySettings, None) == MemorySettings()
    assert TrainingSettings(trainable=["method", "unet"]).trainable == ("method", "unet")
    with pytest.raises(TypeError, match=r"unknown fields \['lr'\]"):
        settings_of(SamplingSettings, {"lr": 1e-4})
    with pytest.raises(AttributeError):
        SamplingSettings().eta = 1.0  # frozen: a call's change goes through `replace`


def _model_keys(path: str) -> dict:
    with open(path) as f:
        model = (yaml.safe_load(f) or {}).get("model") or {}
    if model.get("class_path", "grpose.diffusion.PoseDiffusionModule").rsplit(".", 1)[-1] \
            != "PoseDiffusionModule":
        return {}  # another model (the pose network, KB-DMGen's knowledge base)
    return model.get("init_args") or {}


@pytest.mark.parametrize("path", sorted(glob.glob("configs/**/*.yaml", recursive=True)))
def test_shipped_configs_give_settings_in_their_groups(path):
    args = _model_keys(path)
    assert not set(args) & set(MOVED), f"{path}: {sorted(set(args) & set(MOVED))} are flat"
    for group, cls in (("training", TrainingSettings), ("sampling", SamplingSettings),
                       ("memory", MemorySettings)):
        settings_of(cls, args.get(group))  # known fields with valid values


def _tiny(tiny_parts, **settings) -> PoseDiffusionModule:
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    return PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                               **settings)


def test_python_built_groups_round_trip_through_a_checkpoint(tmp_path, tiny_parts):
    groups = dict(training=TrainingSettings(lr=3e-4, trainable=["method"], pose_dropout=0.2,
                                            lr_decay="cosine"),
                  sampling=SamplingSettings(7, 1.5, "dark", 0.0),
                  memory=MemorySettings(checkpoint_frozen=True))
    model = _tiny(tiny_parts, seed=9, **groups)
    assert model.hparams.training["trainable"] == ["method"]  # plain values: no class pickled
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        max_steps=0, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    path = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert saved["training"] == model.hparams.training and saved["seed"] == 9
    loaded = PoseDiffusionModule.load_from_checkpoint(
        path, unet=model.unet, vae=model.vae, text_encoder=model.text_encoder,
        method=ControlNet((8, 16, 32)), noise_scheduler=noise_scheduler())
    assert loaded.training_settings == groups["training"]
    assert loaded.sampling_settings == groups["sampling"]
    assert loaded.memory_settings == groups["memory"] and loaded.hparams.seed == 9


def test_a_checkpoint_with_flat_settings_loads_them_into_their_groups(tmp_path, tiny_parts):
    """A checkpoint saved before the groups: `lr`, `num_inference_steps`... beside the parts."""
    model = _tiny(tiny_parts)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        max_steps=0, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    path = str(tmp_path / "old.ckpt")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    for group in ("training", "sampling", "memory"):
        del hparams[group]
    hparams.update(lr=3e-4, trainable=None, num_inference_steps=7, cache_frozen=True)
    torch.save(checkpoint, path)
    loaded = PoseDiffusionModule.load_from_checkpoint(
        path, unet=model.unet, vae=model.vae, text_encoder=model.text_encoder,
        method=ControlNet((8, 16, 32)), noise_scheduler=noise_scheduler())
    assert loaded.training_settings == TrainingSettings(lr=3e-4)  # trainable None: the default
    assert loaded.sampling_settings == SamplingSettings(7)
    assert loaded.memory_settings == MemorySettings(cache_frozen=True)
