"""Cost of the field's detector (HigherHRNet-W48, flip test) and of what uses it.

    python tools/benchmarks/bench_detector.py detector [--device cuda --dtype bfloat16 --batch 8]
    python tools/benchmarks/bench_detector.py eval --images 100   # `make eval` time, every metric
    python tools/benchmarks/bench_detector.py perception          # perception-loss step, SD shapes

detector: images/s at 512^2 with flip test, the network (resize, both passes, aggregation) and
the CPU grouping timed apart; the grouping on maps of 1, 3 and 10 drawn people (Gaussian peaks,
one tag per person) and on the random network's own maps.
eval: `tools/commands/evaluate.py` on a folder of 512^2 images with the detector, FID / FID-64 /
KID (random-init Inception-v3) and the CLIP score (random-init ViT-B/16): seconds per 100 images.
perception: one `PosePerceptionLoss` forward + backward at SD-1.5 shapes (random SD-1.5 VAE,
decode with gradient at 512^2) with `HigherHRNetMaps` vs our `PoseNetwork`
(configs/pose/synthetic.yaml's), interleaved.
All weights are random (nothing is downloaded); times are medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from grpose.pose import HigherHRNet, HigherHRNetDetector  # noqa: E402
from grpose.pose.associative import decode_associative  # noqa: E402


def tame_higherhrnet(net: HigherHRNet, target_std: float = 0.05, bias: float = 0.0
                     ) -> HigherHRNet:
    """Scale the head's output convs so that random weights give maps of ~`target_std` around
    `bias` (random BN statistics blow activations up to ~1e6: every pixel would be a person)."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i in range(2):
            std = net(x)[i].std()
            net.keypoint_head.final_layers[i].weight.mul_(target_std / std)
            net.keypoint_head.final_layers[i].bias.fill_(bias)
    return net


def random_detector_network(seed: int = 0) -> HigherHRNet:
    """A random HigherHRNet whose heatmaps pass the 0.1 threshold at a few pixels only."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return tame_higherhrnet(HigherHRNet().eval(), 0.03, -0.05)


def drawn_maps(num_people: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated-looking maps `(17, s, s)`, `(17, s, s, 2)`: each person's joints Gaussian peaks
    (sigma 2) at random places, its tag a constant plus noise around them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    heatmaps = np.zeros((17, size, size), np.float32)
    tags = rng.normal(0, 0.1, (17, size, size, 2)).astype(np.float32)
    for p in range(num_people):
        for j in range(17):
            cx, cy = rng.uniform(4, size - 4, 2)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8).astype(np.float32)
            heatmaps[j] = np.maximum(heatmaps[j], blob * rng.uniform(0.4, 0.9))
            tags[j][blob > 0.05] = 3.0 * p
    return heatmaps, tags


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_detector(args) -> None:
    device = torch.device(args.device)
    det = HigherHRNetDetector(network=random_detector_network(), device=args.device,
                              dtype=args.dtype)
    images = torch.rand(args.batch, 3, 512, 512, device=device) * 2 - 1

    def network():
        det.aggregate(det.prepare(images))
        if device.type == "cuda":
            torch.cuda.synchronize()
    with torch.no_grad():
        net_s = median_time(network, args.repeats)
        heatmaps, tags = (t.float().cpu() for t in det.aggregate(det.prepare(images[:1])))
    print(f"network, {args.dtype}, {args.device}, batch {args.batch} with flip: "
          f"{args.batch / net_s:.2f} images/s ({net_s / args.batch * 1e3:.0f} ms/image)")
    cases = {f"{n} drawn people": drawn_maps(n) for n in (1, 3, 10)}
    cases["random network's maps"] = (heatmaps[0].numpy(), tags[0].numpy())
    for name, (hm, tg) in cases.items():
        found = len(decode_associative(hm, tg, (512, 512))[0])
        sec = median_time(lambda: decode_associative(hm, tg, (512, 512)), args.repeats)
        print(f"grouping (CPU), {name}: {sec * 1e3:.1f} ms/image, {found} people found")


def bench_eval(args) -> None:
    import open_clip
    from PIL import Image
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    from grpose.data import SyntheticPoseDataset
    from grpose.metrics.evaluate import evaluate_folder
    from grpose.metrics.report import image_name
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as folder:
        torch.manual_seed(0)
        load, load_state = torch.load, tf_inception.FeatureExtractorInceptionV3.load_state_dict
        try:  # a random Inception: skip torch-fidelity's download of its weights
            torch.load = lambda *a, **k: None
            tf_inception.FeatureExtractorInceptionV3.load_state_dict = lambda *a: None
            inception = tf_inception.FeatureExtractorInceptionV3("x", ["2048"], "unused")
        finally:
            torch.load, tf_inception.FeatureExtractorInceptionV3.load_state_dict = load, load_state
        torch.save(inception.state_dict(), f"{folder}/inception.pth")
        torch.save(open_clip.create_model("ViT-B-16").state_dict(), f"{folder}/clip.pt")
        data = SyntheticPoseDataset(args.images, seed=0, split="val", resolution=512)
        rng = np.random.default_rng(0)
        for i in range(len(data)):
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(
                f"{folder}/{image_name(data[i].meta)}.png")
        det = HigherHRNetDetector(network=random_detector_network(), device=args.device)
        start = time.perf_counter()
        results = evaluate_folder(folder, data, det, f"{folder}/inception.pth",
                                  f"{folder}/clip.pt", "ViT-B-16", batch_size=16)
        sec = time.perf_counter() - start
        print(f"make eval, {args.images} images at 512^2 on {args.device}, AP/CAP/PCE + "
              f"FID/FID-64/KID + CLIP: {sec:.0f} s "
              f"({sec / args.images * 100:.0f} s per 100 images); "
              f"metrics {sorted(results['mean'])}")


def bench_perception(args) -> None:
    import yaml
    from diffusers import AutoencoderKL

    from grpose.data import SyntheticPoseDataset, collate_pose_samples
    from grpose.diffusion.components import SD15_LATENT_SCALE, SD15_VAE, noise_scheduler, seeded
    from grpose.diffusion.losses import DiffusionStep, PosePerceptionLoss
    from grpose.pose import HigherHRNetMaps, PoseNetwork
    with open(os.path.join(ROOT, "configs/pose/synthetic.yaml")) as f:
        small = yaml.safe_load(f)["model"]["init_args"]["network"]["init_args"]
    with seeded(0):
        vae = AutoencoderKL(**SD15_VAE).requires_grad_(False).eval()
        networks = {"HigherHRNet-W48": HigherHRNetMaps(network=random_detector_network()),
                    "PoseNetwork (ours)": PoseNetwork(**small)}
    ds = SyntheticPoseDataset(args.batch, seed=0, split="val", resolution=512)
    batch = collate_pose_samples([ds[i] for i in range(args.batch)])
    alphas = noise_scheduler().alphas_cumprod
    terms = {name: PosePerceptionLoss(network=net) for name, net in networks.items()}
    times = {name: [] for name in terms}
    for i in range(args.repeats + 1):  # interleaved; the first round is a warm-up
        for name, term in terms.items():
            latents = torch.randn(args.batch, 4, 64, 64)
            eps = torch.randn_like(latents).requires_grad_()
            t = torch.full((args.batch,), 100)
            step = DiffusionStep(batch, None, latents, torch.randn_like(latents), latents, t,
                                 eps, alphas, vae, SD15_LATENT_SCALE)
            start = time.perf_counter()
            loss, _ = term(step)
            loss.backward()
            if i:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["PoseNetwork (ours)"])
    for name, ts in times.items():
        print(f"perception loss (VAE decode + {name}, forward + backward), batch {args.batch} "
              f"at 512^2: {statistics.median(ts):.2f} s, {statistics.median(ts) / base:.2f}x ours")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("detector", "eval", "perception"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    {"detector": bench_detector, "eval": bench_eval, "perception": bench_perception}[
        args.what](args)


if __name__ == "__main__":
    main()
