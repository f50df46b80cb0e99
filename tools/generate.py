"""Images for your own pose and prompt from a trained model's bundle.

    python tools/generate.py --bundle runs/demo/bundles/grpose_skeleton-s0 \
        --prompt "a person in a red coat" --pose docs/poses/example_openpose.json \
        --out runs/generate

`--pose`: a COCO-style or OpenPose JSON file (OpenPose-18 / BODY_25 people, mapped to COCO-17;
`canvas_width` / `canvas_height` when given stretch it to the model's size), or a photo (.png,
.jpg, ...) whose people the bundle's pose detector finds. Writes `<out>/pose.png` (the rendered
condition) and `<out>/<bundle name>-seed<k>.png` per image, and prints where they went (with the
OKS of the pose detected in each image against the target, when the bundle has a detector).
"""
from __future__ import annotations

import argparse
import os
import sys

from grpose.pipeline import PoseError, PosePipeline


def generate(args: argparse.Namespace) -> list[str]:
    """Run the pipeline and write the images; returns their paths."""
    pipe = PosePipeline.from_pretrained(args.bundle, detector="bundle" if args.detect else None)
    out = pipe(args.prompt, args.pose, negative_prompt=args.negative_prompt,
               num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
               conditioning_scale=args.conditioning_scale, seed=args.seed,
               num_images=args.num_images)
    os.makedirs(args.out, exist_ok=True)
    out.pose_image.save(os.path.join(args.out, "pose.png"))
    paths = []
    for k, (image, seed) in enumerate(zip(out.images, out.seeds)):
        paths.append(os.path.join(args.out, f"{pipe.name}-seed{seed}.png"))
        image.save(paths[-1])
        score = f" (OKS of its detected pose: {out.oks[k]:.3f})" if out.oks is not None else ""
        print(f"{paths[-1]}{score}")
    print(f"wrote {len(paths)} image(s) and pose.png to {args.out}")
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="a bundle folder (make demo writes them "
                   "under runs/demo/bundles)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--pose", required=True, help="pose JSON (COCO or OpenPose) or a photo")
    p.add_argument("--out", default="runs/generate", help="output folder (default %(default)s)")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--seed", type=int, help="seed of the first image (default: the bundle's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the bundle's)")
    p.add_argument("--guidance-scale", type=float, help="CFG scale (default: the bundle's)")
    p.add_argument("--conditioning-scale", type=float, help="the method's residual multiplier "
                   "(default: the bundle's)")
    p.add_argument("--negative-prompt", help="default: the bundle's")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="do not load the bundle's pose detector (no OKS; no photos)")
    return p


def main(argv: list[str] | None = None) -> list[str]:
    args = parser().parse_args(argv)
    try:
        return generate(args)
    except (PoseError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
