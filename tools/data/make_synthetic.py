"""Write the synthetic pose set to disk in the HumanSD mapping + npz layout.

    python tools/data/make_synthetic.py --out data/synthetic --num 2000 --resolution 256
    python tools/data/make_synthetic.py --out data/one_person --num 2000 --resolution 64 \
        --people-weights 1 --size-range 0.6 0.9 --occluder-p 0   # the demo's set

writes `images/synthetic/<scenario>/<split>_<i>.png`, `pose/synthetic/<scenario>/<split>_<i>.npz`
and `mapping_file_{training,validation}.json`, which `HumanArtDataset(layout="mapping")` reads.
"""
from __future__ import annotations

import argparse
import json
import os

from dataclasses import asdict

from grpose.data.synthetic import Scene, write_synthetic


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, required=True, help="training items")
    p.add_argument("--num-val", type=int, default=None, help="validation items (default num/10)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    default = Scene()
    p.add_argument("--people-weights", type=float, nargs="+", default=default.people_weights,
                   help="weights of 1, 2, 3 people per image")
    p.add_argument("--size-range", type=float, nargs=2, default=default.size_range,
                   help="person height range, as a fraction of the image side")
    p.add_argument("--occluder-p", type=float, default=default.occluder_p)
    args = p.parse_args(argv)
    scene = Scene(tuple(args.people_weights), tuple(args.size_range), args.occluder_p)
    num_val = max(args.num // 10, 1) if args.num_val is None else args.num_val
    write_synthetic(args.out, "training", args.num, args.resolution, args.seed, scene)
    write_synthetic(args.out, "validation", num_val, args.resolution, args.seed, scene)
    with open(os.path.join(args.out, "synthetic_config.json"), "w") as f:
        json.dump({"num": args.num, "num_val": num_val, "resolution": args.resolution,
                   "seed": args.seed, "scene": asdict(scene)}, f)


if __name__ == "__main__":
    main()
