"""The path a user with real SD 1.5 weights takes, on SD 1.5's shapes with random weights (slow).

A diffusers SD 1.5 folder written with `save_pretrained` (SD 1.5's configs, random init, seed 0:
`unet/`, `vae/`, `text_encoder/`; `tokenizer/` and `scheduler/` are not read by grpose), the one
`&sd` path of `configs/base/sd15.yaml` edited to point at it, then
`python -m grpose fit` (trainer/cpu + base/sd15 + data/humanart + method/controlnet) on a tiny
Human-Art folder in each layout, `predict` (2 DDIM steps) from the fit's `last.ckpt`, with the SD
folder moved and the config edited again, and `make eval`'s `tools/commands/evaluate.py` with
`configs/eval/humanart.yaml` on the images.

Affordable on a CPU: 64 px images (8 x 8 latents), batch 1, float32, no validation. Offline
stand-ins for the evaluation's external weights: a random-init tiny `PoseNetwork` checkpoint
(the pose detector), a random-init torch-fidelity Inception-v3 (real shapes) and a random tiny
open_clip model (its config registered in-process, hence `make eval`'s command line runs
in-process: `tools/commands/evaluate.py`'s `cli`).
"""
from __future__ import annotations

import gc
import json
import math
import os

import pytest
import torch

from conftest import HUMANART_ITEMS, write_humanart
from grpose.cli import main
from grpose.diffusion.components import SD15_UNET, SD15_VAE

RES = 64
SD15_TEXT = dict(  # stable-diffusion-v1-5/text_encoder/config.json
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
    num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                            "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}
# two items per scenario (FID / KID need two images a side); the eval list keeps two scenarios
ITEMS = HUMANART_ITEMS + [(s, d, i + 1000, h, w, p) for s, d, i, h, w, p in HUMANART_ITEMS]
EVAL_IDS = [i for s, _, i, *_ in ITEMS if s in ("cartoon", "dance")]


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    """A diffusers SD 1.5 folder: SD 1.5's configs, random weights (seed 0), safetensors."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from test_components import _save_sd15_text_encoder
    from transformers import CLIPTextConfig, CLIPTextModel

    from grpose.diffusion.components import seeded
    folder = tmp_path_factory.mktemp("weights") / "stable-diffusion-v1-5"
    with seeded(0):
        UNet2DConditionModel(**SD15_UNET).save_pretrained(folder / "unet", safe_serialization=True)
        gc.collect()
        AutoencoderKL(**SD15_VAE).save_pretrained(folder / "vae", safe_serialization=True)
        _save_sd15_text_encoder(CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
                                folder / "text_encoder")
    gc.collect()
    return folder


def sd15_config(sd, path):
    """`configs/base/sd15.yaml` with its one path edited, as a user does."""
    text = open("configs/base/sd15.yaml").read()
    assert text.count("/weights/stable-diffusion-v1-5") == 1
    path.write_text(text.replace("/weights/stable-diffusion-v1-5", str(sd)))
    return str(path)


def run_args(base, root, layout, *extra):
    configs = ("configs/trainer/cpu.yaml", base, "configs/data/humanart.yaml",
               "configs/method/controlnet.yaml")
    data = [f"--data.init_args.{stage}.init_args.{key}={value}" for stage in ("train", "val")
            for key, value in (("root", root), ("layout", layout), ("resolution", RES))]
    return [arg for c in configs for arg in ("--config", c)] + data + [
        "--data.init_args.batch_size=1", "--data.init_args.eval_batch_size=2",
        "--data.init_args.num_workers=0", "--data.init_args.pin_memory=false", *extra]


def offline_eval_weights(folder, monkeypatch):
    """(Inception-v3 weights, CLIP weights, CLIP arch): random, local."""
    import open_clip
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    torch.manual_seed(0)
    with monkeypatch.context() as m:  # a random network: skip torch-fidelity's download
        m.setattr(torch, "load", lambda *args, **kwargs: None)
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        inception = tf_inception.FeatureExtractorInceptionV3("x", ["2048"], "unused")
    torch.save(inception.state_dict(), folder / "inception.pth")
    (folder / "grpose-e2e-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "grpose-e2e-clip.json")
    torch.save(open_clip.create_model("grpose-e2e-clip").state_dict(), folder / "clip.pt")
    return str(folder / "inception.pth"), str(folder / "clip.pt"), "grpose-e2e-clip"


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("layout, steps", [("mapping", 2), ("coco", 1)])
def test_sd15_fit_predict_eval(tmp_path, monkeypatch, sd15_folder, mmpose_higherhrnet, layout,
                               steps):
    from tools.commands.evaluate import cli as evaluate_cli
    root = tmp_path / "HumanArt"
    for split in ("training", "validation"):
        write_humanart(root, layout, ITEMS, split)
    (root / "eval_ids.txt").write_text("\n".join(map(str, EVAL_IDS)) + "\n")
    run = tmp_path / "runs"
    cli = main(["fit", *run_args(sd15_config(sd15_folder, tmp_path / "sd15.yaml"), root, layout,
                                 f"--trainer.default_root_dir={run}",
                                 f"--trainer.logger.init_args.save_dir={run}",
                                 f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0")])
    assert cli.trainer.global_step == steps
    assert tuple(cli.model.unet.config.block_out_channels) == SD15_UNET["block_out_channels"]
    assert len(cli.model.method.controlnet.down_blocks) == 4  # SD 1.5's encoder copy
    trained = {k: v.clone() for k, v in cli.model.method.state_dict().items()
               if k.startswith(("controlnet.controlnet_down_blocks", "controlnet.controlnet_mid"))}
    assert any(v.any() for v in trained.values())  # the zero convs moved
    ckpt = os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt")
    del cli
    gc.collect()

    moved = sd15_folder.with_name("sd15-moved")  # predict on another machine: another path
    out = tmp_path / "predict"
    sd15_folder.rename(moved)
    try:
        pred = main(["predict", *run_args(sd15_config(moved, tmp_path / "moved.yaml"), root,
                                          layout, f"--ckpt_path={ckpt}",
                                          f"--predict_writer.out_dir={out}",
                                          f"--trainer.default_root_dir={run}",
                                          "--trainer.logger=false",
                                          "--model.init_args.sampling.num_inference_steps=2",
                                          f"--data.init_args.val.init_args.eval_list="
                                          f"{root / 'eval_ids.txt'}")])
    finally:
        moved.rename(sd15_folder)
    assert pred.model.sampling_settings.num_inference_steps == 2
    for k, v in trained.items():
        assert torch.equal(pred.model.method.state_dict()[k], v)
    del pred
    gc.collect()
    names = sorted(os.listdir(out))
    assert [n for n in names if not n.startswith("grid_") and n != "config.yaml"] == sorted(
        f"{i}.png" for i in EVAL_IDS)

    inception, clip, clip_arch = offline_eval_weights(tmp_path, monkeypatch)
    results = evaluate_cli([  # `make eval IMAGES=out ARGS=...`
        "--config", "configs/eval/humanart.yaml", "--images", str(out),
        f"--data.init_args.root={root}", f"--data.init_args.layout={layout}",
        f"--data.init_args.resolution={RES}", f"--data.init_args.eval_list={root}/eval_ids.txt",
        f"--detector.init_args.checkpoint={mmpose_higherhrnet[0]}",
        f"--inception_weights={inception}",
        f"--clip_weights={clip}", f"--clip_arch={clip_arch}", f"--out={tmp_path / 'eval'}"])
    assert results["num_images"] == len(EVAL_IDS) and results["missing"] == 0
    assert set(results["per_scenario"]) == {"cartoon", "dance"}
    assert {"ap", "cap", "pce", "fid", "fid64", "kid", "clip"} <= set(results["mean"])
    for value in (*results["mean"].values(), *results["all"].values()):
        assert math.isfinite(value)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["mean"] == pytest.approx(results["mean"])
