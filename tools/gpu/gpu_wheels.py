"""Download into `.whl/` the wheels grpose needs that a GPU machine without the project's venv
lacks (`make gpu-wheels`): for a machine that cannot reach a package registry, where you copy
the checkout and install these wheels instead of running `make install`.

    python tools/gpu/gpu_wheels.py                 # every wheel in WHEELS, DGL included
    python tools/gpu/gpu_wheels.py --no-dgl        # without DGL (the PGI's torch paths need none)

The wheels are for CPython 3.12 on x86-64 Linux (such a machine usually has torch, lightning,
torchmetrics, transformers and timm already, and lacks diffusers, open_clip, dgl, omegaconf,
jsonargparse, pycocotools, munkres, torch-fidelity and torchdata). Versions are the ones
`constraints.txt` pins (one version of each: two would stop the install); `--no-deps` with the
explicit list below, its needs named too. Wheels of other versions already in `.whl/` are
removed. Prints each wheel's size, the total and the tracked tree's size, and fails when both
together pass 64 MiB (to keep the copy small).

On the GPU machine, in the copied checkout:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
    python3 tools/gpu/gpu_check.py --out results
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIZE_LIMIT_MIB = 64.0
WHEELS = (  # missing on the GPU machine (KINDS.md's package list), with what they need there
    "diffusers", "importlib_metadata", "lazy-importer",  # diffusers
    "open_clip_torch", "ftfy", "wcwidth", "timm",  # open_clip (timm >= 1.0.17)
    "omegaconf", "jsonargparse", "docstring_parser", "typeshed_client",  # LightningCLI
    "lightning",  # the machine's own may differ from the pinned one
    "pycocotools", "munkres", "torch_fidelity", "torchdata",
)
OPTIONAL = ("dgl",)  # 8.2 MiB; only the CPU reference paths and `use_dgl=True` need it
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned_versions(constraints: str) -> dict[str, str]:
    """`{normalised name: version}` of the `name==version` lines of a constraints file."""
    out = {}
    with open(constraints) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                out[_key(name)] = version.strip()
    return out


def requirements(names, constraints: str) -> list[str]:
    """`name==version` for each of `names`, the version from `constraints`; a name that is not
    pinned there is an error naming the file."""
    pins = pinned_versions(constraints)
    missing = [n for n in names if _key(n) not in pins]
    if missing:
        raise SystemExit(f"{constraints}: no pinned version for {missing} (run `make lock`)")
    return [f"{n}=={pins[_key(n)]}" for n in names]


def _wheel_key(path: str) -> tuple[str, str]:
    name, version = os.path.basename(path).split("-")[:2]
    return _key(name), version


def prune(folder: str, wanted: list[str]) -> list[str]:
    """Remove wheels in `folder` that are not the wanted `name==version`s; returns those removed."""
    keep = {(_key(r.split("==")[0]), r.split("==")[1]) for r in wanted}
    removed = []
    for path in glob.glob(os.path.join(folder, "*.whl")):
        if _wheel_key(path) not in keep:
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def tracked_mib(root: str) -> float:
    """Size of the git-tracked files of `root` (what travels besides the carried paths)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    return sum(os.path.getsize(os.path.join(root, f)) for f in files
               if f and os.path.isfile(os.path.join(root, f))) / 2**20


def main(argv=None) -> float:
    """Download the wheels; returns the bundle's size in MiB."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dest", default=os.path.join(ROOT, ".whl"))
    p.add_argument("--constraints", default=os.path.join(ROOT, "constraints.txt"))
    p.add_argument("--no-dgl", dest="dgl", action="store_false", help="leave DGL out")
    p.add_argument("--python-version", default="3.12")
    args = p.parse_args(argv)
    wanted = requirements(WHEELS + (OPTIONAL if args.dgl else ()), args.constraints)
    os.makedirs(args.dest, exist_ok=True)
    for name in prune(args.dest, wanted):
        print(f"removed {name} (not in the list)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", args.python_version, "--implementation", "cp",
           *[a for plat in PLATFORMS for a in ("--platform", plat)], "-d", args.dest, *wanted]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    wheels = sorted(glob.glob(os.path.join(args.dest, "*.whl")))
    got = {_wheel_key(w) for w in wheels}
    absent = [r for r in wanted if (_key(r.split("==")[0]), r.split("==")[1]) not in got]
    if absent:
        raise SystemExit(f"{args.dest}: pip saved no wheel for {absent}")
    total = sum(os.path.getsize(w) for w in wheels) / 2**20
    for w in wheels:
        print(f"{os.path.getsize(w) / 2**20:7.2f} MiB  {os.path.basename(w)}")
    tree = tracked_mib(ROOT)
    print(f"bundle: {len(wheels)} wheels, {total:.1f} MiB; tracked tree {tree:.1f} MiB; "
          f"together {total + tree:.1f} of the {SIZE_LIMIT_MIB:.0f} MiB limit")
    if total + tree > SIZE_LIMIT_MIB:
        raise SystemExit("over the size limit: try --no-dgl")
    return total


if __name__ == "__main__":
    main()
