"""The demo's and the comparison's stages. Each is a module-level function `(cfg, inputs) -> info`
(`inputs`: the infos of the stages it builds on) that a worker process can run; each writes a
folder under `cfg.out` with a `stage.json` of its settings and is reused while they are equal.
A stage's settings include those of the stages it builds on, so a change upstream redoes it."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import time
import zlib
from dataclasses import asdict

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from grpose.data import HumanArtDataset, PoseDataModule, SyntheticPoseDataset
from grpose.data.synthetic import Scene, write_synthetic
from grpose.diffusion.autoencoder import AutoencoderModule
from grpose.diffusion.components import OpenCLIPTextEncoder, tiny_vae
from grpose.pose import PoseEstimatorModule, PoseNetwork

# The detector also learns from blurred / noisy images, so that its AP on generated images
# measures the pose they show rather than their sharpness (FID / KID judge image quality).
# A small, fast autoencoder whose posterior starts narrow (see AutoencoderModule.init_logvar).
VAE = dict(channels=(16, 32, 64), mid_attention=False, init_logvar=-6.0)
POSE_AUGMENT = dict(blur_p=0.5, max_blur_sigma=1.5, noise_std=0.1)
CONFIGS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))


def scene(cfg) -> Scene:
    """The demo's people: at 64 px a tiny autoencoder trained for minutes keeps only large ones."""
    if not 1 <= cfg.max_people <= 3:
        raise ValueError(f"--max-people must be 1, 2 or 3, got {cfg.max_people}")
    return Scene((0.5, 0.3, 0.2)[:cfg.max_people], (cfg.min_size, cfg.max_size),
                 occluder_p=0.2 if cfg.max_people > 1 else 0.0)


def text_encoder() -> OpenCLIPTextEncoder:
    """The demo's frozen text encoder: a tiny random-init CLIP text tower (fixed seed)."""
    return OpenCLIPTextEncoder(text_cfg=dict(width=32, heads=2, layers=2), seed=0)


class Progress(L.Callback):
    """One line per tenth of a stage's steps (the workers run without progress bars)."""

    def __init__(self, name: str):
        self.name = name

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step, total = trainer.global_step, trainer.max_steps
        if step % max(total // 10, 1) == 0 or step == total:
            loss = trainer.callback_metrics.get("train/loss")
            print(f"[demo] {self.name}: step {step}/{total}"
                  + (f", loss {float(loss):.4f}" if loss is not None else ""), flush=True)


def trainer(cfg, name: str, steps: int) -> L.Trainer:
    """The Trainer of stage `name`; its TensorBoard folder `<out>/tb/<name>` starts empty (the
    curves of an earlier, now replaced, training of the stage are removed)."""
    shutil.rmtree(os.path.join(cfg.out, "tb", name), ignore_errors=True)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, log_every_n_steps=10,
                     logger=TensorBoardLogger(os.path.join(cfg.out, "tb"), name=name, version=""),
                     enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                     enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[Progress(name)])


def run_stage(cfg, name: str, settings: dict, build) -> dict:
    """`build(folder) -> info` unless the folder holds a finished stage with these settings.

    The paths of the info that lie in the folder are stored relative to it (listed under
    "files"), so a run folder can be moved or copied and still be reused."""
    folder, marker = os.path.join(cfg.out, name), os.path.join(cfg.out, name, "stage.json")
    settings = json.loads(json.dumps(settings))  # as read back (tuples become lists)
    if os.path.isfile(marker):
        record = read_stage(folder)
        if record["settings"] == settings:
            print(f"[demo] {name}: reusing {folder}", flush=True)
            return record
    os.makedirs(folder, exist_ok=True)
    print(f"[demo] {name} ...", flush=True)
    start = time.time()
    with torch.random.fork_rng(devices=[]):  # what a stage draws from the global RNG (a
        # network's init, augmentation, VAE samples) does not depend on what its worker ran before
        torch.manual_seed(zlib.crc32(f"{name}:{cfg.seed}".encode()))
        info = build(folder)
    record = {"settings": settings, **info, "seconds": round(time.time() - start, 1)}
    print(f"[demo] {name}: {record['seconds']:.0f} s", flush=True)
    root = os.path.abspath(folder)
    files = [k for k, v in info.items() if isinstance(v, str)
             and os.path.commonpath([root, os.path.abspath(v)]) == root]
    with open(marker + ".tmp", "w") as f:
        json.dump({**record, **{k: os.path.relpath(info[k], folder) for k in files},
                   "files": files}, f, indent=1)
    os.replace(marker + ".tmp", marker)
    return record


def read_stage(folder: str) -> dict:
    """A finished stage's record (settings, info, seconds), its files' paths resolved."""
    marker = os.path.join(folder, "stage.json")
    if not os.path.isfile(marker):
        raise FileNotFoundError(f"{marker}: no finished stage there")
    with open(marker) as f:
        record = json.load(f)
    return {**record, **{k: os.path.normpath(os.path.join(folder, record[k]))
                         for k in record.get("files", [])}}


def datasets(cfg, data_dir: str, caption_dropout: float):
    common = dict(layout="mapping", resolution=cfg.resolution, min_people=0,
                  render_scale=cfg.render_scale)
    return (HumanArtDataset(data_dir, "training", caption_dropout=caption_dropout,
                            seed=cfg.seed, **common),
            HumanArtDataset(data_dir, "validation", **common))


def build_object(spec, where: str):
    """A YAML value with `class_path` / `init_args` (grpose classes only) built, recursively."""
    if isinstance(spec, list):
        return [build_object(v, f"{where}[{i}]") for i, v in enumerate(spec)]
    if not (isinstance(spec, dict) and "class_path" in spec):
        return spec
    module, _, name = spec["class_path"].rpartition(".")
    if not module.startswith("grpose."):
        raise ValueError(f"{where}.class_path: {spec['class_path']!r} is not a grpose class")
    args = {k: build_object(v, f"{where}.init_args.{k}")
            for k, v in (spec.get("init_args") or {}).items()}
    return getattr(importlib.import_module(module), name)(**args)


def model_spec(path: str) -> dict:
    """`model.init_args` of a config file under configs/ (`path` relative to it)."""
    with open(os.path.join(CONFIGS, path)) as f:
        return (yaml.safe_load(f) or {}).get("model", {}).get("init_args", {})


# -- shared stages --------------------------------------------------------------------------------
def data_stage(cfg, inputs) -> dict:
    def build(d):
        return {split: len(write_synthetic(d, split, num, cfg.resolution, cfg.seed, scene(cfg)))
                for split, num in (("training", cfg.num_train), ("validation", cfg.num_val))}
    return run_stage(cfg, "data", dict(n=cfg.num_train, v=cfg.num_val, r=cfg.resolution,
                                       s=cfg.seed, scene=asdict(scene(cfg))), build)


def pose_stage(cfg, inputs, name: str = "pose", seed_offset: int = 1) -> dict:
    """The pose network (on-the-fly synthetic people: it sees far more poses than the
    generators); "pose_guide" (another seed) is the one RePoseDM guidance uses, so that the
    network that scores the images is not the one that steered them."""
    def build(d):
        module = PoseEstimatorModule(PoseNetwork(), **POSE_AUGMENT)
        data = PoseDataModule(train=SyntheticPoseDataset(
            cfg.pose_steps * 32, seed=cfg.seed + seed_offset, split="training",
            resolution=cfg.resolution, flip_p=0.5, scene=scene(cfg)),
            batch_size=min(32, 2 * cfg.batch_size), seed=cfg.seed + seed_offset)
        t = trainer(cfg, name, cfg.pose_steps)
        t.fit(module, data)
        t.save_checkpoint(os.path.join(d, "pose.ckpt"))
        return {"checkpoint": os.path.join(d, "pose.ckpt")}
    return run_stage(cfg, name, dict(steps=cfg.pose_steps, r=cfg.resolution,
                                     s=cfg.seed + seed_offset, scene=asdict(scene(cfg)),
                                     augment=POSE_AUGMENT), build)


def train_vae(cfg, train, folder: str) -> dict:
    """The demo's tiny VAE trained on `train`'s images and saved in `folder`; its stage info."""
    module = AutoencoderModule(tiny_vae(VAE["channels"], cfg.seed,
                                        mid_attention=VAE["mid_attention"]),
                               init_logvar=VAE["init_logvar"], lr=cfg.vae_lr,
                               lr_warmup_steps=cfg.warmup_steps, lr_decay=cfg.lr_decay,
                               crop_size=cfg.vae_crop or None, seed=cfg.seed)
    trainer(cfg, "vae", cfg.vae_steps).fit(module, PoseDataModule(
        train=train, batch_size=cfg.batch_size, seed=cfg.seed))
    module.vae.save_pretrained(folder)
    images = torch.stack([train[i].image for i in range(min(64, len(train)))])
    return {"vae_dir": folder, "latent_scale": module.latent_scale(images)}


def vae_stage(cfg, inputs) -> dict:
    data_dir = os.path.join(cfg.out, "data")

    def build(d):
        return train_vae(cfg, datasets(cfg, data_dir, 0.0)[0], d)
    return run_stage(cfg, "vae", dict(steps=cfg.vae_steps, arch=VAE, lr=cfg.vae_lr,
                                      crop=cfg.vae_crop, warmup=cfg.warmup_steps,
                                      decay=cfg.lr_decay,
                                      data=inputs["data"]["settings"]), build)


def field_stage(cfg, inputs) -> dict:
    """RePoseDM's pose-manifold field (configs/pose/field_synthetic.yaml's model) on the
    demo's people."""
    spec = model_spec("pose/field_synthetic.yaml")

    def build(d):
        from grpose.pose.field import PoseFieldModule
        module = PoseFieldModule(build_object(spec["network"], "network"),
                                 **{k: v for k, v in spec.items() if k != "network"})
        data = PoseDataModule(train=SyntheticPoseDataset(
            cfg.field_steps * 64, seed=cfg.seed + 3, split="training", resolution=cfg.resolution,
            flip_p=0.5, scene=scene(cfg)), batch_size=64, seed=cfg.seed + 3)
        t = trainer(cfg, "field", cfg.field_steps)
        t.fit(module, data)
        t.save_checkpoint(os.path.join(d, "field.ckpt"))
        return {"checkpoint": os.path.join(d, "field.ckpt")}
    return run_stage(cfg, "field", dict(steps=cfg.field_steps, spec=spec, r=cfg.resolution,
                                        s=cfg.seed + 3, scene=asdict(scene(cfg))), build)


def knowledge_stage(cfg, inputs) -> dict:
    """KB-DMGen's knowledge base (configs/kb/tiny.yaml's model) on the demo's training images,
    with the demo's text encoder; codebook for 30 % of `kb_steps`, then the classifier."""
    spec = model_spec("kb/tiny.yaml")

    def build(d):
        from grpose.methods.kb_dmgen import KnowledgeBaseModule
        args = {k: build_object(v, k) for k, v in spec.items() if k != "text_encoder"}
        module = KnowledgeBaseModule(text_encoder=text_encoder(), **{
            **args, "codebook_steps": int(0.3 * cfg.kb_steps)})
        train, _ = datasets(cfg, os.path.join(cfg.out, "data"), 0.0)
        t = trainer(cfg, "knowledge", cfg.kb_steps)
        t.fit(module, PoseDataModule(train=train, batch_size=32, seed=cfg.seed))
        path = os.path.join(d, "knowledge_base.ckpt")
        t.save_checkpoint(path)
        return {"checkpoint": path}
    return run_stage(cfg, "knowledge", dict(steps=cfg.kb_steps, spec=spec,
                                            data=inputs["data"]["settings"]), build)
