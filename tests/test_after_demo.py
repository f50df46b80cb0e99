"""After `make demo`: `make train` trains on the demo's base and data (configs the demo writes),
`make eval` scores images of the demo's poses offline with `configs/eval/demo.yaml`."""
import os
import subprocess

import pytest
from PIL import Image

from grpose.callbacks.images import to_uint8
from grpose.cli import main
from grpose.data import HumanArtDataset
from grpose.data.synthetic import write_synthetic
from grpose.demo.run import QUICK, DemoConfig
from grpose.demo.models import base_stage
from grpose.demo.stages import data_stage, pose_stage, vae_stage
from grpose.demo.train_configs import write_train_configs
from grpose.metrics.report import image_name
from tools.commands.evaluate import cli as evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's shared stages, shortened to seconds, and the configs it writes for them."""
    cfg = DemoConfig(out=str(tmp_path_factory.mktemp("demo")), **QUICK)
    stages = {"data": data_stage(cfg, {}), "pose": pose_stage(cfg, {})}
    stages["vae"] = vae_stage(cfg, {"data": stages["data"]})
    stages["base"] = base_stage(cfg, {"vae": stages["vae"]})
    return cfg, stages, write_train_configs(cfg, stages)


def test_make_train_on_the_demo_base_and_data(demo, tmp_path):
    cfg, stages, written = demo
    cli = main(["fit", "--config", "configs/trainer/cpu.yaml", "--config", written["base"],
                "--config", written["data"], "--config",
                "configs/method/tiny/grpose_skeleton.yaml", "--trainer.max_steps=2",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                f"--trainer.default_root_dir={tmp_path}", "--trainer.limit_val_batches=1",
                "--data.init_args.batch_size=2"])
    assert cli.trainer.global_step == 2
    model = cli.model
    assert model.hparams.latent_scale == pytest.approx(stages["vae"]["latent_scale"])
    unet = cli.config["fit"]["model"]["init_args"]["unet"]["init_args"]["path"]
    assert os.path.samefile(unet, stages["base"]["unet_dir"])  # the demo's trained UNet
    train = cli.datamodule.datasets["train"]
    assert train.root == os.path.join(cfg.out, "data") or os.path.samefile(
        train.root, os.path.join(cfg.out, "data"))
    assert train.render_scale == cfg.render_scale  # the demo's thin lines, not 512 px widths


def test_make_train_without_the_demo_says_run_make_demo_first(tmp_path):
    done = subprocess.run(["make", "-s", "train", "DEMO=" + str(tmp_path / "nothing")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "run 'make demo' first" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_make_eval_demo_config_scores_a_folder_offline(demo, tmp_path):
    cfg, stages, _ = demo
    data = os.path.join(cfg.out, "data")
    val = HumanArtDataset(data, "validation", layout="mapping", resolution=cfg.resolution,
                          min_people=0, render_scale=cfg.render_scale)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(len(val)):  # the real images as a perfect "method"
        item = val[k]
        Image.fromarray(to_uint8(item.image[None])[0]).save(images / f"{image_name(item.meta)}.png")
    pose = stages["pose"]["checkpoint"]
    results = evaluate(["--config", "configs/eval/demo.yaml", "--images", str(images),
                        f"--data.init_args.root={data}", f"--detector.init_args.checkpoint={pose}",
                        f"--features.init_args.checkpoint={pose}", f"--out={tmp_path / 'eval'}",
                        "--kid_subset_size=4"])
    assert results["num_images"] == len(val) and results["missing"] == 0
    mean = results["mean"]
    assert {"ap", "fid", "kid"} <= set(mean)
    assert mean["fid"] == pytest.approx(0.0, abs=1e-3)  # the same images: the same features
    assert (tmp_path / "eval" / "results.md").is_file()


def test_a_corrupt_image_mid_training_is_one_line_naming_it(demo, tmp_path, capsys):
    cfg, _, written = demo
    root = tmp_path / "data"
    write_synthetic(str(root), "training", 8, cfg.resolution, 0)
    write_synthetic(str(root), "validation", 2, cfg.resolution, 0)
    bad = sorted(root.rglob("training_000005.png"))[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # a truncated PNG
    args = ["fit", "--config", "configs/trainer/cpu.yaml", "--config", written["base"],
            "--config", written["data"], "--config", "configs/method/tiny/controlnet.yaml",
            f"--data.init_args.train.init_args.root={root}",
            f"--data.init_args.val.init_args.root={root}", "--data.init_args.batch_size=2",
            "--trainer.max_steps=8", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]
    for workers in (0, 1):
        with pytest.raises(SystemExit) as stop:
            main([*args, f"--data.init_args.num_workers={workers}", f"--run=w{workers}"])
        line = str(stop.value)
        assert line.startswith(f"error: {bad}") and "\n" not in line, line
        assert "on_error: skip" in line


def test_another_methods_checkpoint_is_one_line(tmp_path):
    tiny = [a for c in ("trainer/cpu", "base/tiny", "data/synthetic_tiny")
            for a in ("--config", f"configs/{c}.yaml")]
    common = [f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.max_steps=1",
              "--trainer.limit_val_batches=0", "--data.init_args.batch_size=2"]
    main(["fit", *tiny, "--config", "configs/method/tiny/grpose_skeleton.yaml", *common])
    ckpt = tmp_path / "tiny" / "main" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as stop:
        main(["fit", *tiny, "--config", "configs/method/tiny/controlnet.yaml", *common,
              "--run=other", f"--ckpt_path={ckpt}"])
    line = str(stop.value)
    assert line.startswith(f"error: ckpt_path: {ckpt} is a checkpoint of another model (this "
                           "config's method: ControlNet; its: GRPoseSkeleton): missing: ")
    assert "\n" not in line and len(line) < 2000  # a few names, not the 22 KB key dump
