"""grpose's HigherHRNet detector against mmpose 0.29 itself, on random weights and images.

    python tools/reference/compare_mmpose.py --ref /tmp/mmref/venv/bin/python

`--ref`: the Python of a throwaway mmpose 0.29 venv (docs/benchmarks.md, the detector section;
with munkres 1.1.4). Never a dependency of grpose, never run by CI. Compares
1. `decode_associative` and mmpose's HeatmapParser + back-projection + ordering on the same
   maps (drawn people; a random network's maps of a square and a wide image), CPU and CUDA
   refine behaviour, with and without adjust / refine;
2. the whole detector from one `.pth` on uint8 images, as the papers call it (legacy input):
   the head outputs, the aggregated maps, and the people; and our decoding of mmpose's maps.
Prints the largest differences.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from grpose.pose import HigherHRNetDetector  # noqa: E402
from grpose.pose.associative import decode_associative  # noqa: E402
from tools.benchmarks.bench_detector import drawn_maps, random_detector_network  # noqa: E402

SCRIPT = os.path.join(ROOT, "tools", "reference", "mmpose_reference", "run_mmpose.py")


def differences(ours, theirs) -> str:
    (kp, sc), (rk, rs) = ours, (theirs["keypoints"], theirs["scores"])
    if len(kp) != len(rk):
        return f"people {len(kp)} vs {len(rk)}"
    if not len(kp):
        return "no people on either side"
    found = (kp[..., 2] > 0) & (rk[..., 2] > 0)
    same = np.array_equal(kp[..., 2] > 0, rk[..., 2] > 0)
    xy = np.abs(kp[..., :2] - rk[..., :2]).max(-1)
    return (f"{len(kp)} people, {'the same' if same else 'other'} joints found, max |xy| "
            f"{xy[found].max() if found.any() else 0:.3g} on them "
            f"({xy[~found].max() if (~found).any() else 0:.3g} on the value-0 ones), "
            f"|value| {np.abs(kp[..., 2] - rk[..., 2]).max():.3g}, "
            f"|score| {np.abs(sc - rs).max():.3g}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="python of the mmpose 0.29 venv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="compare_mmpose_") as tmp:
        compare(args.ref, tmp)


def compare(ref: str, tmp: str) -> None:

    def mmpose(*cmd) -> dict:
        out = os.path.join(tmp, "out.npz")
        subprocess.run([ref, SCRIPT, *cmd, out], check=True, stderr=subprocess.DEVNULL)
        return dict(np.load(out))

    net = random_detector_network(1)
    det = HigherHRNetDetector(network=net)
    cases = {f"{n} drawn people": (*drawn_maps(n, 128, seed=n), (256, 256)) for n in (1, 3, 10)}
    for k, size in enumerate([(512, 512), (300, 500)]):
        image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(k)) * 2 - 1
        with torch.no_grad():
            hm, tg = det.aggregate(det.prepare(image))
        cases[f"random network's maps {size}"] = (hm[0].numpy(), tg[0].numpy(), size)
    for name, (hm, tg, size) in cases.items():
        for copy in (False, True):
            for adjust, refine in ((True, True), (False, False), (True, False)):
                np.savez(os.path.join(tmp, "in.npz"), heatmaps=hm[None], tags=tg[None],
                         image_size=np.array(size), device_copy=copy, adjust=adjust,
                         refine=refine)
                theirs = mmpose("decode", os.path.join(tmp, "in.npz"))
                ours = decode_associative(hm, tg, size, adjust=adjust, refine=refine,
                                          dark_in_place=not copy)
                print(f"decode, {name}, cuda={copy}, adjust={adjust}, refine={refine}: "
                      f"{differences(ours, theirs)}", flush=True)

    weights = os.path.join(tmp, "w.pth")
    torch.save({"state_dict": net.state_dict(), "meta": {}}, weights)
    for k, (h, w) in enumerate([(512, 512), (300, 500), (600, 400)]):
        image = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.save(os.path.join(tmp, "img.npy"), image)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
        theirs = mmpose("infer", weights, os.path.join(tmp, "img.npy"))
        det = HigherHRNetDetector(weights, legacy_input=True, dark_in_place=True)
        with torch.no_grad():
            low, high = det.network(det.prepare(x))
            hm, tg = det.aggregate(det.prepare(x))
        rel = [np.abs(a.numpy() - theirs[b]).max() / np.abs(theirs[b]).max()
               for a, b in ((low, "out0"), (high, "out1"), (hm, "agg_heatmaps"), (tg, "agg_tags"))]
        people = det(x)[0]
        mine = (people["keypoints"].numpy(), people["scores"].numpy())
        on_theirs = decode_associative(theirs["agg_heatmaps"][0], theirs["agg_tags"][0], (h, w),
                                       dark_in_place=True)
        print(f"detector, {h}x{w}: relative max diff of head outputs {rel[0]:.2g} / {rel[1]:.2g}, "
              f"aggregated heatmaps {rel[2]:.2g}, tags {rel[3]:.2g}; people: "
              f"{differences(mine, theirs)}; our decoding of mmpose's maps: "
              f"{differences(on_theirs, theirs)}", flush=True)


if __name__ == "__main__":
    main()
