"""The configs `make train` reads after `make demo`: `<out>/configs/base.yaml` (the demo's
trained tiny base: its UNet, VAE and latent scale, text tower, sampler) and
`<out>/configs/data.yaml` (the demo's synthetic Human-Art folder with its thinner pose lines).
A base that was never trained draws coloured noise whatever the method learns; this one draws
people."""
from __future__ import annotations

import os

import yaml

HEADER = ("# Written by `make demo` ({what}); `make train` reads it (see the README).\n"
          "# Paths are relative to the folder `make` runs in.\n")


def _path(path: str) -> str:
    return os.path.relpath(path) if not os.path.isabs(path) else path


def base_config(cfg, stages: dict) -> dict:
    """`model:` of a composable base config: the demo's frozen base as trained (cf.
    `grpose.demo.models.diffusion`), with the method left to the method config."""
    vae = stages["vae"]
    return {"model": {"class_path": "grpose.diffusion.PoseDiffusionModule", "init_args": {
        "unet": {"class_path": "grpose.diffusion.components.load_unet",
                 "init_args": {"path": _path(stages["base"]["unet_dir"]), "subfolder": None}},
        "vae": {"class_path": "grpose.diffusion.components.load_vae",
                "init_args": {"path": _path(vae["vae_dir"]), "subfolder": None}},
        "text_encoder": {"class_path": "grpose.diffusion.components.OpenCLIPTextEncoder",
                         "init_args": {"text_cfg": {"width": 32, "heads": 2, "layers": 2},
                                       "seed": 0}},
        "method": {"class_path": "grpose.methods.NoPose"},
        "noise_scheduler": {"class_path": "grpose.diffusion.components.noise_scheduler"},
        "guidance": {"class_path": "grpose.diffusion.guidance.ClassifierFreeGuidance",
                     "init_args": {"scale": float(cfg.guidance_scale)}},
        "training": {"lr": float(cfg.adapter_lr)},
        "sampling": {"num_inference_steps": int(cfg.sample_steps), "negative_prompt": ""},
        "memory": {"cache_frozen": True},
        "latent_scale": float(vae["latent_scale"])}}}


def data_config(cfg) -> dict:
    """`data:` of the demo's folder (training / validation splits, mapping layout)."""
    common = {"root": _path(os.path.join(cfg.out, "data")), "layout": "mapping",
              "resolution": int(cfg.resolution), "min_people": 0,
              "render_scale": float(cfg.render_scale)}
    return {"data": {"class_path": "grpose.data.PoseDataModule", "init_args": {
        "train": {"class_path": "grpose.data.HumanArtDataset",
                  "init_args": {**common, "split": "training", "caption_dropout": 0.1,
                                "seed": int(cfg.seed)}},
        "val": {"class_path": "grpose.data.HumanArtDataset",
                "init_args": {**common, "split": "validation"}},
        "batch_size": int(cfg.batch_size), "num_workers": 0}}}


def write_train_configs(cfg, stages: dict) -> dict[str, str]:
    """Write `<out>/configs/{base,data}.yaml`; returns their paths."""
    folder = os.path.join(cfg.out, "configs")
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name, config, what in (("base", base_config(cfg, stages), "its trained tiny base"),
                               ("data", data_config(cfg), "its synthetic data")):
        path = os.path.join(folder, f"{name}.yaml")
        with open(path + ".tmp", "w") as f:
            f.write(HEADER.format(what=what) + yaml.safe_dump(config, sort_keys=False))
        os.replace(path + ".tmp", path)
        written[name] = path
    return written
