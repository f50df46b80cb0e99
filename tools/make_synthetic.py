"""Write the synthetic pose set to disk in the HumanSD mapping + npz layout.

    python tools/make_synthetic.py --out data/synthetic --num 2000 --resolution 256

writes `images/synthetic/<scenario>/<split>_<i>.png`, `pose/synthetic/<scenario>/<split>_<i>.npz`
and `mapping_file_{training,validation}.json`, which `HumanArtDataset(layout="mapping")` reads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from PIL import Image

from grpose.data.io import save_pose_npz
from grpose.data.synthetic import generate_synthetic


def write_split(out: str, split: str, num: int, resolution: int, seed: int) -> dict:
    mapping = {}
    for i in range(num):
        image, people, caption, meta = generate_synthetic(seed, i, resolution, split)
        img_path = meta["image_path"]
        pose_path = img_path.replace("images/", "pose/", 1).rsplit(".", 1)[0] + ".npz"
        os.makedirs(os.path.join(out, os.path.dirname(img_path)), exist_ok=True)
        Image.fromarray(image).save(os.path.join(out, img_path))
        save_pose_npz(os.path.join(out, pose_path), people)
        mapping[meta["id"]] = {"img_path": img_path, "prompt": caption, "pose_path": pose_path}
        if (i + 1) % 500 == 0 or i + 1 == num:
            print(f"{split}: {i + 1}/{num}", file=sys.stderr, flush=True)
    with open(os.path.join(out, f"mapping_file_{split}.json"), "w") as f:
        json.dump(mapping, f, indent=1)
    return mapping


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, required=True, help="training items")
    p.add_argument("--num-val", type=int, default=None, help="validation items (default num/10)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    num_val = max(args.num // 10, 1) if args.num_val is None else args.num_val
    write_split(args.out, "training", args.num, args.resolution, args.seed)
    write_split(args.out, "validation", num_val, args.resolution, args.seed)
    with open(os.path.join(args.out, "synthetic_config.json"), "w") as f:
        json.dump({"num": args.num, "num_val": num_val, "resolution": args.resolution,
                   "seed": args.seed}, f)


if __name__ == "__main__":
    main()
