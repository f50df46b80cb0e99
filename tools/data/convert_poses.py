"""Rewrite pose `.npz` files (HumanSD / LAION-Human) into a pickle-free format.

    python tools/data/convert_poses.py data/humanart/pose data/humanart/pose_safe

Every `*.npz` under SRC (recursively) is read without running code from it and written to the
same relative path under OUT as plain arrays: `keypoints` float32 (P, 17, 3), `score` (P,) and
`area` (P,), which `np.load(..., allow_pickle=False)` opens and grpose reads like the originals.
Files that cannot be read, or whose pickle asks for anything but numpy arrays and plain
containers, are reported and counted; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

from grpose.data.io import DataError, person_areas, read_pose_npz
from grpose.data.skeletons import NUM_JOINTS


def convert_file(src: str, dst: str) -> None:
    """Write the pose file `src` to `dst` in the pickle-free format."""
    arrays = read_pose_npz(src)
    kp = np.asarray(arrays["keypoints"], dtype=np.float32)
    if kp.size % (NUM_JOINTS * 3):
        raise DataError(src, f"keypoints of shape {kp.shape} are not (P, 17, 3)", "bad keypoints")
    kp = kp.reshape(-1, NUM_JOINTS, 3)
    score = arrays.get("score", np.ones(len(kp), np.float32)).astype(np.float32)
    area = arrays.get("area", person_areas(kp)).astype(np.float32)
    if score.shape != (len(kp),) or area.shape != (len(kp),):
        raise DataError(src, f"score {score.shape} / area {area.shape} do not match "
                             f"{len(kp)} people", "bad pose file")
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    np.savez(dst, keypoints=kp, score=score, area=area)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", help="folder of pose .npz files (searched recursively)")
    p.add_argument("out", help="output folder (relative paths are kept)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.src):
        p.error(f"{args.src} is not a folder")
    files = sorted(glob.glob(os.path.join(glob.escape(args.src), "**", "*.npz"), recursive=True))
    converted = failed = 0
    for src in files:
        try:
            convert_file(src, os.path.join(args.out, os.path.relpath(src, args.src)))
            converted += 1
        except DataError as e:
            print(f"failed: {e}", file=sys.stderr)
            failed += 1
    print(f"converted {converted}, failed {failed} (of {len(files)} files in {args.src})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
