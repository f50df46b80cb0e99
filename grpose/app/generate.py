"""Images for your own pose and prompt from a trained model's bundle (`grpose-generate`).

    grpose-generate --bundle runs/demo/bundles/grpose_skeleton-s0 \
        --prompt "a person in a red coat" --pose docs/poses/example_openpose.json \
        --out runs/generate

`--pose`: a COCO-style or OpenPose JSON file (OpenPose-18 / BODY_25 people, mapped to COCO-17;
`canvas_width` / `canvas_height` when given stretch it to the model's size), or a photo (.png,
.jpg, ...) whose people the pose detector finds: the bundle's (`--detector bundle`), or the
field's for photographs (`--detector higherhrnet_w48_humanart_512x512_udp.pth`, or a detector
spec YAML); a bundle whose detector only knows other images (the demo's: synthetic 64 px
people) prints one note saying so. Writes `<out>/pose.png` (the rendered
condition) and `<out>/<bundle name>-seed<k>.png` per image, and prints where they went (with the
OKS of the pose detected in each image against the target, when the bundle has a detector).

A pose-transfer bundle re-renders a person: `--source IMAGE` (required for it, refused for a
pose bundle) and optionally `--source-pose JSON` (the source person's keypoints in the source
image's pixels; default: the bundle's detector reads them from the image). It also writes
`<out>/source.png` (the source as the model saw it).

    grpose-generate --bundle runs/compare_transfer/bundles/reposedm-s0 \
        --prompt "a person" --pose docs/poses/example_openpose.json --source photo.png
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from grpose.pipeline import PhotoDetectorWarning, PoseError, PosePipeline, read_bundle

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_source(args: argparse.Namespace) -> None:
    """A source image for a pose-transfer bundle and none for a pose bundle (read before the
    model is loaded): else one line."""
    bundle = read_bundle(args.bundle)
    if bundle.transfer and args.source is None:
        raise ValueError(f"{args.bundle}: {bundle.method} is a pose-transfer method: give a "
                         "source image (--source IMAGE; make generate SOURCE=photo.png)")
    if not bundle.transfer and args.source is not None:
        raise ValueError(f"{args.bundle}: {bundle.method} is a pose method and takes no source "
                         "image (drop --source / SOURCE=)")
    if args.source is None and args.source_pose is not None:
        raise ValueError("--source-pose needs --source (the source person's image)")


def generate(args: argparse.Namespace) -> list[str]:
    """Run the pipeline and write the images; returns their paths."""
    check_source(args)
    detector = None if not args.detect or args.detector == "none" else args.detector
    pipe = PosePipeline.from_pretrained(args.bundle, detector=detector, device=args.device,
                                        torch_dtype=DTYPES[args.dtype])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PhotoDetectorWarning)
        out = pipe(args.prompt, args.pose, negative_prompt=args.negative_prompt,
                   num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                   conditioning_scale=args.conditioning_scale, seed=args.seed,
                   num_images_per_prompt=args.num_images, source_image=args.source,
                   source_pose=args.source_pose, source_scale=args.source_scale)
    for w in caught:
        print(f"note: {w.message}" if issubclass(w.category, PhotoDetectorWarning)
              else f"warning: {w.message}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    out.pose_image.save(os.path.join(args.out, "pose.png"))
    if out.source_image is not None:
        out.source_image.save(os.path.join(args.out, "source.png"))
        people = len(out.source_pose)
        print(f"source pose: {people} person{'' if people == 1 else 's'} "
              f"({'given' if args.source_pose else 'read by the pose detector'})")
    paths = []
    for k, (image, seed) in enumerate(zip(out.images, out.seeds)):
        paths.append(os.path.join(args.out, f"{pipe.name}-seed{seed}.png"))
        image.save(paths[-1])
        score = f" (OKS of its detected pose: {out.oks[k]:.3f})" if out.oks is not None else ""
        print(f"{paths[-1]}{score}")
    files = "pose.png" if out.source_image is None else "pose.png and source.png"
    print(f"wrote {len(paths)} image(s) and {files} to {args.out}")
    return paths


def parser() -> argparse.ArgumentParser:
    """The command line of `grpose-generate` (`make generate`)."""
    p = argparse.ArgumentParser(prog="grpose-generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="a bundle folder (make demo writes them "
                   "under runs/demo/bundles)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--pose", required=True, help="pose JSON (COCO or OpenPose) or a photo")
    p.add_argument("--out", default="runs/generate", help="output folder (default %(default)s)")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--seed", type=int, help="seed of the first image (default: a fresh random "
                   "seed, in the file names)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the bundle's)")
    p.add_argument("--guidance-scale", type=float, help="CFG scale (default: the bundle's)")
    p.add_argument("--conditioning-scale", type=float, help="the method's residual multiplier "
                   "(default: the bundle's)")
    p.add_argument("--negative-prompt", help="default: the bundle's")
    p.add_argument("--source", help="pose-transfer bundles: the source person's image (.png, "
                   ".jpg, ...), stretched to the model's size")
    p.add_argument("--source-pose", help="the source person's pose JSON (COCO or OpenPose, in "
                   "the source image's pixels; default: the bundle's detector reads it)")
    p.add_argument("--source-scale", type=float, help="the source's guidance scale (default: "
                   "the bundle's)")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="do not load a pose detector (no OKS; no photos)")
    p.add_argument("--detector", default="bundle", help="the pose detector: 'bundle' (its "
                   "own), 'none', the field's HigherHRNet checkpoint (.pth, for photographs) or "
                   "a detector spec (.yaml / .json)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="the model's dtype while sampling (default %(default)s)")
    p.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    return p


def main(argv: list[str] | None = None) -> list[str]:
    """`grpose-generate`: run, and exit with status 1 and one line on bad input."""
    args = parser().parse_args(argv)
    try:
        return generate(args)
    except (PoseError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
