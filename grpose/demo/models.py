"""The diffusion stages: the base (the stand-in for SD 1.5), one trained method per (name, seed),
and a trained model loaded back for scoring. Each method is built from its tiny config
(configs/method/tiny/<name>.yaml: the method, its loss and training options)."""
from __future__ import annotations

import functools
import os

import torch

from grpose.data import PoseDataModule
from grpose.demo.stages import (CONFIGS, build_object, datasets, model_spec, run_stage,
                                text_encoder, trainer)
from grpose.diffusion import (MemorySettings, PoseDiffusionModule, SamplingSettings,
                              TrainingSettings)
from grpose.diffusion.components import load_unet, load_vae, noise_scheduler, tiny_unet
from grpose.diffusion.guidance import ClassifierFreeGuidance
from grpose.diffusion.losses import PoseWeightedMSE
from grpose.methods import NoPose, method_from_config

REPOSEDM = "grpose_skeleton+reposedm"
"""The comparison's row of GRPose (skeleton) sampled with RePoseDM guidance."""


def method_spec(name: str) -> dict:
    """`model.init_args` of configs/method/tiny/<name>.yaml (part of its stage's settings)."""
    return model_spec(os.path.join("method", "tiny", f"{name}.yaml"))


def schedule(cfg) -> dict:
    """The shared learning-rate schedule (`TrainingSettings` fields)."""
    return dict(lr_warmup_steps=cfg.warmup_steps, lr_decay=cfg.lr_decay)


def timesteps(cfg) -> dict:
    """The shared timestep sampling when one is set (else each method's config decides)."""
    return {"timestep_sampling": cfg.timestep_sampling} if cfg.timestep_sampling else {}


def diffusion(cfg, inputs: dict, unet, method, seed: int, training: dict | None = None,
              memory: dict | None = None, guidance=None, **parts) -> PoseDiffusionModule:
    """The demo's frozen parts around `unet` and `method`: `training` / `memory` are settings
    fields (the frozen parts cached unless `memory` says otherwise), `parts` further components
    (loss, sampling_hooks...)."""
    vae = inputs["vae"]
    return PoseDiffusionModule(
        unet, load_vae(vae["vae_dir"], subfolder=None), text_encoder(), method, noise_scheduler(),
        guidance=guidance or ClassifierFreeGuidance(cfg.guidance_scale),
        training=TrainingSettings(**(training or {})),
        sampling=SamplingSettings(cfg.sample_steps, negative_prompt=""),
        memory=MemorySettings(**{"cache_frozen": True, **(memory or {})}), seed=seed,
        latent_scale=vae["latent_scale"], **parts)


def with_training(options: dict, **training) -> dict:
    """A method config's options (`module_options`) with `training` fields under them (the
    config's own `training` fields win)."""
    return {**options, "training": {**training, **options.get("training", {})}}


def train_base(cfg, build, train, folder: str) -> dict:
    """The demo's tiny text-to-image base: a UNet trained with no pose on `train` (`build(unet,
    method, seed, **kwargs)` makes the module around it), saved in `folder`; its stage info."""
    module = build(tiny_unet(seed=cfg.seed), NoPose(), cfg.seed, loss=PoseWeightedMSE(alpha=1.0),
                   training=dict(trainable=["unet"], lr=cfg.base_lr, **schedule(cfg)))
    trainer(cfg, "base", cfg.base_steps).fit(module, PoseDataModule(
        train=train, batch_size=cfg.batch_size, seed=cfg.seed))
    module.unet.save_pretrained(folder)
    return {"unet_dir": folder}


def base_stage(cfg, inputs) -> dict:
    def build(d):
        train, _ = datasets(cfg, os.path.join(cfg.out, "data"), 0.1)
        return train_base(cfg, functools.partial(diffusion, cfg, inputs), train, d)
    return run_stage(cfg, "base", dict(steps=cfg.base_steps, lr=cfg.base_lr, **schedule(cfg),
                                       vae=inputs["vae"]["settings"]), build)


def build_method(name: str, inputs: dict):
    """The method `name` from its tiny config (KB-DMGen with the knowledge stage's base)."""
    if name == "no_pose":
        return NoPose()
    overrides = {"knowledge_base": inputs["knowledge"]["checkpoint"]} if name == "kb_dmgen" else {}
    return method_from_config(os.path.join(CONFIGS, "method", "tiny", f"{name}.yaml"),
                              **overrides)


def module_options(name: str) -> dict:
    """The options of a method's tiny config besides the method (loss, training settings...)."""
    return {k: build_object(v, f"configs/method/tiny/{name}.yaml: model.init_args.{k}")
            for k, v in method_spec(name).items() if k != "method"}


def fit_and_save(cfg, stage: str, folder: str, module: PoseDiffusionModule, data,
                 seed: int) -> dict:
    """`module` trained `cfg.adapter_steps` steps on `data` (batch `cfg.batch_size`, order by
    `seed`); its method's weights saved in `folder`, and the UNet's when it trains too (HumanSD,
    `--train-unet`): the stage's info `{"weights": ..., ["unet": ...]}`."""
    trainer(cfg, stage, cfg.adapter_steps).fit(module, PoseDataModule(
        train=data, batch_size=cfg.batch_size, seed=seed))
    info = {"weights": os.path.join(folder, "method.pt")}
    torch.save(module.method.state_dict(), info["weights"])
    if "unet" in module.trainable:
        info["unet"] = os.path.join(folder, "unet.pt")
        torch.save(module.unet.state_dict(), info["unet"])
    return info


def method_stage(cfg, inputs, name: str, seed: int) -> dict:
    """Method `name` trained on the frozen base with the shared budget; `seed` sets its
    initialisation, data order, noise and sampling seeds."""
    stage = f"{name}-s{seed}"

    def build(d):
        train, _ = datasets(cfg, os.path.join(cfg.out, "data"), 0.5)
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the method's initialisation
            method = build_method(name, inputs)
        options = with_training(module_options(name), lr=cfg.adapter_lr, **schedule(cfg))
        options["training"].update(timesteps(cfg))  # the shared timesteps win when set
        module = diffusion(cfg, inputs, load_unet(inputs["base"]["unet_dir"], subfolder=None),
                           method, seed, **options)
        return fit_and_save(cfg, stage, d, module, train, seed)
    settings = dict(steps=cfg.adapter_steps, lr=cfg.adapter_lr, **schedule(cfg),
                    **timesteps(cfg), seed=seed,
                    render_scale=cfg.render_scale, method=method_spec(name),
                    base=inputs["base"]["settings"])
    if name == "kb_dmgen":
        settings["knowledge"] = inputs["knowledge"]["settings"]
    return run_stage(cfg, stage, settings, build)


def reposedm_hooks(inputs: dict) -> list:
    """configs/guidance/tiny/reposedm.yaml's hooks, with the guide pose network and the field
    trained by the comparison."""
    specs = model_spec(os.path.join("guidance", "tiny", "reposedm.yaml"))["sampling_hooks"]
    paths = dict(pose_checkpoint=inputs["pose_guide"]["checkpoint"],
                 field_checkpoint=inputs["field"]["checkpoint"])
    return [build_object({**s, "init_args": {**s.get("init_args", {}), **paths}}, "sampling_hooks")
            for s in specs]


def load_model(cfg, inputs: dict, row: str, seed: int) -> PoseDiffusionModule:
    """The trained model of a result row (a method, "no_pose" or `REPOSEDM`), for sampling."""
    name = "grpose_skeleton" if row == REPOSEDM else row
    hooks = reposedm_hooks(inputs) if row == REPOSEDM else []
    model = diffusion(cfg, inputs, load_unet(inputs["base"]["unet_dir"], subfolder=None),
                      build_method(name, inputs), seed, sampling_hooks=hooks)
    trained = inputs.get("method")
    if trained is not None:
        model.method.load_state_dict(torch.load(trained["weights"], weights_only=True))
        if "unet" in trained:
            model.unet.load_state_dict(torch.load(trained["unet"], weights_only=True))
    return model.eval()
