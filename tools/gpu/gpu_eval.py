"""tools/gpu/gpu_check.py's evaluation section: throughput of scoring a folder of generated images
(synthetic stand-ins written first, not timed) with every metric grpose has: AP / CAP / PCE with
the pose detector(s) present (the papers' HigherHRNet-W48, random weights tamed as
tools/benchmarks/bench_detector does), FID / FID-64 / KID on Inception-v3 2048 features and the
CLIP score (random-init Inception-v3 and ViT-B/16: nothing is downloaded). The images are read and
their conditioning items rendered by a `DataLoader` with workers and pinned memory.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from grpose.data import SyntheticPoseDataset, collate_pose_samples
from grpose.metrics.evaluate import load_generated
from grpose.metrics.report import image_name


def _write_one(args) -> None:
    folder, name, res, seed = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (res // 16, res // 16, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((res, res), Image.BILINEAR)  # smooth: fast to encode
    img.save(os.path.join(folder, f"{name}.jpg"), quality=90)


def write_stand_ins(folder: str, data: SyntheticPoseDataset, workers: int) -> None:
    """One JPEG `<image_name>.jpg` per item of `data` (names from the ids, no rendering)."""
    os.makedirs(folder, exist_ok=True)
    jobs = [(folder, image_name({"id": f"{data.split}_{i:06d}"}), data.resolution, i)
            for i in range(len(data))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=64))
    else:
        for job in jobs:
            _write_one(job)


class GeneratedImages(Dataset):
    """`(generated (3, H, W) in [-1, 1], PoseSample)` of each item of `data`; a missing image is
    an error naming it."""

    def __init__(self, folder: str, data: Dataset):
        self.folder, self.data = folder, data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        item = self.data[i]
        gen = load_generated(self.folder, item.meta, tuple(item.image.shape[-2:]))
        if gen is None:
            raise FileNotFoundError(f"{self.folder}/{image_name(item.meta)}.jpg: not written")
        return gen, item


def _collate(pairs):
    return torch.stack([g for g, _ in pairs]), collate_pose_samples([s for _, s in pairs])


def random_inception(path: str) -> str:
    """Random-init torch-fidelity Inception-v3 weights saved at `path` (its download skipped)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
    cls = tf_inception.FeatureExtractorInceptionV3
    load, load_state = torch.load, cls.load_state_dict
    try:
        torch.load = lambda *a, **k: None
        cls.load_state_dict = lambda *a, **k: None
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = cls("x", ["2048"], "unused")
    finally:
        torch.load, cls.load_state_dict = load, load_state
    torch.save(net.state_dict(), path)
    return path


def detectors(device: torch.device, dtype: str, tiny: bool, log=print) -> dict:
    """`{name: PoseDetector}` of the detectors present, random-init: the project's pose network
    (configs/pose/synthetic.yaml) and the papers' HigherHRNet-W48 (left out with `tiny`: at
    512^2 with flip test it takes minutes per few images on a CPU). What is left out is logged."""
    from grpose.demo.stages import build_object, model_spec
    from grpose.pose import NetworkDetector
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_object(model_spec("pose/synthetic.yaml")["network"], "pose network")
    found = {"pose_network": NetworkDetector(network=net, device=str(device))}
    if tiny:
        log("  skipped: higherhrnet_w48 (--tiny: minutes per few images on a CPU)")
        return found
    from grpose.pose import HigherHRNetDetector
    from tools.benchmarks.bench_detector import random_detector_network
    found["higherhrnet_w48"] = HigherHRNetDetector(network=random_detector_network(),
                                                   device=str(device), dtype=dtype)
    return found


def run_eval(folder: str, num_images: int, res: int, batch_size: int, workers: int,
             device: torch.device, detector_dtype: str, tiny: bool = False, log=print) -> dict:
    """Write `num_images` stand-ins at `res`^2 into `folder`, then score them with every metric
    (per detector present: one full pass); returns s, images/s and the metrics per pass."""
    from grpose.metrics.clip_score import ClipScore
    from grpose.metrics.image_quality import ImageQuality, InceptionV3Features
    from grpose.metrics.suite import GenerationMetrics
    data = SyntheticPoseDataset(num_images, seed=0, split="val", resolution=res)
    start = time.perf_counter()
    write_stand_ins(folder, data, workers)
    log(f"  wrote {num_images} stand-ins at {res}^2 in {time.perf_counter() - start:.1f} s")
    inception = InceptionV3Features(random_inception(os.path.join(folder, "inception.pth")))
    clip = None
    try:
        import open_clip
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = open_clip.create_model("ViT-B-16")
        clip = (model, open_clip.get_tokenizer("ViT-B-16"))
    except ImportError as exc:
        log(f"  skipped: CLIP score ({exc})")
    loader = DataLoader(GeneratedImages(folder, data), batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        collate_fn=_collate, persistent_workers=False)
    results = {}
    for name, det in detectors(device, detector_dtype, tiny, log).items():
        suite = GenerationMetrics(det, ImageQuality(inception, kid_subset_size=min(
            200, num_images)), ClipScore(*clip) if clip else None).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for gen, batch in loader:
            batch = replace(batch, image=batch.image.to(device, non_blocking=True))
            suite.update(gen.to(device, non_blocking=True), batch)
        updated = time.perf_counter()
        metrics = suite.compute()
        sec = time.perf_counter() - start
        results[name] = dict(seconds=sec, images_per_s=num_images / sec, num_images=num_images,
                             resolution=res, update_seconds=updated - start,
                             compute_seconds=sec - (updated - start),
                             metrics={k: float(v) for k, v in metrics.items()})
        log(f"  {name}: {num_images} images in {sec:.1f} s ({num_images / sec:.1f} images/s; "
            f"compute() {sec - (updated - start):.1f} s)")
    return results
