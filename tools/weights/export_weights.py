"""Export a trained method from a grpose Lightning checkpoint.

    python tools/weights/export_weights.py runs/.../last.ckpt --out runs/weights/grpose
    python tools/weights/export_weights.py runs/.../last.ckpt --out runs/weights/cn \
        --diffusers runs/cn_hf

Writes `OUT/method.safetensors` + `OUT/method.json` (registry name and settings), which
`grpose.methods.load_method(OUT, unet)` or `--model.init_args.method_weights=OUT` load back;
`--diffusers DIR` also writes a diffusers folder: ControlNet's, which
`StableDiffusionControlNetPipeline` loads, or T2I-Adapter's (`zero_convs: false` only), which
`StableDiffusionAdapterPipeline` loads. The checkpoint's model is rebuilt from the settings
it stores (the frozen parts from their local files) and read without running pickled code.
"""
from __future__ import annotations

import argparse

from grpose.diffusion import PoseDiffusionModule
from grpose.methods import ControlNet, T2IAdapter, save_method


def export(checkpoint: str, out: str, diffusers: str | None = None) -> PoseDiffusionModule:
    """Write the method of `checkpoint` to `out` (and, for ControlNet and T2I-Adapter, as a
    diffusers folder to `diffusers`)."""
    module = PoseDiffusionModule.load_from_checkpoint(checkpoint, map_location="cpu",
                                                      weights_only=True)
    save_method(module.method, out)
    if diffusers is not None:
        if not isinstance(module.method, (ControlNet, T2IAdapter)):
            raise ValueError(f"--diffusers: {type(module.method).__name__} has no diffusers "
                             "layout (ControlNet and T2I-Adapter have)")
        module.method.save_diffusers(diffusers)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a grpose Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="folder for method.safetensors + .json")
    parser.add_argument("--diffusers", help="also write a diffusers ControlNet / T2IAdapter "
                        "folder here")
    args = parser.parse_args(argv)
    module = export(args.checkpoint, args.out, args.diffusers)
    method = module.method
    print(f"{type(method).__name__}: {len(method.state_dict())} tensors -> {args.out}")


if __name__ == "__main__":
    main()
