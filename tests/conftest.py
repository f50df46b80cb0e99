"""Shared offline fixtures: small datasets written in the real on-disk formats."""
from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.data.io import save_pose_npz


@pytest.fixture(autouse=True)
def _seed_and_argv(monkeypatch):
    torch.manual_seed(0)
    np.random.seed(0)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # in-process CLIs must not see pytest's args


def person(x0: float, y0: float, scale: float = 20.0) -> np.ndarray:
    """A simple upright `(17, 3)` person with every joint present, nose near (x0, y0)."""
    offsets = np.array([
        [0, 0], [1, -1], [-1, -1], [2, 0], [-2, 0], [2, 2], [-2, 2], [3, 4], [-3, 4],
        [3, 6], [-3, 6], [1, 6], [-1, 6], [1, 8], [-1, 8], [1, 10], [-1, 10]], np.float32)
    kp = np.ones((17, 3), np.float32)
    kp[:, :2] = offsets * scale / 10 + [x0, y0]
    return kp


def write_image(path: str, h: int, w: int, seed: int = 0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


HUMANART_ITEMS = [  # (scenario, domain, id, height, width, people)
    ("cartoon", "2D_virtual_human", 303, 80, 120, [person(30, 10), person(80, 20)]),
    ("dance", "real_human", 7, 100, 60, [person(30, 30)]),
    ("sculpture", "3D_virtual_human", 12, 64, 64, [person(20, 10, 30)]),
]


@pytest.fixture
def humanart_items():
    return HUMANART_ITEMS


@pytest.fixture
def make_person():
    return person


def write_humanart(root, layout: str, items=HUMANART_ITEMS, split: str = "validation"):
    """A Human-Art root with `items` (`HUMANART_ITEMS`' format) in the official COCO annotation
    layout (`layout="coco"`) or the HumanSD mapping + npz one (`"mapping"`); returns `root`."""
    images, annotations, mapping = [], [], {}
    for k, (scen, domain, iid, h, w, people) in enumerate(items):
        file_name = f"images/{domain}/{scen}/{iid:012d}.jpg"
        write_image(str(root / file_name), h, w, k)
        if layout == "mapping":
            pose = f"pose/{domain}/{scen}/{iid:012d}.npz"
            save_pose_npz(str(root / pose), np.stack(people))
            mapping[str(iid)] = {"img_path": file_name, "prompt": f"{scen}, a {scen} picture",
                                 "pose_path": pose}
            continue
        images.append({"file_name": file_name, "height": h, "width": w, "id": iid,
                       "description": f"a {scen} picture", "category": scen})
        for p in people:
            kp = p.copy()
            kp[:, 2] = 2
            annotations.append({"keypoints": kp.reshape(-1).tolist(), "image_id": iid,
                                "id": len(annotations) + 1, "category_id": 1, "iscrowd": 0,
                                "num_keypoints": 17})
    if layout == "mapping":
        path, content = root / f"mapping_file_{split}.json", mapping
    else:
        path = root / "annotations" / f"{split}_humanart.json"
        content = {"images": images, "annotations": annotations, "categories": []}
    os.makedirs(path.parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f)
    return root


@pytest.fixture
def humanart_coco(tmp_path):
    """Human-Art root in the official COCO annotation layout (validation split)."""
    return write_humanart(tmp_path, "coco")


@pytest.fixture
def humanart_mapping(tmp_path):
    """Human-Art root in the HumanSD mapping + npz layout (validation split)."""
    return write_humanart(tmp_path, "mapping")


class _Touch:
    """Unpickling this creates `marker`: stands for any code a crafted pose file could run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def write_unsafe_npz(path, marker, nested: bool = False, protocol: int = 3) -> None:
    """A hand-built pose npz whose `arr_0` pickle creates `marker` when unpickled.

    `nested`: the payload hides in a genuine-looking object array of person dicts.
    """
    payload = _Touch(marker)
    if nested:
        payload = np.empty(1, dtype=object)
        payload[0] = {"keypoints": _Touch(marker), "score": 1.0, "area": 0.0}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False,
                                               "shape": (1,)})
    pickle.dump(payload, buf, protocol=protocol)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arr_0.npy", buf.getvalue())


@pytest.fixture
def unsafe_npz():
    return write_unsafe_npz


# -- tiny latent-diffusion parts (random init, offline) ------------------------------------------
TINY_RES = 64  # image side; the tiny VAE downsamples by 4 -> 16 x 16 latents


@pytest.fixture(scope="session")
def tiny_parts():
    """`(unet, vae, text_encoder)`, frozen, tiny, random-init. Session-scoped: do not modify."""
    from grpose.diffusion.components import OpenCLIPTextEncoder, tiny_unet, tiny_vae
    parts = (tiny_unet(), tiny_vae(),
             OpenCLIPTextEncoder(text_cfg=dict(width=32, heads=2, layers=2)))
    for p in parts:
        p.requires_grad_(False).eval()
    return parts


@pytest.fixture
def tiny_batch():
    """A `PoseBatch` of 3 synthetic items at `TINY_RES` (1-3 people each)."""
    from grpose.data import SyntheticPoseDataset, collate_pose_samples
    ds = SyntheticPoseDataset(3, seed=0, split="val", resolution=TINY_RES)
    return collate_pose_samples([ds[i] for i in range(3)])


@pytest.fixture
def tiny_inputs(tiny_parts, tiny_batch):
    """`(noisy latents (3, 4, 16, 16), text states (3, 77, 32), PoseCondition)` of `tiny_batch`."""
    from grpose.data import PoseCondition
    _, vae, text_encoder = tiny_parts
    with torch.no_grad():
        latents = vae.encode(tiny_batch.image).latent_dist.mean
        text = text_encoder(tiny_batch.captions)
    noisy = latents + torch.randn_like(latents)
    return noisy, text, PoseCondition.from_batch(tiny_batch, (16, 16))


def perturb_zero_parameters(module: torch.nn.Module) -> None:
    """Give every all-zero parameter (zero convs, zero biases) small random values."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(std=0.05)


@pytest.fixture(name="perturb_zero_parameters")
def _perturb_fixture():
    return perturb_zero_parameters


@pytest.fixture
def perturbed_controlnet(tiny_parts):
    """A tiny ControlNet on the tiny UNet, its zero-initialised parameters perturbed (so that
    its conditioning changes the prediction, as a trained one does)."""
    from grpose.methods import ControlNet
    method = ControlNet((8, 16, 32))
    method.attach(tiny_parts[0])
    perturb_zero_parameters(method)
    return method


@pytest.fixture
def one_thread():
    """One intra-op thread: on 2 cores shared with other jobs, 2 threads are much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are skipped on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- the field's detector: random HigherHRNet-W48 weights in mmpose's layout ---------------------
@pytest.fixture(scope="session")
def mmpose_higherhrnet(tmp_path_factory):
    """`(path, state_dict)`: a seeded random HigherHRNet-W48 saved as mmpose 0.x saves a
    checkpoint (`{"meta", "state_dict", "optimizer"}`, a numpy scalar in the metadata)."""
    from grpose.pose.higherhrnet import HigherHRNet
    from tools.benchmarks.bench_detector import tame_higherhrnet
    with torch.random.fork_rng():
        torch.manual_seed(22)
        net = tame_higherhrnet(HigherHRNet().eval())
    state = {f"{k}": v.clone() for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("mmpose") / "higherhrnet_w48_humanart_512x512_udp.pth"
    torch.save({"meta": {"epoch": 300, "mmcv_version": "1.7.0",
                         "hook_msgs": {"best_score": np.float64(0.664)}},
                "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path, state
