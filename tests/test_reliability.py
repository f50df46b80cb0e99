"""Non-finite losses (raise / skip), corrupt checkpoints, DDP on 2 CPU processes == 1 process."""
import copy
import os
from datetime import timedelta

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler

from grpose.cli import main
from grpose.data import PoseDataModule, SyntheticPoseDataset, collate_pose_samples
from grpose.diffusion import PoseDiffusionModule, TrainingSettings
from grpose.diffusion.components import noise_scheduler
from grpose.diffusion.losses import LossTerm
from grpose.methods import ControlNet

BAD = 5  # the item index that goes non-finite


class OrderedData(PoseDataModule):
    """Training batches in dataset order, item i to process i % world size: one process with
    batch B sees at each step the items that 2 processes with B / 2 see together. (Lightning's
    own distributed sampler always shuffles.)"""

    def train_dataloader(self):
        dataset = self.datasets["train"]
        sampler = DistributedSampler(dataset, self.trainer.world_size, self.trainer.global_rank,
                                     shuffle=False)
        return DataLoader(dataset, self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=collate_pose_samples)


class NanForItem(LossTerm):
    """NaN whenever the batch holds item `BAD`."""

    def forward(self, step):
        bad = any(m["index"] == BAD for m in step.batch.meta)
        return step.eps_pred.sum() * 0 + (float("nan") if bad else 0.0), {}


class NanImageData(SyntheticPoseDataset):
    def __getitem__(self, index):
        sample = super().__getitem__(index)
        if index == BAD:
            sample.image = torch.full_like(sample.image, float("nan"))
        return sample


class SGDModule(PoseDiffusionModule):
    """Plain SGD: an update linear in the gradient. (AdamW's first steps are about lr * sign(g),
    so where a gradient is near float noise, e.g. ~1e-8 in some zero-conv channels, its sign and
    the update are noise too: 6e-5 = 0.06 lr apart after one step, measured.)"""

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], self.training_settings.lr)


def make_module(tiny_parts, cls=PoseDiffusionModule, losses=None, **training):
    """A tiny ControlNet model; `training`: `TrainingSettings` fields (lr 1e-3 unless given)."""
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    return cls(unet, vae, text, ControlNet((8, 16, 32)), noise_scheduler(), losses=losses,
               training=TrainingSettings(**{"lr": 1e-3, **training}))


def fit(model, dataset, batch_size, root, callbacks=(), **kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=root, callbacks=list(callbacks),
                        use_distributed_sampler=False, **kwargs)
    trainer.fit(model, OrderedData(train=dataset, batch_size=batch_size))
    return trainer


# -- non-finite losses ----------------------------------------------------------------------------
def test_nonfinite_loss_raises_naming_step_term_and_items(tmp_path, tiny_parts):
    model = make_module(tiny_parts, losses=[NanForItem()])
    with pytest.raises(FloatingPointError) as e:
        fit(model, SyntheticPoseDataset(8, resolution=64), 2, tmp_path, max_steps=3)
    message = str(e.value)
    assert "non-finite loss at step 2" in message  # batches [0, 1], [2, 3], [4, 5]
    assert "losses[0] (NanForItem) = nan" in message
    assert "['training_000004', 'training_000005']" in message
    assert "loss (PoseWeightedMSE)" not in message  # the main term stayed finite


class WeightsAtBatch(L.Callback):
    """The method's weights before and after training batch `batch_idx`."""

    def __init__(self, batch_idx: int):
        self.batch_idx, self.before, self.after = batch_idx, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.before = copy.deepcopy(module.method.state_dict())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            self.after = copy.deepcopy(module.method.state_dict())


def test_nonfinite_batch_skipped_without_optimizer_step(tmp_path, tiny_parts, caplog):
    model = make_module(tiny_parts, on_nonfinite="skip")
    watch = WeightsAtBatch(2)
    trainer = fit(model, NanImageData(8, resolution=64), 2, tmp_path, callbacks=[watch],
                  max_steps=3)
    assert model.skipped_nonfinite == 1
    assert trainer.callback_metrics["train/skipped_nonfinite"] == 1
    assert "non-finite images in ['training_000005']" in caplog.text
    assert all(torch.equal(watch.before[k], watch.after[k]) for k in watch.before)
    assert all(torch.isfinite(v).all() for v in model.method.state_dict().values())
    # 3 batches ran (the skipped one counts as a step); AdamW stepped on the 2 finite ones only
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {2} and trainer.global_step == 3


# -- checkpoints ----------------------------------------------------------------------------------
TINY = [a for n in ("trainer/cpu", "base/tiny", "data/synthetic_tiny", "method/tiny/controlnet")
        for a in ("--config", f"configs/{n}.yaml")]


def cli_fit(root, *extra):
    return main(["fit", *TINY, f"--trainer.default_root_dir={root}", "--trainer.logger=false",
                 "--trainer.max_steps=1", "--trainer.val_check_interval=1",
                 "--trainer.limit_val_batches=1", "--data.init_args.batch_size=2",
                 "--data.init_args.train.init_args.num_samples=4",
                 "--data.init_args.val.init_args.num_samples=2",
                 "--model.init_args.sampling.num_inference_steps=2", *extra])


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    """last.ckpt of a one-step tiny ControlNet fit through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    cli_fit(root)
    path = os.path.join(root, "checkpoints", "last.ckpt")
    assert os.path.isfile(path)
    return path


def test_cli_checkpoint_loads_weights_only(cli_checkpoint):
    checkpoint = torch.load(cli_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["method"]["class_path"] == "grpose.methods.ControlNet"
    assert checkpoint["skipped_nonfinite"] == 0
    reloaded = PoseDiffusionModule.load_from_checkpoint(cli_checkpoint)  # weights-only
    for k, v in checkpoint["state_dict"].items():
        assert torch.equal(reloaded.state_dict()[k], v)


def damaged(path, out, how: str) -> str:
    data = bytearray(open(path, "rb").read())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":  # bits inside the weights: only the zip checksums notice
        middle = len(data) // 2
        data[middle: middle + 64] = bytes(b ^ 0xFF for b in data[middle: middle + 64])
    else:
        data = bytearray(b"not a checkpoint\n" * 8)
    with open(out, "wb") as f:
        f.write(data)
    return str(out)


@pytest.mark.parametrize("how, problem", [("truncated", "not a torch.save zip archive"),
                                          ("flipped", "corrupt"),
                                          ("text", "not a torch.save zip archive")])
def test_damaged_checkpoint_named_with_its_problem(cli_checkpoint, tmp_path, how, problem):
    bad = damaged(cli_checkpoint, tmp_path / f"{how}.ckpt", how)
    with pytest.raises(ValueError, match=problem) as e:
        PoseDiffusionModule.load_from_checkpoint(bad)
    assert bad in str(e.value)


def test_damaged_ckpt_path_stops_the_cli_in_one_line(cli_checkpoint, tmp_path):
    bad = damaged(cli_checkpoint, tmp_path / "last.ckpt", "truncated")
    with pytest.raises(SystemExit) as e:
        cli_fit(tmp_path, f"--ckpt_path={bad}")
    message = str(e.value.code)
    assert message.startswith(f"error: ckpt_path: checkpoint {bad}: not a torch.save zip")
    assert "\n" not in message


class Payload:
    """Any class a weights-only load must refuse to rebuild."""


def test_checkpoint_with_code_is_refused(tmp_path):
    path = str(tmp_path / "unsafe.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, path)
    with pytest.raises(ValueError, match="weights_only=True.*Unsupported global.*Payload"):
        PoseDiffusionModule.load_from_checkpoint(path)


# -- DDP ------------------------------------------------------------------------------------------
@pytest.mark.slow  # ~70 s of CPU (3 processes start and import everything), > 2 min loaded
def test_ddp_two_processes_equal_one_and_skip_together(tmp_path, tiny_parts):
    """2 gloo processes with batch 2 each == 1 process with batch 4: the same items per step,
    each with its own noise / timestep / VAE sample, gradients averaged by DDP. Item BAD makes
    only process 1's second batch non-finite; both processes skip it (if they disagreed, DDP
    would wait forever: the 60 s gloo timeout turns that into an error)."""
    single = make_module(tiny_parts, SGDModule, lr=1.0, on_nonfinite="skip")
    ddp = copy.deepcopy(single)
    before = copy.deepcopy(single.method.state_dict())
    data = NanImageData(12, resolution=64)
    one = fit(single, data, 4, tmp_path, max_steps=3, devices=1)
    two = fit(ddp, data, 2, tmp_path, max_steps=3, devices=2,
              strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)))
    assert one.callback_metrics["train/skipped_nonfinite"] == 1
    assert two.callback_metrics["train/skipped_nonfinite"] == 1  # rank 0 skipped rank 1's NaN
    a, b = single.method.state_dict(), ddp.method.state_dict()
    change = max((a[k] - before[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert change > 0.1  # measured 0.23
    # Float sums in another order (batch 4 vs 2 + gloo's average): gradients agree to ~1e-7 of
    # their size, so weights of size ~1 agree to a few float32 ulp (1.2e-7): measured 1.2e-7.
    assert diff < 1e-6, diff
