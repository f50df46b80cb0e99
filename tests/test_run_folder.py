"""A run as a user meets it with the shipped `configs/trainer/cpu.yaml` (logger on): one folder,
`--ckpt_path last` continues it, Ctrl-C / SIGTERM save a checkpoint, a short run validates,
`predict` writes beside the run and refuses an untrained method."""
import glob
import os
import signal

import pytest
import torch
from lightning.pytorch import Callback

from grpose.callbacks import RunProgressBar
from grpose.cli import main

CONFIGS = [a for n in ("trainer/cpu", "base/tiny", "data/synthetic_tiny",
                       "method/tiny/grpose_skeleton") for a in ("--config", f"configs/{n}.yaml")]


def fit_args(root, *extra):
    """The user's command, with its folders in `root` and a small set (16 items, batch 2: 8
    batches an epoch, fewer than the config's validation interval of 100 steps)."""
    return ["fit", *CONFIGS, f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", "--data.init_args.batch_size=2",
            "--data.init_args.train.init_args.num_samples=16",
            "--data.init_args.val.init_args.num_samples=2", "--trainer.limit_val_batches=1",
            "--model.init_args.sampling.num_inference_steps=1", *extra]


class SignalAt(Callback):
    """Sends this process `signum` once step `step` is done (before the checkpoint callbacks)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def method_state(path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("method.")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    main(fit_args(root, "--trainer.max_steps=4"))
    return os.path.join(root, "tiny", "main", "checkpoints", "last.ckpt")


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    signal.SIGTERM])  # the same path; 4 fits each
def test_interrupt_saves_and_ckpt_path_last_resumes_in_the_same_folder(tmp_path, capsys,
                                                                       uninterrupted, signum):
    sigint = signal.getsignal(signal.SIGINT)
    stop = {"class_path": "test_run_folder.SignalAt", "init_args": {"step": 2, "signum": int(signum)}}
    try:
        with pytest.raises(SystemExit):  # Lightning's shutdown after the signal
            main(fit_args(tmp_path, "--trainer.max_steps=4", f"--trainer.callbacks+={stop}"))
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after a Ctrl-C
    run = tmp_path / "tiny" / "main"
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and saved["epoch"] == 0
    out = capsys.readouterr().out
    assert f"{signal.Signals(signum).name}: stopped at step 2; checkpoint {last}" in out

    with pytest.raises(SystemExit, match="holds the checkpoints of an earlier run"):
        main(fit_args(tmp_path, "--trainer.max_steps=4"))  # nothing overwritten by mistake
    resumed = main(fit_args(tmp_path, "--trainer.max_steps=4", "--ckpt_path", "last"))
    assert resumed.trainer.global_step == 4
    assert os.listdir(tmp_path / "tiny") == ["main"]  # one run, one folder
    assert len(glob.glob(str(run / "events.out.tfevents.*"))) == 2  # its logs continue there
    ours, reference = method_state(last), method_state(uninterrupted)
    assert ours.keys() == reference.keys() and ours
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_short_run_on_a_small_set_validates_and_its_checkpoint_stays_in_its_epoch(tmp_path):
    """max_steps 3 < the config's interval of 100 steps, 8 batches an epoch: one validation (it
    was none), no `val_check_interval` crash; the last checkpoint is mid-epoch 0 (it recorded
    epoch 1, so a longer resumed run skipped the rest of the epoch)."""
    cli = main(fit_args(tmp_path, "--trainer.max_steps=3"))
    assert "val/loss" in cli.trainer.callback_metrics
    saved = torch.load(tmp_path / "tiny/main/checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 3 and saved["epoch"] == 0
    bar = next(c for c in cli.trainer.callbacks if isinstance(c, RunProgressBar))
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.description.strip() == "Epoch 0, step"  # Lightning's: "Epoch 0/-2"
    assert (task.completed, task.total) == (3, 3)


def test_predict_writes_beside_the_run_and_refuses_an_untrained_method(tmp_path, capsys):
    predict = ["predict", *fit_args(tmp_path)[1:], "--trainer.limit_predict_batches=1",
               "--data.init_args.eval_batch_size=2"]
    with pytest.raises(SystemExit, match="ckpt_path: last: no checkpoint in"):
        main([*predict, "--ckpt_path=last"])
    with pytest.raises(SystemExit, match="untrained method .* --allow_untrained"):
        main(predict)
    main(fit_args(tmp_path, "--trainer.max_steps=1"))
    run = tmp_path / "tiny" / "main"
    before = sorted(os.listdir(run))
    main([*predict, "--ckpt_path=last"])
    out = run / "predict" / "last"
    assert f"predict: 2 images written to {out}" in capsys.readouterr().out
    assert len(glob.glob(str(out / "*.png"))) == 3  # 2 images and their grid
    assert sorted(os.listdir(run)) == sorted(before + ["predict"])  # the logs untouched
    assert os.listdir(tmp_path / "tiny") == ["main"]
    main([*predict, "--allow_untrained=true", f"--predict_writer.out_dir={tmp_path}/untrained"])
    assert len(glob.glob(str(tmp_path / "untrained" / "*.png"))) == 3


def test_run_names_another_folder(tmp_path):
    main(fit_args(tmp_path, "--trainer.max_steps=1"))
    cli = main(fit_args(tmp_path, "--trainer.max_steps=1", "--run", "second"))
    assert cli.trainer.log_dir == str(tmp_path / "tiny" / "second")
    assert sorted(os.listdir(tmp_path / "tiny")) == ["main", "second"]


def printed_config(capsys, args) -> str:
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    return capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["method: controlnet",
                                      "method: {class_path: controlnet, init_args: {}}"])
def test_registry_names_inside_a_yaml(tmp_path, capsys, spelling):
    extra = tmp_path / "mine.yaml"
    extra.write_text(f"model:\n  init_args:\n    {spelling}\n")
    printed = printed_config(capsys, [*CONFIGS, "--config", str(extra)])
    assert "class_path: grpose.methods.ControlNet" in printed  # was "Expected a path"


def test_a_yaml_typo_names_its_file(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_stepz: 3\n")
    with pytest.raises(SystemExit, match=f"^error: {typo}: .*max_stepz"):
        main(["fit", *CONFIGS, "--config", str(typo)])
    with pytest.raises(SystemExit, match="^error: unrecognized arguments: --trainer.max_stepz=3"):
        main(["fit", *CONFIGS, "--trainer.max_stepz=3"])
