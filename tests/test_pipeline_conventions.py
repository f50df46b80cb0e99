"""`PosePipeline` in diffusers' conventions: each call option against its diffusers meaning
(prompt lists x `num_images_per_prompt`, generators, output types, `return_dict`, fresh seeds,
step callbacks, the progress bar), the swappable scheduler, bf16 sampling on the CPU, and the
lossless `from_pretrained` -> `save_pretrained` -> `from_pretrained` round trip."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from grpose.data import SyntheticPoseDataset
from grpose.pipeline import PosePipeline, PosePipelineOutput
from grpose.pipeline.bundle import BUNDLE, SCHEDULER
from tiny_bundles import RENDER, detector_spec, tiny_module, write_tiny_bundle

KNOWS = "synthetic 64 px people"


@pytest.fixture(scope="module")
def people():
    ds = SyntheticPoseDataset(1, seed=4, split="val", resolution=64, render_scale=RENDER.scale)
    return ds[0].keypoints.numpy()  # (P, 17, 3)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_parts):
    from conftest import perturb_zero_parameters
    folder = str(tmp_path_factory.mktemp("b") / "grpose_skeleton-s0")
    module = tiny_module(tiny_parts, "grpose_skeleton", perturb_zero_parameters)
    return write_tiny_bundle(folder, tiny_parts, module, detector=detector_spec(folder),
                             detector_knows=KNOWS)


@pytest.fixture(scope="module")
def pipe(bundle):
    pipe = PosePipeline.from_pretrained(bundle, detector=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def arrays(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_prompt_lists_times_images_per_prompt_in_diffusers_order(pipe, people, one_thread):
    out = pipe(["a person in red", "a robot"], people, num_images_per_prompt=2, seed=5)
    assert len(out.images) == 4 and out.seeds == [5, 6, 7, 8]
    first = pipe("a person in red", people, num_images_per_prompt=2, seed=5).images
    second = pipe("a robot", people, num_images_per_prompt=2, seed=7).images
    got, expected = arrays(out.images), arrays(first + second)
    assert np.abs(got - expected).max() <= 1  # the same images (a batch of 4 vs 2)
    assert np.abs(got[0] - got[2]).max() > 8  # the prompts differ
    with pytest.raises(ValueError, match="negative_prompt: 3 negative prompts for 2 prompts"):
        pipe(["a", "b"], people, negative_prompt=["x", "y", "z"])
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list"):
        pipe([], people)
    with pytest.raises(ValueError, match="num_images_per_prompt must be an integer >= 1"):
        pipe("a", people, num_images_per_prompt=0)


def test_generators_as_diffusers_takes_them(pipe, people, one_thread):
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]
    both = pipe("a person", people, num_images_per_prompt=2, generator=gens)
    assert both.seeds is None and both.info["noise"] == "generator"
    again = pipe("a person", people, num_images_per_prompt=2,
                 generator=[torch.Generator().manual_seed(s) for s in (13, 12)])
    a, b = arrays(both.images), arrays(again.images)
    assert np.abs(a[1] - b[1]).max() <= 1 and np.abs(a[0] - b[0]).max() > 8  # per image
    one = pipe("a person", people, num_images_per_prompt=2,
               generator=torch.Generator().manual_seed(3), output_type="latent")
    # one generator draws the whole batch's noise, as diffusers' randn_tensor does
    hook = []
    pipe("a person", people, num_images_per_prompt=2, generator=torch.Generator().manual_seed(3),
         output_type="latent", callback_on_step_end=lambda p, i, t, kw: hook.append(kw) or kw)
    assert torch.equal(one.images, hook[-1]["latents"])
    with pytest.raises(ValueError, match="a list of 1 generators for 2 images"):
        pipe("a", people, num_images_per_prompt=2, generator=gens[:1])
    with pytest.raises(ValueError, match="seed or generator, not both"):
        pipe("a", people, seed=1, generator=gens[0])


def test_no_seed_is_a_fresh_seed_reported(pipe, people, one_thread):
    a, b = pipe("a person", people), pipe("a person", people)
    assert a.info["noise"] == "random" and a.seeds != b.seeds
    assert np.abs(arrays(a.images) - arrays(b.images)).max() > 8
    again = pipe("a person", people, seed=a.seeds[0])
    assert np.array_equal(arrays(again.images), arrays(a.images))


def test_output_types_and_return_dict(pipe, people, one_thread):
    pil = pipe("a person", people, seed=2, num_images_per_prompt=2)
    assert isinstance(pil, PosePipelineOutput) and pil.images[0].size == (64, 64)
    as_np = pipe("a person", people, seed=2, num_images_per_prompt=2, output_type="np").images
    assert as_np.shape == (2, 64, 64, 3) and as_np.dtype == np.float32
    assert 0.0 <= as_np.min() and as_np.max() <= 1.0
    assert np.abs(as_np * 255 - arrays(pil.images)).max() <= 0.5 + 1e-3
    pt = pipe("a person", people, seed=2, num_images_per_prompt=2, output_type="pt").images
    assert pt.shape == (2, 3, 64, 64) and 0.0 <= float(pt.min()) and float(pt.max()) <= 1.0
    assert torch.allclose(pt.permute(0, 2, 3, 1).float(), torch.from_numpy(as_np))
    latent = pipe("a person", people, seed=2, output_type="latent")
    assert latent.images.shape == (1, 4, 16, 16) and latent.oks is None
    images, *rest = pipe("a person", people, seed=2, num_images_per_prompt=2, return_dict=False)
    assert np.array_equal(arrays(images), arrays(pil.images)) and len(rest) >= 3
    assert pil.info["num_inference_steps"] == 3 and pil.info["name"] == "grpose_skeleton-s0"
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe("a person", people, output_type="tensor")


def test_step_callback_and_progress_bar(pipe, people, capsys, one_thread):
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append((step, int(timestep), kwargs["latents"].shape))
        return kwargs
    out = pipe("a person", people, seed=1, num_inference_steps=3, output_type="latent",
               callback_on_step_end=callback)
    steps = DDIMScheduler.from_config(pipe.scheduler.config)
    steps.set_timesteps(3)
    assert seen == [(k, int(t), (1, 4, 16, 16)) for k, t in enumerate(steps.timesteps)]
    plain = pipe("a person", people, seed=1, num_inference_steps=3, output_type="latent")
    assert torch.equal(out.images, plain.images)  # reading the latents changes nothing
    with pytest.raises(ValueError, match="changing the latents is not supported"):
        pipe("a person", people, seed=1, callback_on_step_end=lambda p, i, t, kw: {
            "latents": kw["latents"] * 0})
    with pytest.raises(ValueError, match="only \\['latents'\\]"):
        pipe("a person", people, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    capsys.readouterr()
    pipe.set_progress_bar_config(disable=False)
    try:
        pipe("a person", people, seed=1, num_inference_steps=2)
        assert "DDIM" in capsys.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)
    pipe("a person", people, seed=1, num_inference_steps=2)
    assert "DDIM" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="only 'disable'"):
        pipe.set_progress_bar_config(desc="x")


def test_the_scheduler_is_swappable_and_saved(bundle, people, tmp_path, one_thread):
    pipe = PosePipeline.from_pretrained(bundle, detector=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler is pipe.module.sampler and isinstance(pipe.scheduler, DDIMScheduler)
    before = pipe("a person", people, seed=3).images
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert np.array_equal(arrays(pipe("a person", people, seed=3).images), arrays(before))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config,
                                               timestep_spacing="trailing")
    trailing = pipe("a person", people, seed=3).images
    assert np.abs(arrays(trailing) - arrays(before)).max() > 0
    folder = pipe.save_pretrained(str(tmp_path / "trailing"))
    with open(os.path.join(folder, SCHEDULER)) as f:
        assert json.load(f)["timestep_spacing"] == "trailing"
    loaded = PosePipeline.from_pretrained(folder, detector=None)
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(arrays(loaded("a person", people, seed=3).images), arrays(trailing))
    with pytest.raises(ValueError, match="must be a diffusers scheduler"):
        pipe.scheduler = "ddim"


def test_a_dpm_solver_scheduler_samples(bundle, people, one_thread):
    pipe = PosePipeline.from_pretrained(bundle, detector=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a person", people, seed=3, output_type="np")
    assert np.isfinite(out.images).all() and out.info["scheduler"] == \
        "DPMSolverMultistepScheduler"
    ddim = PosePipeline.from_pretrained(bundle, detector=None)
    ddim.set_progress_bar_config(disable=True)
    assert np.abs(out.images - ddim("a person", people, seed=3, output_type="np").images).max() > 0
    again = pipe("a person", people, seed=3, output_type="np").images
    assert np.array_equal(again, out.images)


def test_bf16_samples_in_bf16_and_stays_close_to_fp32(bundle, pipe, people, one_thread):
    half = PosePipeline.from_pretrained(bundle, detector=None, torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    m = half.module
    assert half.dtype == torch.bfloat16 and pipe.dtype == torch.float32
    for part in (m.unet, m.vae, m.text_encoder, m.method):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    dtypes, states = [], []
    handle = m.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: states.append(kwargs["encoder_hidden_states"].dtype),
        with_kwargs=True)
    try:
        got = half("a person", people, seed=4, output_type="np",
                   callback_on_step_end=lambda p, i, t, kw: dtypes.append(kw["latents"].dtype)
                   or kw).images
    finally:
        handle.remove()
    assert dtypes == [torch.bfloat16] * 3 and set(states) == {torch.bfloat16}
    expected = pipe("a person", people, seed=4, output_type="np").images
    assert np.abs(got - expected).mean() < 0.01 and np.abs(got - expected).max() < 0.06
    assert half.to(dtype=torch.float32).dtype == torch.float32  # .to() goes back


@pytest.mark.parametrize("name", ["grpose_skeleton", "humansd"])
def test_save_pretrained_round_trips_everything(tmp_path, tiny_parts, people, name,
                                                perturb_zero_parameters, one_thread):
    folder = str(tmp_path / "a" / name)
    module = tiny_module(tiny_parts, name, perturb_zero_parameters)
    write_tiny_bundle(folder, tiny_parts, module, detector=detector_spec(folder),
                      detector_knows=KNOWS)
    first = PosePipeline.from_pretrained(folder)
    first.set_progress_bar_config(disable=True)
    again = first.save_pretrained(str(tmp_path / "b" / name))
    os.rename(tmp_path / "b", tmp_path / "moved")  # the copy stands on its own
    again = str(tmp_path / "moved" / name)
    with open(os.path.join(folder, BUNDLE)) as f, open(os.path.join(again, BUNDLE)) as g:
        a, b = json.load(f), json.load(g)
    assert {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items()
                                                           if k != "name"}
    assert b["detector"]["class_path"].endswith("NetworkDetector")
    assert b["detector_knows"] == KNOWS and b["trained_unet"] == (name == "humansd")
    second = PosePipeline.from_pretrained(again)
    second.set_progress_bar_config(disable=True)
    assert type(second.detector) is type(first.detector) and second.detector_knows == KNOWS
    x, y = (p("a person", people, seed=6, num_images_per_prompt=2) for p in (first, second))
    assert np.array_equal(arrays(x.images), arrays(y.images)) and x.oks == y.oks


def test_a_detector_argument_is_checked_when_loading(bundle, tmp_path):
    with pytest.raises(ValueError, match="detector='yolo': not 'bundle', None, a detector"):
        PosePipeline.from_pretrained(bundle, detector="yolo")
    (tmp_path / "weights.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a HigherHRNet checkpoint"):
        PosePipeline.from_pretrained(bundle, detector=str(tmp_path / "weights.onnx"))
    with pytest.raises(ValueError, match="expected 'bundle', None, a PoseDetector"):
        PosePipeline.from_pretrained(bundle, detector=3)
    spec = detector_spec(str(tmp_path / "det"))
    spec["init_args"]["checkpoint"] = str(tmp_path / "det" / "detector.ckpt")
    (tmp_path / "detector.yaml").write_text(json.dumps({"detector": spec}))
    pipe = PosePipeline.from_pretrained(bundle, detector=str(tmp_path / "detector.yaml"))
    assert type(pipe.detector).__name__ == "NetworkDetector" and pipe.detector_knows is None
