"""The pose-transfer comparison's own stages (`make compare-transfer`): the synthetic pairs
drawn once into a file, one transfer method per (name, seed) trained on the pose demo's frozen
base, and a trained model loaded back for sampling. The autoencoder, the base and the pose
network are the pose demo's own stages (`grpose.demo.stages`), reused when `make demo` made
them."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from grpose.data.pairs import PairSample, collate_pair_samples
from grpose.data.synthetic_pairs import SyntheticPairs
from grpose.demo.models import diffusion as pose_diffusion
from grpose.demo.models import fit_and_save, schedule, with_training
from grpose.demo.stages import CONFIGS, build_object, model_spec, run_stage
from grpose.diffusion import PoseDiffusionModule
from grpose.diffusion.components import load_unet
from grpose.diffusion.guidance import InstructPix2PixGuidance
from grpose.methods import method_from_config

GUIDED = "reposedm+guidance"
"""The row of `reposedm` sampled with RePoseDM's pose-field gradient guidance."""
IMAGES = ("source_image", "source_pose_image", "image", "pose_image")
SPLITS = ("training", "validation", "tuning")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class CachedPairs(Dataset):
    """Pairs drawn once by `pairs_stage` (a file of uint8 images), served as `PairSample`s; a
    training set drops captions with probability `caption_dropout`, per (item, epoch)."""

    collate_fn = staticmethod(collate_pair_samples)

    def __init__(self, path: str, caption_dropout: float = 0.0, seed: int = 0):
        self.data = torch.load(path, weights_only=False)
        self.caption_dropout, self.seed = caption_dropout, seed
        self.resolution = self.data["image"].shape[-1]

    def __len__(self) -> int:
        return len(self.data["captions"])

    def __getitem__(self, key) -> PairSample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        d = self.data
        caption = d["captions"][index]
        if self.caption_dropout > 0 and np.random.default_rng(
                [self.seed, 23, epoch, index]).random() < self.caption_dropout:
            caption = ""
        images = {k: d[k][index].float() / 127.5 - 1 for k in IMAGES}
        return PairSample(**images, source_keypoints=d["source_keypoints"][index],
                          keypoints=d["keypoints"][index], caption=caption,
                          meta=dict(d["meta"][index]), target_parts=d["target_parts"][index],
                          target_background=d["target_background"][index].float() / 127.5 - 1)


def pairs_stage(cfg, inputs) -> dict:
    """`pairs_train` training, `pairs_val` held-out and `pairs_tune` tuning pairs (identities of
    another seed) of `SyntheticPairs`, each split in one file."""
    splits = {"training": (cfg.pairs_train, cfg.seed, "training"),
              "validation": (cfg.pairs_val, cfg.seed, "validation"),
              "tuning": (cfg.pairs_tune, cfg.seed + 2, "validation")}

    def build(d):
        info = {}
        for name, (num, seed, split) in splits.items():
            ds = SyntheticPairs(num, seed=seed, split=split, resolution=cfg.resolution,
                                render_scale=cfg.render_scale, caption_dropout=0.0)
            b = collate_pair_samples([ds[i] for i in range(num)])
            data = {k: to_uint8(getattr(b, k)) for k in (*IMAGES, "target_background")}
            data.update(source_keypoints=[b.source_people(i) for i in range(num)],
                        keypoints=[b.people(i) for i in range(num)],
                        target_parts=b.target_parts, captions=b.captions,
                        meta=[{k: v for k, v in m.items() if k != "part_colors"}
                              for m in b.meta])
            info[name] = os.path.join(d, f"{name}.pt")
            torch.save(data, info[name])
        return info
    return run_stage(cfg, "pairs", dict(splits=splits, r=cfg.resolution,
                                        render=cfg.render_scale, kind="views-apart"), build)


def guidance(cfg) -> InstructPix2PixGuidance:
    """The comparison's sampling guidance over the source and the target pose + prompt."""
    return InstructPix2PixGuidance(cfg.guidance_scale, source_scale=cfg.source_scale)


def diffusion(cfg, inputs: dict, unet, method, seed: int, **kwargs) -> PoseDiffusionModule:
    """The pose demo's frozen parts around `method`, sampling with the transfer guidance
    (`kwargs`: as `grpose.demo.models.diffusion`'s)."""
    return pose_diffusion(cfg, inputs, unet, method, seed, guidance=guidance(cfg), **kwargs)


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, "method", "tiny", f"transfer_{name}.yaml")


def method_spec(name: str) -> dict:
    return model_spec(os.path.join("method", "tiny", f"transfer_{name}.yaml"))


def module_options(name: str) -> dict:
    """The training options of the method's tiny config besides the method (losses, dropout)."""
    return {k: build_object(v, f"{config_path(name)}: model.init_args.{k}")
            for k, v in method_spec(name).items() if k != "method"}


def transfer_stage(cfg, inputs, name: str, seed: int) -> dict:
    """Transfer method `name` trained on the frozen base with the shared budget (with the UNet
    too when `cfg.train_unet`); `seed` sets its initialisation, data order, noise, dropout and
    sampling seeds."""
    stage = f"{name}-s{seed}"

    def build(d):
        train = CachedPairs(inputs["pairs"]["training"], 0.1, seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the method's initialisation
            method = method_from_config(config_path(name))
        options = with_training(module_options(name), lr=cfg.adapter_lr, **schedule(cfg))
        if cfg.train_unet:
            options["training"]["trainable"] = ["method", "unet"]
        module = diffusion(cfg, inputs, load_unet(inputs["base"]["unet_dir"], subfolder=None),
                           method, seed, **options)
        return fit_and_save(cfg, stage, d, module, train, seed)
    return run_stage(cfg, stage, dict(steps=cfg.adapter_steps, lr=cfg.adapter_lr,
                                      **schedule(cfg), seed=seed, method=method_spec(name),
                                      train_unet=cfg.train_unet,
                                      pairs=inputs["pairs"]["settings"],
                                      base=inputs["base"]["settings"]), build)


def load_transfer(cfg, inputs: dict, row: str, seed: int) -> PoseDiffusionModule:
    """The trained model of a row (a transfer method or `GUIDED`), for sampling."""
    from grpose.demo.models import reposedm_hooks
    name = "reposedm" if row == GUIDED else row
    hooks = reposedm_hooks(inputs) if row == GUIDED else []
    model = diffusion(cfg, inputs, load_unet(inputs["base"]["unet_dir"], subfolder=None),
                      method_from_config(config_path(name)), seed, sampling_hooks=hooks)
    trained = inputs["method"]
    model.method.load_state_dict(torch.load(trained["weights"], weights_only=True))
    if "unet" in trained:
        model.unet.load_state_dict(torch.load(trained["unet"], weights_only=True))
    return model.eval()
