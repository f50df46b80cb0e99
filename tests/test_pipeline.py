"""`PosePipeline`: the same images as `PoseDiffusionModule.generate` for the same seed, bit for
bit; poses from arrays, COCO and OpenPose JSON files and photos; bad input is one clear error."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from grpose.data import SyntheticPoseDataset, collate_pose_samples
from grpose.data.skeletons import coco_to_openpose18
from grpose.pipeline import PoseError, PosePipeline, parse_pose_json, read_pose_file
from grpose.pipeline.poses import resolve_pose
from grpose.pose import NetworkDetector, PoseNetwork
from conftest import person
from tiny_bundles import RENDER, tiny_module, write_tiny_bundle


@pytest.fixture(scope="module")
def sample():
    ds = SyntheticPoseDataset(1, seed=4, split="val", resolution=64, render_scale=RENDER.scale)
    return ds[0]


@pytest.mark.parametrize("name", ["grpose_skeleton", "controlnet"])
def test_pipeline_equals_generate_for_the_same_seed(tmp_path, tiny_parts, sample, name,
                                                    perturb_zero_parameters, one_thread):
    module = tiny_module(tiny_parts, name, perturb_zero_parameters)
    batch = collate_pose_samples([sample, sample])
    expected = module.generate(batch, seeds=[7, 8])  # (2, 3, 64, 64)
    pixels = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    folder = write_tiny_bundle(str(tmp_path / name), tiny_parts, module)
    for pipe in (PosePipeline(module, RENDER), PosePipeline.from_pretrained(folder)):
        out = pipe(sample.caption, sample.keypoints.numpy(), seed=7, num_images=2)
        assert out.seeds == [7, 8]
        got = np.stack([np.asarray(im) for im in out.images])
        assert np.array_equal(got, pixels.numpy())
    # the per-call settings reach the one sampler: a different guidance changes the image
    other = PosePipeline(module, RENDER)(sample.caption, sample.keypoints.numpy(), seed=7,
                                         guidance_scale=5.0, num_inference_steps=2)
    assert not np.array_equal(np.asarray(other.images[0]), pixels[0].numpy())
    assert module.sampling_settings.num_inference_steps == 3 and module.guidance.scale == 2.0


def test_the_pose_condition_is_the_datasets_render(tiny_parts, sample, perturb_zero_parameters):
    pipe = PosePipeline(tiny_module(tiny_parts, "no_pose", perturb_zero_parameters), RENDER)
    batch = pipe.batch("a caption", sample.keypoints.numpy(), 1)
    assert torch.equal(batch.pose_image[0], sample.pose_image)
    assert torch.equal(batch.keypoints[0], sample.keypoints)


def openpose_person(coco: np.ndarray, body25: bool = False) -> list[float]:
    op = coco_to_openpose18(coco[None])[0]  # (18, 3), neck added
    op[op[:, 2] <= 0] = 0  # OpenPose writes missing joints as 0, 0, 0
    if body25:  # BODY_25: mid-hip inserted at 8, feet appended
        op = np.concatenate([op[:8], [[0, 0, 0]], op[8:], np.zeros((6, 3))])
    return op.reshape(-1).tolist()


@pytest.mark.parametrize("body25", [False, True])
def test_openpose_json_maps_to_coco17(tmp_path, make_person, body25):
    a, b = make_person(20, 10), make_person(40, 12)
    b[3] = [-1, -1, 0]  # a missing left ear
    path = tmp_path / "pose.json"
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": openpose_person(a, body25)},
                                           {"pose_keypoints_2d": openpose_person(b, body25)}],
                                "canvas_width": 128, "canvas_height": 64}))
    people, canvas = read_pose_file(str(path))
    assert canvas == (64, 128)
    np.testing.assert_array_equal(people, np.stack([a, b]))
    fitted = resolve_pose(str(path), (64, 64))  # stretched to the model's 64 x 64
    np.testing.assert_allclose(fitted[0, :, 0], a[:, 0] / 2)
    np.testing.assert_array_equal(fitted[1, 3], [-1, -1, 0])


def test_coco_json_several_people_and_missing_joints(make_person):
    a, b = make_person(20, 10), make_person(40, 12)
    flat_b = b.copy()
    flat_b[5:7, 2] = 0  # shoulders not labelled (v = 0)
    flat_b[:, 2] = np.where(flat_b[:, 2] > 0, 2, 0)
    content = {"images": [{"id": 1, "width": 64, "height": 64}],
               "annotations": [{"keypoints": a.reshape(-1).tolist()},
                               {"keypoints": flat_b.reshape(-1).tolist()}]}
    people, canvas = parse_pose_json(content)
    assert people.shape == (2, 17, 3) and canvas == (64, 64)
    np.testing.assert_array_equal(people[1, 5], [-1, -1, 0])
    assert (people[1, 7:, 2] == 1).all()
    single, _ = parse_pose_json({"keypoints": a.reshape(-1).tolist()})
    np.testing.assert_array_equal(single[0], a)
    plain, _ = parse_pose_json([a.tolist(), b.tolist()])
    assert plain.shape == (2, 17, 3)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}', "has 3 values; expected 54"),
    ('{"people": [{"face": []}]}', "people\\[0\\] has no 'pose_keypoints_2d'"),
    ('{"annotations": [{"keypoints": [1, 2]}]}', "has 2 values, expected 51"),
    ('{"people": []}', "no person with a keypoint"),
    ('[[1, 2, 3]]', "must have shape \\(P, 17, 3\\)"),
    ('{"poses": 3}', "not a pose"),
])
def test_a_malformed_pose_file_is_one_error_naming_it(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PoseError, match=message) as err:
        read_pose_file(str(path))
    assert str(path) in str(err.value)


def test_a_photo_goes_through_the_detector(tmp_path, make_person):
    from PIL import Image
    people = np.stack([make_person(30, 12)])

    class Fixed:  # a detector that finds `people` in a 64 x 64 image
        def __call__(self, images):
            assert images.shape == (1, 3, 64, 64)
            return [{"keypoints": torch.from_numpy(people), "scores": torch.ones(1)}]
    path = tmp_path / "photo.png"
    Image.new("RGB", (100, 80), "gray").save(path)
    np.testing.assert_array_equal(resolve_pose(str(path), (64, 64), Fixed()), people)
    with pytest.raises(PoseError, match="needs a pose detector"):
        resolve_pose(str(path), (64, 64))
    net = PoseNetwork(widths=(8, 8, 8, 8), channels=8, head_channels=8).eval()
    nobody = NetworkDetector(network=net, decode={"center_threshold": 1.1})
    with pytest.raises(PoseError, match="photo.png: no person found"):
        resolve_pose(str(path), (64, 64), nobody)


def test_a_detector_scores_each_image(tiny_parts, sample, perturb_zero_parameters, make_person):
    target = np.stack([make_person(30, 12)])

    class Echo:  # finds the target itself: OKS 1
        def __call__(self, images):
            return [{"keypoints": torch.from_numpy(target), "scores": torch.ones(1)}
                    for _ in images]
    module = tiny_module(tiny_parts, "no_pose", perturb_zero_parameters)
    out = PosePipeline(module, RENDER, Echo())("a person", target, num_images=2,
                                               num_inference_steps=1)
    assert out.oks == [pytest.approx(1.0)] * 2 and len(out.detected) == 2


def test_generate_tool_writes_the_images_and_says_where(tmp_path, tiny_parts, capsys,
                                                       perturb_zero_parameters):
    from tools.commands.generate import main
    folder = write_tiny_bundle(str(tmp_path / "gr"), tiny_parts,
                               tiny_module(tiny_parts, "grpose_skeleton", perturb_zero_parameters))
    out = tmp_path / "out"
    paths = main(["--bundle", folder, "--prompt", "a person", "--pose",
                  "docs/poses/example_openpose.json", "--out", str(out), "--num-images", "2",
                  "--seed", "9", "--steps", "1"])
    assert [p.split("/")[-1] for p in paths] == ["gr-seed9.png", "gr-seed10.png"]
    assert (out / "pose.png").is_file() and all((out / p.split("/")[-1]).is_file() for p in paths)
    assert f"wrote 2 image(s) and pose.png to {out}" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text('{"people": [{"pose_keypoints_2d": [0, 0]}]}')
    with pytest.raises(SystemExit) as err:
        main(["--bundle", folder, "--prompt", "x", "--pose", str(tmp_path / "bad.json")])
    assert err.value.code == 1
    assert "error: " in capsys.readouterr().err


def test_from_checkpoint_and_save_pretrained(tmp_path, tiny_parts, sample, perturb_zero_parameters,
                                             one_thread):
    import lightning as L
    module = tiny_module(tiny_parts, "controlnet", perturb_zero_parameters)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    unet, vae, text = tiny_parts
    pipe = PosePipeline.from_checkpoint(str(tmp_path / "last.ckpt"), RENDER, unet=unet, vae=vae,
                                        text_encoder=text, method=module.method.__class__(
                                            **module.method.settings),
                                        noise_scheduler=module.noise_scheduler)
    expected = PosePipeline(module, RENDER)("a person", sample.keypoints.numpy(), seed=2)
    got = pipe("a person", sample.keypoints.numpy(), seed=2, guidance_scale=2.0)
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(expected.images[0]))
    with pytest.raises(ValueError, match="pass parts= specs"):  # parts given: configs unknown
        pipe.save_pretrained(str(tmp_path / "bundle"))


@pytest.mark.slow
def test_a_cli_checkpoint_becomes_a_bundle_that_predict_reads(tmp_path, capsys):
    from grpose.cli import main
    from test_cli import CONFIGS, cli_args
    cli = main(cli_args(tmp_path, "--trainer.max_steps=1"))
    ckpt = os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt")
    pipe = PosePipeline.from_checkpoint(ckpt, RENDER)
    folder = pipe.save_pretrained(str(tmp_path / "bundle"))  # the base from the CLI's configs
    people = np.stack([person(30, 10)])
    a = pipe("a person", people, seed=1, num_inference_steps=2).images[0]
    b = PosePipeline.from_pretrained(folder)("a person", people, seed=1,
                                             num_inference_steps=2).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    predicted = main(["predict", *CONFIGS, f"--model.init_args.method_weights={folder}",
                      f"--predict_writer.out_dir={tmp_path / 'pred'}", "--trainer.logger=false",
                      f"--trainer.default_root_dir={tmp_path}",
                      "--data.init_args.eval_batch_size=2",
                      "--data.init_args.val.init_args.num_samples=2",
                      "--model.init_args.sampling.num_inference_steps=1"])
    for k, v in cli.model.method.state_dict().items():  # the bundle's method, read by predict
        assert torch.equal(predicted.model.method.state_dict()[k], v)
