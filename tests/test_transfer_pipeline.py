"""Pose transfer through the front door: every transfer method's bundle round-trips (its
two-condition guidance as a spec); `PosePipeline` with a source image equals
`PoseDiffusionModule.generate` on the same pair batch, bit for bit; the source pose given or
detected; the demo's transfer bundle writer; `tools/commands/generate.py --source`; one clear
error for a source missing or misplaced."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.data.pairs import collate_pair_samples
from grpose.data.synthetic_pairs import SyntheticPairs
from grpose.methods import TRANSFER_METHODS, load_method
from grpose.pipeline import PoseError, PosePipeline, read_bundle
from grpose.pipeline.bundle import BUNDLE, load_bundle
from tiny_bundles import (RENDER, tiny_module, tiny_transfer_module, transfer_guidance,
                          write_detector_checkpoint, write_tiny_bundle)


@pytest.fixture(scope="module")
def pair():
    return SyntheticPairs(1, seed=2, split="val", resolution=64, render_scale=RENDER.scale)[0]


def uint8(image: torch.Tensor) -> np.ndarray:
    """`(3, H, W)` in [-1, 1] -> `uint8 (H, W, 3)` (exact for images read from uint8)."""
    return ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def pixels(images: torch.Tensor) -> np.ndarray:
    return np.stack([uint8(im.clamp(-1, 1)) for im in images])


class Fixed:
    """A detector that finds `people` in every image."""

    def __init__(self, people: np.ndarray):
        self.people, self.calls = people, 0

    def __call__(self, images):
        self.calls += 1
        return [{"keypoints": torch.from_numpy(self.people), "scores": torch.ones(len(
            self.people))} for _ in images]


@pytest.mark.parametrize("name", sorted(TRANSFER_METHODS))
def test_every_transfer_method_round_trips_through_a_bundle(tmp_path, tiny_parts, pair, name,
                                                            perturb_zero_parameters, one_thread):
    module = tiny_transfer_module(tiny_parts, name, perturb_zero_parameters)
    folder = write_tiny_bundle(str(tmp_path / name), tiny_parts, module)
    bundle = read_bundle(folder)
    assert bundle.method == name and bundle.transfer
    g = module.guidance
    assert bundle.sampler.guidance_spec["class_path"].endswith(type(g).__name__)
    assert bundle.sampler.source_scale == g.source_scale == 1.5
    assert bundle.sampler.guidance_scale == 2.0
    loaded = load_bundle(folder, bundle)
    assert type(loaded.guidance) is type(g) and vars(loaded.guidance) == vars(g)
    for part in ("method", "unet", "vae", "text_encoder"):
        a, b = getattr(module, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert type(load_method(folder)) is TRANSFER_METHODS[name]
    batch = collate_pair_samples([pair])
    assert torch.equal(loaded.generate(batch, [3]), module.generate(batch, [3]))


def test_pipeline_equals_generate_on_the_same_pair_batch(tmp_path, tiny_parts, pair,
                                                         perturb_zero_parameters, one_thread):
    module = tiny_transfer_module(tiny_parts, "source_unaligned", perturb_zero_parameters)
    expected = pixels(module.generate(collate_pair_samples([pair, pair]), [7, 8]))
    folder = write_tiny_bundle(str(tmp_path / "b"), tiny_parts, module)
    source = uint8(pair.source_image)
    for pipe in (PosePipeline(module, RENDER), PosePipeline.from_pretrained(folder)):
        assert pipe.transfer
        out = pipe(pair.caption, pair.keypoints.numpy(), seed=7, num_images=2,
                   source_image=source, source_pose=pair.source_keypoints.numpy())
        assert np.array_equal(np.stack([np.asarray(im) for im in out.images]), expected)
        np.testing.assert_array_equal(out.source_pose, pair.source_keypoints.numpy())
        assert np.array_equal(np.asarray(out.source_image), source)
    # the source acts: another person's image gives another image
    other = SyntheticPairs(2, seed=9, split="val", resolution=64)[1]
    changed = PosePipeline(module, RENDER)(pair.caption, pair.keypoints.numpy(), seed=7,
                                           source_image=uint8(other.source_image),
                                           source_pose=pair.source_keypoints.numpy())
    assert not np.array_equal(np.asarray(changed.images[0]), expected[0])


def test_the_guidance_scales_a_call_overrides(tiny_parts, pair, perturb_zero_parameters,
                                              one_thread):
    module = tiny_transfer_module(tiny_parts, "source_unaligned", perturb_zero_parameters)
    pipe = PosePipeline(module, RENDER)
    args = (pair.caption, pair.keypoints.numpy())
    kw = dict(source_image=uint8(pair.source_image), source_pose=pair.source_keypoints.numpy(),
              seed=1)
    base = np.asarray(pipe(*args, **kw).images[0])
    same = np.asarray(pipe(*args, guidance_scale=2.0, source_scale=1.5, **kw).images[0])
    assert np.array_equal(base, same)  # the bundle's own scales, rebuilt from the spec
    for override in ({"guidance_scale": 4.0}, {"source_scale": 3.0}):
        assert not np.array_equal(np.asarray(pipe(*args, **override, **kw).images[0]), base)
    assert vars(module.guidance) == vars(transfer_guidance())  # per call, never set on the model


def test_the_source_forms_and_the_detected_source_pose(tmp_path, tiny_parts, pair,
                                                       perturb_zero_parameters):
    module = tiny_transfer_module(tiny_parts, "pose_only", perturb_zero_parameters)
    people = pair.source_keypoints.numpy()
    detector = Fixed(people)
    pipe = PosePipeline(module, RENDER, detector)
    source = uint8(pair.source_image)
    Image.fromarray(source).save(tmp_path / "source.png")
    run = dict(num_inference_steps=1, seed=2)
    given = pipe("a person", pair.keypoints.numpy(), source_image=source, source_pose=people,
                 **run)
    assert detector.calls == 1  # the generated image's pose only
    for form in (str(tmp_path / "source.png"), Image.fromarray(source), source):
        out = pipe("a person", pair.keypoints.numpy(), source_image=form, **run)
        np.testing.assert_array_equal(out.source_pose, people)  # read by the detector
        assert np.array_equal(np.asarray(out.images[0]), np.asarray(given.images[0]))
    # a source photo twice as wide is stretched to the model's size, its pose with it
    wide = np.repeat(source, 2, axis=1)  # (64, 128, 3)
    json_pose = tmp_path / "source.json"
    people_wide = people.copy()
    people_wide[..., 0] = np.where(people[..., 2] > 0, (people[..., 0] + 0.5) * 2 - 0.5, -1)
    json_pose.write_text(json.dumps({"annotations": [{"keypoints": np.where(
        people_wide[..., 2:] > 0, people_wide, 0).reshape(-1).tolist()}]}))
    out = pipe("a person", pair.keypoints.numpy(), source_image=wide,
               source_pose=str(json_pose), **run)
    assert out.source_image.size == (64, 64)
    np.testing.assert_allclose(out.source_pose, people, atol=1e-4)


def test_a_source_missing_or_misplaced_is_one_clear_error(tmp_path, tiny_parts, pair,
                                                          perturb_zero_parameters):
    transfer = PosePipeline(tiny_transfer_module(tiny_parts, "pose_only",
                                                 perturb_zero_parameters), RENDER, name="t")
    pose = PosePipeline(tiny_module(tiny_parts, "no_pose", perturb_zero_parameters), RENDER,
                        name="p")
    target, source = pair.keypoints.numpy(), uint8(pair.source_image)
    with pytest.raises(ValueError, match="t: pose_only is a pose-transfer method: give a source"):
        transfer("x", target)
    with pytest.raises(ValueError, match="p: no_pose is a pose method and takes no source"):
        pose("x", target, source_image=source)
    with pytest.raises(PoseError, match="no pose detector to read it"):
        transfer("x", target, source_image=source)
    with pytest.raises(PoseError, match="the source image: no person found"):
        PosePipeline(transfer.module, RENDER, Fixed(np.zeros((0, 17, 3), np.float32)))(
            "x", target, source_image=source)
    with pytest.raises(PoseError, match="missing.png: no such file"):
        transfer("x", target, source_image=str(tmp_path / "missing.png"))
    with pytest.raises(PoseError, match="must be uint8 \\(H, W, 3\\)"):
        transfer("x", target, source_image=np.zeros((8, 8), np.float32))


def test_a_bad_guidance_spec_names_the_file_and_field(tmp_path, tiny_parts,
                                                      perturb_zero_parameters):
    folder = write_tiny_bundle(str(tmp_path / "b"), tiny_parts, tiny_transfer_module(
        tiny_parts, "pose_only", perturb_zero_parameters))
    path = os.path.join(folder, BUNDLE)
    with open(path) as f:
        record = json.load(f)
    record["sampler"]["guidance_spec"]["init_args"]["sourse_scale"] = 1.0
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match="sampler.guidance_spec") as err:
        read_bundle(folder)
    assert BUNDLE in str(err.value)


def test_the_demo_writes_a_transfer_bundle(tmp_path, tiny_parts, pair, perturb_zero_parameters,
                                           one_thread):
    from grpose.demo.bundles import write_transfer_bundle
    unet, vae, _ = tiny_parts
    unet.save_pretrained(tmp_path / "base")
    vae.save_pretrained(tmp_path / "vae")
    model = tiny_transfer_module(tiny_parts, "reposedm", perturb_zero_parameters)
    folder = str(tmp_path / "run" / "bundles" / "reposedm-s0")
    written = write_transfer_bundle(folder, model, str(tmp_path / "vae"), str(tmp_path / "base"),
                                    RENDER, write_detector_checkpoint(str(tmp_path / "p.ckpt")),
                                    conditioning_scale=3.0)
    assert written == folder and not os.path.exists(folder + ".tmp")
    pipe = PosePipeline.from_pretrained(folder)
    assert pipe.transfer and pipe.detector is not None and pipe.name == "reposedm-s0"
    assert pipe.sampler.conditioning_scale == 3.0 and pipe.sampler.source_scale == 1.5
    expected = pixels(model.generate(collate_pair_samples([pair]), [4], scale=3.0))
    out = pipe(pair.caption, pair.keypoints.numpy(), seed=4,
               source_image=uint8(pair.source_image), source_pose=pair.source_keypoints.numpy())
    assert np.array_equal(np.asarray(out.images[0]), expected[0])
    with pytest.raises(ValueError, match="not a pose-transfer method"):
        write_transfer_bundle(str(tmp_path / "x"), tiny_module(
            tiny_parts, "no_pose", perturb_zero_parameters), str(tmp_path / "vae"),
            str(tmp_path / "base"), RENDER, None)


def test_generate_tool_takes_a_source_and_refuses_a_misplaced_one(tmp_path, tiny_parts, pair,
                                                                   capsys,
                                                                   perturb_zero_parameters):
    from tools.commands.generate import main
    transfer = write_tiny_bundle(str(tmp_path / "tr"), tiny_parts, tiny_transfer_module(
        tiny_parts, "pose_only", perturb_zero_parameters))
    pose = write_tiny_bundle(str(tmp_path / "gr"), tiny_parts, tiny_module(
        tiny_parts, "no_pose", perturb_zero_parameters))
    Image.fromarray(uint8(pair.source_image)).save(tmp_path / "photo.png")
    (tmp_path / "source.json").write_text(json.dumps(
        {"annotations": [{"keypoints": np.where(pair.source_keypoints[0, :, 2:] > 0,
                                                pair.source_keypoints[0], 0).reshape(-1)
                          .tolist()}]}))
    common = ["--prompt", "a person", "--pose", "docs/poses/example_openpose.json", "--steps",
              "1", "--out", str(tmp_path / "out")]
    paths = main(["--bundle", transfer, *common, "--source", str(tmp_path / "photo.png"),
                  "--source-pose", str(tmp_path / "source.json"), "--seed", "3"])
    assert [os.path.basename(p) for p in paths] == ["tr-seed3.png"] and os.path.isfile(paths[0])
    assert (tmp_path / "out" / "source.png").is_file()
    assert "source pose: 1 person" in capsys.readouterr().out
    for bundle, extra, message in (
            (transfer, [], "is a pose-transfer method: give a source image (--source"),
            (pose, ["--source", str(tmp_path / "photo.png")], "takes no source image")):
        with pytest.raises(SystemExit) as err:
            main(["--bundle", bundle, *common, *extra])
        assert err.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_any_guidance_class_is_stored_as_a_spec_and_rebuilt_with_a_calls_scales():
    from grpose.diffusion.guidance import DisentangledGuidance, InstructPix2PixGuidance
    from grpose.pipeline import SamplerSettings
    from grpose.pipeline.settings import guidance_spec
    for guidance, first in ((DisentangledGuidance(2.0, 3.0), "pose_scale"),
                            (InstructPix2PixGuidance(2.5, 3.0), "scale")):
        recorded = json.loads(json.dumps(guidance_spec(guidance)))  # as bundle.json holds it
        settings = SamplerSettings(guidance_spec=recorded)
        assert vars(settings.guidance()) == vars(guidance) and settings.source_scale == 3.0
        rebuilt = settings.guidance(5.0, 0.5)
        assert type(rebuilt) is type(guidance)
        assert (getattr(rebuilt, first), rebuilt.source_scale) == (5.0, 0.5)
    with pytest.raises(ValueError, match="ClassifierFreeGuidance\\) has none"):
        SamplerSettings().guidance(source_scale=2.0)
