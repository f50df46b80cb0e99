"""Resident memory over a long run: tiny GRPose (skeleton) training, then sampling, on the CPU.

    python tools/benchmarks/check_memory.py                          # 200 steps, 200 images
    python tools/benchmarks/check_memory.py --steps 60 --images 60   # shorter

Prints the resident set size (RSS) and the number of live tensors after `--warmup` (20) training
steps and after `--steps`, then after `--warmup` and `--images` sampled images, with the growth
in % from the warm-up mark. A run whose memory stays flat grows by well under 5 %: nothing (a
PGI context, a loss graph, a metric state) is kept from one step to the next.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings

import lightning as L
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from grpose.data import PoseDataModule, SyntheticPoseDataset, collate_pose_samples  # noqa: E402
from grpose.diffusion import (PoseDiffusionModule, SamplingSettings,  # noqa: E402
                              TrainingSettings)
from grpose.diffusion.components import (OpenCLIPTextEncoder, noise_scheduler,  # noqa: E402
                                         tiny_unet, tiny_vae)
from grpose.methods import method_from_config  # noqa: E402

METHOD = "configs/method/tiny/grpose_skeleton.yaml"
RES = 64


def rss_mib() -> float:
    """This process's resident set size in MiB (/proc/self/statm, else psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil
        return psutil.Process().memory_info().rss / 2**20


def live_tensors() -> int:
    """Tensors reachable by the garbage collector (after a collection)."""
    return len(tensors())


def tensors(graph_only: bool = False) -> list:
    """Live tensors (after a garbage collection); `graph_only`: those holding an autograd graph."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated proxies warns
        warnings.simplefilter("ignore")
        found = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return [t for t in found if t.grad_fn is not None] if graph_only else found


def tiny_module(root: str = ROOT, num_inference_steps: int = 10) -> PoseDiffusionModule:
    torch.manual_seed(0)
    method = method_from_config(os.path.join(root, METHOD))
    return PoseDiffusionModule(tiny_unet(), tiny_vae(),
                               OpenCLIPTextEncoder(text_cfg=dict(width=32, heads=2, layers=2)),
                               method, noise_scheduler(), training=TrainingSettings(lr=1e-4),
                               sampling=SamplingSettings(num_inference_steps))


class Marks(L.Callback):
    """(RSS MiB, live tensors) after the training steps in `marks`."""

    def __init__(self, marks):
        self.marks, self.seen = set(marks), {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in self.marks and step not in self.seen:
            self.seen[step] = (rss_mib(), live_tensors())


def train_memory(steps: int, marks, batch_size: int = 4, module=None) -> dict:
    """{step: (RSS MiB, live tensors)} while fitting `steps` steps of tiny GRPose."""
    module = module or tiny_module()
    data = PoseDataModule(train=SyntheticPoseDataset(steps * batch_size, resolution=RES),
                          batch_size=batch_size)
    watch = Marks(marks)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[watch],
                        log_every_n_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    return watch.seen


def sample_memory(images: int, marks, batch_size: int = 4, module=None) -> dict:
    """{images: (RSS MiB, live tensors)} while sampling `images` images in batches."""
    module = (module or tiny_module()).eval()
    data = SyntheticPoseDataset(images, split="val", resolution=RES)
    seen, done = {}, 0
    for start in range(0, images, batch_size):
        batch = collate_pose_samples([data[i] for i in range(start, min(start + batch_size,
                                                                         images))])
        module.generate(batch)
        done += len(batch)
        if done in marks:
            seen[done] = (rss_mib(), live_tensors())
    return seen


def growth(seen: dict) -> tuple[float, int]:
    """(RSS growth in %, live-tensor change) from the first mark to the last."""
    (r0, t0), (r1, t1) = seen[min(seen)], seen[max(seen)]
    return 100 * (r1 - r0) / r0, t1 - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = tiny_module()
    for name, seen in (
            ("training steps", train_memory(args.steps, (args.warmup, args.steps), args.batch,
                                            module)),
            ("sampled images", sample_memory(args.images, (args.warmup, args.images),
                                             args.batch, module))):
        for mark, (rss, tensors) in sorted(seen.items()):
            print(f"{name} {mark:4d}: RSS {rss:7.1f} MiB, {tensors} live tensors")
        pct, dt = growth(seen)
        print(f"{name}: RSS {pct:+.2f} % from {min(seen)} to {max(seen)}, live tensors {dt:+d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
