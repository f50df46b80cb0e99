"""Import released weights as an exported grpose method (`method.safetensors` + `method.json`).

    python tools/weights/import_weights.py grpose epoch=000031.ckpt \
        --sd /weights/stable-diffusion-v1-5 --out runs/weights/grpose_release
    python tools/weights/import_weights.py stable_pose humanart.pth \
        --sd /weights/stable-diffusion-v1-5 --out runs/weights/stable_pose_release
    python tools/weights/import_weights.py controlnet /weights/sd-controlnet-openpose \
        --sd /weights/stable-diffusion-v1-5 --out runs/weights/controlnet_openpose

`grpose`: the released GRPose checkpoint (original LDM layout; its `control_model.*` tensors)
onto `grpose_feature`; every control-model tensor must find its parameter and every parameter
its tensor. `stable_pose`: the released Stable-Pose checkpoint (`humanart.pth`, the whole
model's state dict; its `stable_pose_adapter.*` tensors, SD's own are left out) onto
`stable_pose`, one to one as well (`grpose.methods.stable_pose_release`). `controlnet`: a
diffusers ControlNet folder onto `controlnet`. Only the SD folder's `unet/config.json` is read
(the UNet is built without weights, to shape the encoder copy); the method comes from `--config`
(default: its SD 1.5 config). Checkpoints are read without running pickled code. Use the result
with `load_method(OUT, unet)` or `--model.init_args.method_weights=OUT` (`configs/base/sd15.yaml`
+ the method's config).
"""
from __future__ import annotations

import argparse
import os

import torch
from diffusers import UNet2DConditionModel

from grpose.data.io import read_state_dict
from grpose.methods import (ControlNet, GRPoseFeature, StablePose, method_from_config,
                            save_method)

CONFIGS = {"grpose": "configs/method/grpose_feature.yaml",
           "stable_pose": "configs/method/stable_pose.yaml",
           "controlnet": "configs/method/controlnet.yaml"}
CLASSES = {"grpose": GRPoseFeature, "stable_pose": StablePose, "controlnet": ControlNet}


def build_method(kind: str, sd: str, config: str | None = None):
    """The method of `config`, attached to a weightless UNet of the SD folder's config, its
    tensors allocated (uninitialised: the import sets every one; non-persistent buffers are
    recomputed by their module's `reset_buffers`)."""
    if not os.path.isfile(os.path.join(sd, "unet", "config.json")):
        raise FileNotFoundError(f"--sd {sd!r}: no unet/config.json (a local diffusers SD folder)")
    unet_config = UNet2DConditionModel.load_config(sd, subfolder="unet", local_files_only=True)
    method = method_from_config(config or CONFIGS[kind])
    if not isinstance(method, CLASSES[kind]):
        raise ValueError(f"{config}: a {type(method).__name__}, not {CLASSES[kind].__name__}")
    with torch.device("meta"):
        method.attach(UNet2DConditionModel.from_config(unet_config))
    resettable = {name: m for name, m in method.named_modules() if hasattr(m, "reset_buffers")}
    reset = {f"{name}.{b}" for name, m in resettable.items() for b, _ in m.named_buffers()}
    buffers = {k for k, _ in method.named_buffers()} - set(method.state_dict()) - reset
    if buffers:
        raise RuntimeError(f"non-persistent buffers {sorted(buffers)} would stay uninitialised")
    method = method.to_empty(device="cpu")
    for module in resettable.values():
        module.reset_buffers()
    return method


def import_release(kind: str, checkpoint: str, sd: str, out: str, config: str | None = None):
    """The released checkpoint of `kind` (grpose: its control model as `grpose_feature`;
    stable_pose: its adapter as `stable_pose`), written to `out`."""
    state = read_state_dict(checkpoint)
    state = state.get("state_dict", state)
    method = build_method(kind, sd, config)
    try:
        method.load_state_dict(method.state_dict_from_release(state))
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}") from None
    save_method(method, out)
    return method


def import_controlnet(folder: str, sd: str, out: str, config: str | None = None) -> ControlNet:
    """A diffusers ControlNet folder as `controlnet`, written to `out`."""
    method = build_method("controlnet", sd, config)
    method.load_diffusers(folder)
    save_method(method, out)
    return method


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(CONFIGS))
    parser.add_argument("source", help="the release checkpoint (grpose, stable_pose) or folder "
                        "(controlnet)")
    parser.add_argument("--sd", required=True, help="local diffusers SD 1.5 folder")
    parser.add_argument("--out", required=True, help="folder to write the method to")
    parser.add_argument("--config", help="method config (default: its configs/method/ file)")
    args = parser.parse_args(argv)
    if args.kind == "controlnet":
        method = import_controlnet(args.source, args.sd, args.out, args.config)
    else:
        method = import_release(args.kind, args.source, args.sd, args.out, args.config)
    count = sum(p.numel() for p in method.parameters())
    print(f"{args.kind}: {len(method.state_dict())} tensors, {count / 1e6:.1f} M parameters "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
