"""Bundles: every registered method round-trips (weights, sampler, render settings, images);
files are readable by the user; a bad bundle is one error naming the file and field."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from grpose.data import SyntheticPoseDataset, collate_pose_samples
from grpose.methods import METHODS, load_method
from grpose.pipeline import read_bundle
from grpose.pipeline.bundle import BUNDLE, find_bundles, load_bundle
from tiny_bundles import RENDER, tiny_module, write_tiny_bundle


@pytest.fixture(scope="module")
def pose_batch():
    ds = SyntheticPoseDataset(2, seed=3, split="val", resolution=64, render_scale=RENDER.scale)
    return collate_pose_samples([ds[0], ds[1]])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_round_trips_through_a_bundle(tmp_path, tiny_parts, pose_batch, name,
                                                   perturb_zero_parameters, one_thread):
    module = tiny_module(tiny_parts, name, perturb_zero_parameters)
    folder = write_tiny_bundle(str(tmp_path / name), tiny_parts, module)
    bundle = read_bundle(folder)
    assert (bundle.method, bundle.render, bundle.latent_scale) == (
        name, RENDER, module.hparams.latent_scale)
    assert bundle.sampler.num_inference_steps == 3 and bundle.sampler.guidance_scale == 2.0
    assert bundle.sampler.conditioning_scale == 2.0 and bundle.trained_unet == (name == "humansd")
    loaded = load_bundle(folder, bundle)
    for part in ("method", "unet", "vae", "text_encoder"):
        a, b = getattr(module, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert type(load_method(folder)) is METHODS[name]  # load_method reads a bundle
    seeds = [11, 12]
    assert torch.equal(loaded.generate(pose_batch, seeds), module.generate(pose_batch, seeds))


def test_bundle_files_are_readable_by_the_user(tmp_path, tiny_parts, perturb_zero_parameters):
    old = os.umask(0o022)
    try:
        folder = write_tiny_bundle(str(tmp_path / "b"), tiny_parts,
                                   tiny_module(tiny_parts, "controlnet", perturb_zero_parameters))
    finally:
        os.umask(old)
    for name in ("method.safetensors", "method.json", BUNDLE, "text_encoder.safetensors"):
        mode = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
        assert mode & 0o044 == 0o044, (name, oct(mode))


def test_a_bundle_moves_with_its_folder(tmp_path, tiny_parts, perturb_zero_parameters,
                                        pose_batch):
    module = tiny_module(tiny_parts, "grpose_skeleton", perturb_zero_parameters)
    write_tiny_bundle(str(tmp_path / "a" / "gr"), tiny_parts, module)
    os.rename(tmp_path / "a", tmp_path / "moved")
    assert find_bundles(str(tmp_path)) == [str(tmp_path / "moved" / "gr")]
    loaded = load_bundle(str(tmp_path / "moved" / "gr"))
    assert torch.equal(loaded.generate(pose_batch, [1, 2]), module.generate(pose_batch, [1, 2]))


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("render"), "no 'render' field"),
    (lambda r: r.update(format="other/1"), "'format' must be"),
    (lambda r: r["parts"].pop("vae"), "parts.vae needs a class_path"),
    (lambda r: r["sampler"].update(steps=3), "render / sampler"),
    (lambda r: r["parts"]["unet"].update(class_path="os.system"), "is not a grpose class"),
])
def test_a_bad_bundle_is_one_error_naming_the_field(tmp_path, tiny_parts, edit, message,
                                                    perturb_zero_parameters):
    folder = write_tiny_bundle(str(tmp_path / "b"), tiny_parts,
                               tiny_module(tiny_parts, "no_pose", perturb_zero_parameters))
    path = os.path.join(folder, BUNDLE)
    with open(path) as f:
        record = json.load(f)
    edit(record)
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match=message) as err:
        load_bundle(folder)
    assert BUNDLE in str(err.value)


def test_a_folder_without_bundle_json_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        read_bundle(str(tmp_path))


def write_knowledge_base(path: str) -> str:
    """A random tiny KB-DMGen knowledge base file (what `KnowledgeBaseModule` saves)."""
    from grpose.methods.kb_dmgen import KnowledgeBase
    kb = KnowledgeBase(embed_dim=16, text_width=32, num_codes=4, code_dim=8, hidden=16)
    torch.save({"knowledge_base": dict(kb.config),
                "state_dict": {f"knowledge.{k}": v for k, v in kb.state_dict().items()}}, path)
    return path


@pytest.mark.slow  # 30-70 s on the busy 2-core machine (make demo's tests run write_bundles too)
def test_the_demo_writes_bundles_the_pipeline_reads(tmp_path, tiny_parts, pose_batch,
                                                    perturb_zero_parameters, one_thread):
    """`write_bundles` on a demo run's stage records (tiny stand-ins): each bundle samples what
    the demo's own model does with the scale its scoring chose, bit for bit."""
    from grpose.demo.bundles import inputs_of, write_bundles
    from grpose.demo.models import load_model
    from grpose.demo.run import DemoConfig
    from grpose.pipeline import PosePipeline
    from tiny_bundles import write_detector_checkpoint
    unet, vae, _ = tiny_parts
    unet.save_pretrained(tmp_path / "base")
    vae.save_pretrained(tmp_path / "vae")
    stages = {"vae": {"vae_dir": str(tmp_path / "vae"), "latent_scale": 1.7},
              "base": {"unet_dir": str(tmp_path / "base")},
              "pose": {"checkpoint": write_detector_checkpoint(str(tmp_path / "pose.ckpt"))},
              "score/no_pose-s0": {"scale": 1.0},
              "knowledge": {"checkpoint": write_knowledge_base(str(tmp_path / "kb.ckpt"))}}
    for name, scale in (("grpose_skeleton", 3.0), ("humansd", 2.0), ("kb_dmgen", 2.0)):
        module = tiny_module(tiny_parts, name, perturb_zero_parameters,
                             knowledge_base=stages["knowledge"]["checkpoint"])
        torch.save(module.method.state_dict(), tmp_path / f"{name}.pt")
        stages[f"{name}-s0"] = {"weights": str(tmp_path / f"{name}.pt")}
        if name == "humansd":
            torch.save(module.unet.state_dict(), tmp_path / "unet.pt")
            stages[f"{name}-s0"]["unet"] = str(tmp_path / "unet.pt")
        stages[f"score/{name}-s0"] = {"scale": scale}
    cfg = DemoConfig(out=str(tmp_path / "run"), sample_steps=2)
    rows = ["no_pose", "grpose_skeleton", "humansd", "kb_dmgen", "grpose_skeleton+reposedm"]
    written = write_bundles(cfg, stages, rows, [0])
    assert [os.path.basename(b) for b in written] == [
        "no_pose-s0", "grpose_skeleton-s0", "humansd-s0", "kb_dmgen-s0"]
    for folder, row in zip(written, rows):
        model = load_model(cfg, inputs_of(stages, row, 0), row, 0)
        if row == "kb_dmgen":
            os.remove(tmp_path / "kb.ckpt")  # the knowledge base travels in its bundle
        pipe = PosePipeline.from_pretrained(folder)
        scale = stages[f"score/{row}-s0"]["scale"]
        assert pipe.sampler.conditioning_scale == scale and pipe.render.scale == cfg.render_scale
        assert pipe.detector is not None and pipe.sampler.num_inference_steps == 2
        batch = collate_pose_samples([SyntheticPoseDataset(
            1, seed=3, split="val", resolution=64, render_scale=cfg.render_scale)[0]])
        expected = model.generate(batch, [4], scale=scale)
        out = pipe(batch.captions[0], batch.keypoints[0].numpy(), seed=4)
        pixels = ((expected[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        assert torch.equal(torch.from_numpy(np.array(out.images[0])).permute(2, 0, 1), pixels)
