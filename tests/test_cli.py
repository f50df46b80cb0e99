"""The LightningCLI in-process: fit, checkpoint reload and resume, predict; DDP on 2 CPUs."""
import copy
import os

import lightning as L
import pytest
import torch
import yaml

from grpose.cli import main
from grpose.data import PoseDataModule, SyntheticPoseDataset
from grpose.diffusion import PoseDiffusionModule, SamplingSettings, TrainingSettings
from grpose.diffusion.components import noise_scheduler
from grpose.methods import METHODS, ControlNet


def compose(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", f"configs/{name}.yaml")]


TINY = ("trainer/cpu", "base/tiny", "data/synthetic_tiny")
CONFIGS = compose(*TINY, "method/tiny/controlnet")


def cli_args(root, *extra):
    return ["fit", *CONFIGS, f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", "--trainer.val_check_interval=2",
            "--trainer.log_every_n_steps=1", "--data.init_args.batch_size=2",
            "--data.init_args.train.init_args.num_samples=8",
            "--data.init_args.val.init_args.num_samples=4", "--trainer.limit_val_batches=1",
            "--model.init_args.sampling.num_inference_steps=2", *extra]


def test_fit_reload_resume_predict(tmp_path, capsys):
    cli = main(cli_args(tmp_path, "--trainer.max_steps=2"))
    assert cli.trainer.global_step == 2
    ckpt = os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt")
    assert os.path.isfile(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(k.startswith("method.") for k in state)  # frozen parts come from the config
    reloaded = PoseDiffusionModule.load_from_checkpoint(ckpt)
    for k, v in cli.model.method.state_dict().items():
        assert torch.equal(reloaded.method.state_dict()[k], v)
    assert reloaded.training_settings == cli.model.training_settings == TrainingSettings(lr=1e-4)
    assert reloaded.sampling_settings == cli.model.sampling_settings == SamplingSettings(2)
    with open(os.path.join(cli.trainer.log_dir, "config.yaml")) as f:  # the run's config
        saved = yaml.safe_load(f)["model"]["init_args"]
    assert saved["training"]["lr"] == 1e-4 and saved["sampling"]["num_inference_steps"] == 2
    resumed = main(cli_args(tmp_path, "--trainer.max_steps=4", f"--ckpt_path={ckpt}"))
    assert resumed.trainer.global_step == 4
    out = tmp_path / "pred"
    predicted = main(["predict", *CONFIGS, f"--ckpt_path={ckpt}", f"--predict_writer.out_dir={out}",
                      f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
                      "--data.init_args.eval_batch_size=2",
                      "--data.init_args.val.init_args.num_samples=2",
                      "--model.init_args.sampling.num_inference_steps=1"])
    assert predicted.model.sampling_settings.num_inference_steps == 1  # not the checkpoint's 2
    names = sorted(os.listdir(out))
    assert names == ["config.yaml", "grid_0_00000.png", "validation_000000.png",
                     "validation_000001.png"]  # the config that made them beside them
    assert f"predict: 2 images written to {out}" in capsys.readouterr().out  # where they went


def test_ddp_spawn_two_cpu_processes(tmp_path, tiny_parts):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    model = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(),
                                training=TrainingSettings(lr=1e-4))
    data = PoseDataModule(train=SyntheticPoseDataset(8, resolution=64), batch_size=2)
    before = copy.deepcopy(model.method.state_dict())
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(model, data)
    after = model.method.state_dict()  # weights come back from the spawned processes
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _printed_config(capsys, args) -> str:
    with pytest.raises(SystemExit) as e:
        main(["fit", *args, "--print_config"])
    assert e.value.code in (0, None), args
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_config_composes_at_both_scales(capsys, name):
    """trainer + base + data + method parse against the code (SD 1.5 without loading weights)."""
    tiny = yaml.safe_load(_printed_config(capsys, compose(*TINY, f"method/tiny/{name}")))
    assert tiny["model"]["init_args"]["method"]["class_path"].startswith("grpose.methods.")
    for data in ("data/humanart", "data/laion_human"):
        sd = yaml.safe_load(_printed_config(capsys, compose("trainer/gpu8", "base/sd15", data,
                                                            f"method/{name}")))
        model = sd["model"]["init_args"]
        assert model["unet"]["init_args"]["path"] == model["vae"]["init_args"]["path"]
        style = sd["data"]["init_args"]["train"]["init_args"].get("pose_style", "humansd")
        assert style == ("openpose" if name == "controlnet" else "humansd")


@pytest.mark.parametrize("name", ["grpose_skeleton", "grpose_feature", "stable_pose"])
def test_tiny_grpose_configs_fit_one_step(tmp_path, name):
    cli = main(["fit", *compose(*TINY, f"method/tiny/{name}"), "--trainer.fast_dev_run=1",
                f"--trainer.default_root_dir={tmp_path}", "--data.init_args.batch_size=2",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
                "--model.init_args.sampling.num_inference_steps=2"])
    assert cli.trainer.global_step == 1
