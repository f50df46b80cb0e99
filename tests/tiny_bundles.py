"""Tiny bundles for the pipeline, bundle and app tests (random-init tiny base, offline)."""
from __future__ import annotations

import copy
import os

import torch
import yaml

from grpose.diffusion import PoseDiffusionModule, SamplingSettings, TrainingSettings
from grpose.diffusion.components import OpenCLIPTextEncoder, load_unet, load_vae, noise_scheduler
from grpose.diffusion.guidance import ClassifierFreeGuidance, InstructPix2PixGuidance
from grpose.methods import method_from_config
from grpose.pipeline.bundle import RenderSettings, save_bundle, save_text_encoder
from grpose.pipeline.settings import spec

RENDER = RenderSettings(style="humansd", scale=0.35, height=64, width=64)
TEXT_CFG = dict(width=32, heads=2, layers=2)


def trainable(name: str) -> list[str]:
    """`model.init_args.training.trainable` of a method's tiny config (default: the method)."""
    with open(f"configs/method/tiny/{name}.yaml") as f:
        args = yaml.safe_load(f)["model"]["init_args"]
    return args.get("training", {}).get("trainable", ["method"])


def tiny_module(tiny_parts, name: str, perturb, seed: int = 5,
                knowledge_base: str | None = None, steps: int = 3) -> PoseDiffusionModule:
    """A tiny model of method `name` sampling in `steps` steps, its zero-initialised outputs
    perturbed (so the pose acts); KB-DMGen with `knowledge_base` when given."""
    unet = copy.deepcopy(tiny_parts[0])
    overrides = {"knowledge_base": knowledge_base} if name == "kb_dmgen" and knowledge_base else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        method = method_from_config(f"configs/method/tiny/{name}.yaml", **overrides)
    module = PoseDiffusionModule(unet, *tiny_parts[1:], method, noise_scheduler(),
                                 guidance=ClassifierFreeGuidance(2.0),
                                 training=TrainingSettings(trainable=trainable(name)),
                                 sampling=SamplingSettings(steps, conditioning_scale=2.0,
                                                           negative_prompt=""),
                                 seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        perturb(module.method)
        if "unet" in module.trainable:  # HumanSD: a "trained" UNet differs from the base
            with torch.no_grad():
                module.unet.conv_out.bias.add_(0.01)
    return module.eval()


def write_tiny_bundle(folder: str, tiny_parts, module: PoseDiffusionModule,
                      detector: dict | None = None, name: str | None = None,
                      detector_knows: str | None = None) -> str:
    """`module` as a bundle whose base (the session's tiny parts) is exported into it."""
    unet, vae, text = tiny_parts
    os.makedirs(folder, exist_ok=True)
    unet.save_pretrained(os.path.join(folder, "unet"))
    vae.save_pretrained(os.path.join(folder, "vae"))
    parts = {"unet": spec(load_unet, path="unet", subfolder=None),
             "vae": spec(load_vae, path="vae", subfolder=None),
             "text_encoder": spec(OpenCLIPTextEncoder, text_cfg=TEXT_CFG,
                                  weights=save_text_encoder(text, folder))}
    return save_bundle(folder, module, parts, RENDER, name=name, detector=detector,
                       detector_knows=detector_knows)


def write_detector_checkpoint(path: str, seed: int = 0) -> str:
    """A random tiny pose network saved as a `PoseEstimatorModule` checkpoint (hyper-parameters +
    state dict: what `NetworkDetector(checkpoint=...)` reads)."""
    from grpose.pose import PoseEstimatorModule, PoseNetwork
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = PoseEstimatorModule(PoseNetwork(widths=(8, 8, 8, 8), channels=8,
                                                 head_channels=8))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
               path)
    return path


def detector_spec(folder: str) -> dict:
    """A bundle's detector spec: the tiny random network, decoding every centre (so that each
    image gets a detected person and an OKS)."""
    from grpose.pipeline.bundle import copy_into
    from grpose.pose.detector import NetworkDetector
    os.makedirs(folder, exist_ok=True)
    name = copy_into(folder, write_detector_checkpoint(os.path.join(folder, "net.ckpt")),
                     "detector.ckpt")
    return spec(NetworkDetector, checkpoint=name,
                decode={"center_threshold": 0.0, "max_people": 1})


def transfer_guidance(scale: float = 2.0, source_scale: float = 1.5):
    """The two-condition guidance of a tiny pose-transfer model (InstructPix2Pix's form)."""
    return InstructPix2PixGuidance(scale, source_scale)


def tiny_transfer_module(tiny_parts, name: str, perturb, seed: int = 5,
                         guidance=None, steps: int = 2) -> PoseDiffusionModule:
    """A tiny pose-transfer model of method `name` (configs/method/tiny/transfer_<name>.yaml),
    its zero-initialised outputs perturbed, sampling with `guidance` (default
    `transfer_guidance()`) in `steps` steps."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        method = method_from_config(f"configs/method/tiny/transfer_{name}.yaml")
    module = PoseDiffusionModule(copy.deepcopy(tiny_parts[0]), *tiny_parts[1:], method,
                                 noise_scheduler(), guidance=guidance or transfer_guidance(),
                                 sampling=SamplingSettings(steps, conditioning_scale=2.0,
                                                           negative_prompt=""),
                                 seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        perturb(module.method)
    return module.eval()
