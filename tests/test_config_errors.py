"""Bad configs stop the CLI with one line naming the field: before anything is built, or (what
needs the built VAE) before the first training step."""
import copy

import lightning as L
import pytest
import yaml

from grpose.cli import main
from grpose.data import PoseDataModule, SyntheticPoseDataset
from grpose.diffusion import PoseDiffusionModule
from grpose.diffusion.components import noise_scheduler
from grpose.methods import ControlNet


def compose(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", f"configs/{name}.yaml")]


TINY = compose("trainer/cpu", "base/tiny", "data/synthetic_tiny", "method/tiny/controlnet")
SD_CONTROLNET = compose("trainer/gpu8", "base/sd15", "data/humanart", "method/controlnet")


def cli_error(*args) -> str:
    with pytest.raises(SystemExit) as e:
        main(["fit", *args, "--trainer.logger=false"])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("override, expected", [
    ("--model.init_args.method.class_path=grpose.methods.Nope",
     "error: model.init_args.method (class_path 'grpose.methods.Nope'): module 'grpose.methods' "
     "has no attribute 'Nope'"),
    ("--data.init_args.train.init_args.resolution=abc",
     "error: data.init_args.train.init_args.resolution: Expected a <class 'int'>"),
    ("--model.init_args.method.init_args.pose_style=openpose",  # the tiny data renders HumanSD
     "error: data.init_args.train.init_args.pose_style: 'humansd', but "
     "model.init_args.method.init_args.pose_style is 'openpose'"),
])
def test_bad_value_stops_before_anything_is_built(override, expected):
    assert cli_error(*TINY, override).startswith(expected)


def test_controlnet_at_sd_scale_rejects_humansd_renders():
    message = cli_error(*SD_CONTROLNET, "--data.init_args.val.init_args.pose_style=humansd")
    assert message == ("error: data.init_args.val.init_args.pose_style: 'humansd', but "
                       "model.init_args.method.init_args.pose_style is 'openpose'")


def test_missing_paths_named_before_anything_is_built(tmp_path):
    missing = str(tmp_path / "missing")
    message = cli_error(*compose("trainer/cpu", "base/tiny", "data/humanart",
                                 "method/tiny/grpose_skeleton"),
                        f"--data.init_args.train.init_args.root={missing}")
    assert message == f"error: data.init_args.train.init_args.root: {missing!r} does not exist"
    message = cli_error(*SD_CONTROLNET, f"--model.init_args.unet.init_args.path={missing}")
    assert message == f"error: model.init_args.unet.init_args.path: {missing!r} does not exist"


@pytest.mark.parametrize("override, expected", [
    ("--data.init_args.train.init_args.resolution=62",
     "error: data.init_args.train.init_args.resolution: 62 is not a multiple of the VAE's "
     "downsampling factor 4"),
    ("--model.init_args.training.on_nonfinite=sometimes",  # what a constructor rejects
     "error: training.on_nonfinite must be one of ('raise', 'skip'), got 'sometimes'"),
])
def test_bad_value_found_by_the_parts_stops_before_training(tmp_path, override, expected):
    assert cli_error(*TINY, override, f"--trainer.default_root_dir={tmp_path}") == expected


def test_a_setting_given_flat_names_its_group(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  init_args:\n    lr: 1.0e-4\n")
    flat = "model (class_path 'grpose.diffusion.PoseDiffusionModule'): Option '{}' is not accepted"
    assert cli_error(*TINY, "--config", str(old)) == (
        f"error: {old}: {flat.format('lr')}: it is model.init_args.training.lr now")
    assert cli_error(*TINY, "--model.init_args.gradient_checkpointing=true") == (
        f"error: command line: {flat.format('gradient_checkpointing')}: it is "
        "model.init_args.memory.gradient_checkpointing now")


def test_module_checks_its_data_in_setup(tmp_path, tiny_parts):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    model = PoseDiffusionModule(unet, vae, text, ControlNet((8, 16, 32), pose_style="openpose"),
                                noise_scheduler())
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="resolution: 62 is not a multiple"):
        trainer.fit(model, PoseDataModule(train=SyntheticPoseDataset(4, resolution=62)))
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match="expects 'openpose' renders"):
        model.check_data(PoseDataModule(train=SyntheticPoseDataset(4, resolution=64)))
    model.check_data(PoseDataModule(train=SyntheticPoseDataset(4, pose_style="openpose")))


def test_an_abbreviated_option_is_refused():
    """argparse would read `--trainer.max_step` as `--trainer.max_steps`: a typo must not pass."""
    assert cli_error(*TINY, "--trainer.max_step=3") == (
        "error: unrecognized arguments: --trainer.max_step=3")


@pytest.mark.parametrize("form", ["=", " "])
def test_a_method_chosen_by_its_registry_name(capsys, form):
    base = compose("trainer/cpu", "base/tiny", "data/synthetic_tiny")
    choice = (["--model.init_args.method=controlnet"] if form == "=" else
              ["--model.init_args.method", "controlnet"])
    with pytest.raises(SystemExit) as e:
        main(["fit", *base, *choice, "--print_config"])
    assert e.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["method"]["class_path"] == "grpose.methods.ControlNet"
