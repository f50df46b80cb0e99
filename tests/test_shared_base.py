"""One loaded base for many bundles: bundles on the same base (files equal by content) share one
UNet, VAE and text encoder, a trained UNet gets its own copy, another base is refused; images
equal those of bundles loaded apart; and a photo read by a detector that only knows synthetic
people says so, once, with the way to pass the field's detector."""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.pipeline import BaseCache, PhotoDetectorWarning, PosePipeline, base_key, read_bundle
from tiny_bundles import detector_spec, tiny_module, write_tiny_bundle

KNOWS = "synthetic 64 px people"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_parts):
    from conftest import perturb_zero_parameters
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for name in ("grpose_skeleton", "controlnet", "humansd"):
        module = tiny_module(tiny_parts, name, perturb_zero_parameters)
        folder = str(root / f"{name}-s0")
        folders[name] = write_tiny_bundle(folder, tiny_parts, module,
                                          detector=detector_spec(folder), detector_knows=KNOWS)
    return folders


def unique_bytes(*pipes) -> int:
    """Bytes of the distinct parameter / buffer storages the pipelines' models hold."""
    seen = {}
    for pipe in pipes:
        for t in [*pipe.module.parameters(), *pipe.module.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_bundles_on_one_base_load_it_once(runs, one_thread, make_person):
    keys = {name: base_key(read_bundle(f)) for name, f in runs.items()}
    assert len(set(keys.values())) == 1  # the same files, copied into each bundle
    cache = BaseCache()
    a, b, h = (PosePipeline.from_pretrained(runs[n], base=cache, detector=None)
               for n in ("grpose_skeleton", "controlnet", "humansd"))
    assert len(cache) == 1
    for part in ("unet", "vae", "text_encoder"):
        assert getattr(a.module, part) is getattr(b.module, part), part
    assert h.module.vae is a.module.vae and h.module.unet is not a.module.unet  # trained UNet
    c = PosePipeline.from_pretrained(runs["controlnet"], base=a, detector=None)
    assert c.module.unet is a.module.unet and c.module.method is not b.module.method
    apart = [PosePipeline.from_pretrained(runs[n], detector=None)
             for n in ("grpose_skeleton", "controlnet")]
    shared, alone = unique_bytes(a, b), unique_bytes(*apart)
    base = unique_bytes(apart[0]) - sum(t.numel() * t.element_size() for t in [
        *apart[0].module.method.parameters(), *apart[0].module.method.buffers()])
    assert alone - shared == pytest.approx(base, rel=0.01)  # one base less
    people = np.stack([make_person(30, 12)])
    for pipe, other in zip((a, b), apart):
        for p in (pipe, other):
            p.set_progress_bar_config(disable=True)
        assert np.array_equal(np.asarray(pipe("a person", people, seed=2).images[0]),
                              np.asarray(other("a person", people, seed=2).images[0]))


def test_another_base_is_refused(runs, tmp_path, tiny_parts, perturb_zero_parameters):
    unet, vae, text = tiny_parts
    other_text = copy.deepcopy(text)
    with torch.no_grad():
        next(other_text.parameters()).add_(0.01)  # another text encoder's weights
    module = tiny_module(tiny_parts, "no_pose", perturb_zero_parameters)
    folder = write_tiny_bundle(str(tmp_path / "other"), (unet, vae, other_text), module)
    assert base_key(read_bundle(folder)) != base_key(read_bundle(runs["controlnet"]))
    a = PosePipeline.from_pretrained(runs["controlnet"], detector=None)
    with pytest.raises(ValueError, match="has another base than"):
        PosePipeline.from_pretrained(folder, base=a)
    with pytest.raises(ValueError, match="base= must be a PosePipeline or a BaseCache"):
        PosePipeline.from_pretrained(folder, base="shared")


def test_a_photo_read_by_a_synthetic_detector_says_so(runs, tmp_path, make_person, one_thread):
    pipe = PosePipeline.from_pretrained(runs["controlnet"])
    pipe.set_progress_bar_config(disable=True)
    pipe.detector.decode_options.update(center_threshold=0.0, max_people=1)  # finds someone
    photo = tmp_path / "astronaut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 60, 3), np.uint8)).save(photo)
    with pytest.warns(PhotoDetectorWarning) as caught:
        out = pipe("a person", str(photo), seed=1, num_inference_steps=1)
    lines = [str(w.message) for w in caught if issubclass(w.category, PhotoDetectorWarning)]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"{photo}: read by the bundle's pose detector, which knows {KNOWS}" in lines[0]
    assert "--detector" in lines[0] and "detector=" in lines[0]
    assert out.info["notes"] == lines
    with warnings.catch_warnings():
        warnings.simplefilter("error", PhotoDetectorWarning)
        keypoints = pipe("a person", np.stack([make_person(30, 12)]), seed=1,
                         num_inference_steps=1)  # keypoints: nothing to say
        assert keypoints.info["notes"] == []
        other = PosePipeline.from_pretrained(runs["controlnet"], detector=pipe.detector)
        other.set_progress_bar_config(disable=True)
        other("a person", str(photo), seed=1, num_inference_steps=1)  # the caller's detector
    assert out.pose.shape[1:] == (17, 3)  # the pose the detector read


def test_generate_prints_the_note_once(runs, tmp_path, capsys, one_thread):
    from grpose.app.generate import main
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
    paths = main(["--bundle", runs["controlnet"], "--prompt", "a person", "--pose", str(photo),
                  "--out", str(tmp_path / "out"), "--steps", "1", "--seed", "4"])
    assert [os.path.basename(p) for p in paths] == ["controlnet-s0-seed4.png"]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"which knows {KNOWS} only" in notes[0]
    with pytest.raises(SystemExit):
        main(["--bundle", runs["controlnet"], "--prompt", "x", "--pose", str(photo),
              "--detector", "yolo"])
    assert "error: detector='yolo': not 'bundle', None" in capsys.readouterr().err
