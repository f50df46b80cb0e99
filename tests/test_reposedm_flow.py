"""RePoseDM's flow has a learning signal: it starts from the keypoints' flow (`limb_flow` on the
latent grid, off where the pose or the source is off), `FlowSupervision` reaches the recurrent
block and lowers the joint error when trained, refuses methods without flows, and the training
step logs the flow and the method's own scalars."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from grpose.data import SyntheticPoseDataset
from grpose.data.limb_warp import limb_flow
from grpose.data.pairs import PairSample, collate_pair_samples
from grpose.diffusion import PoseDiffusionModule, TrainingSettings
from grpose.diffusion.components import noise_scheduler
from grpose.diffusion.losses import FlowSupervision
from grpose.methods import method_from_config
from grpose.methods.transfer.alignment import warp


def pair_samples(n: int = 3) -> list[PairSample]:
    ds = SyntheticPoseDataset(2 * n, seed=0, split="val", resolution=64)
    out = []
    for i in range(n):
        s, t = ds[i], ds[i + n]
        out.append(PairSample(s.image, s.pose_image, s.keypoints, t.image, t.pose_image,
                              t.keypoints, t.caption, {"id": f"pair{i}", "index": i}))
    return out


@pytest.fixture
def pair_batch():
    return collate_pair_samples(pair_samples())


def module(tiny_parts, name: str, **kwargs) -> PoseDiffusionModule:
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)
    method = method_from_config(f"configs/method/tiny/transfer_{name}.yaml")
    return PoseDiffusionModule(unet, vae, text, method, noise_scheduler(),
                               training=TrainingSettings(lr=2e-3), **kwargs)


def test_the_flow_starts_from_the_keypoints(tiny_parts, pair_batch):
    m = module(tiny_parts, "reposedm")
    cond = m.condition(pair_batch)
    cond = cond.with_active(torch.tensor([True, False, True]))
    cond = cond.with_source_active(torch.tensor([True, True, False]))
    with torch.no_grad():
        a = m.method.flows(cond)
    want, coverage = limb_flow(pair_batch.source_keypoints, pair_batch.keypoints, (16, 16),
                               (64, 64), m.method.limb_width)
    assert want[0].abs().max() > 0.05  # the poses differ by several cells
    torch.testing.assert_close(a.keypoint_flow[0], want[0])
    torch.testing.assert_close(a.coverage[0], coverage[0])
    assert a.keypoint_flow[1:].abs().max() == 0  # pose off / source off: no keypoint flow
    assert len(a.flows) == 3 and all(torch.equal(f, a.keypoint_flow) for f in a.flows)
    with torch.no_grad():  # on item 0, the keypoint flow aligns the joints far better than none
        def joint_error(flow):
            return (warp(a.source_maps[:1], flow[:1]) - a.target_maps[:1]).square().mean()
        assert joint_error(a.keypoint_flow) < 0.5 * joint_error(torch.zeros_like(want))


def test_flow_supervision_trains_the_recurrent_block(tiny_parts, pair_batch):
    m = module(tiny_parts, "reposedm", losses=[FlowSupervision(gamma=0.8)])
    term = m.losses[0]
    m.train()
    _, logs, values = m.terms_step(pair_batch)
    assert {"flow/joint_error", "flow/mean_abs", "flow/keypoint_displacement"} <= set(logs)
    assert logs["flow/keypoint_displacement"] > 0.5  # latent cells
    torch.testing.assert_close(logs["flow/mean_abs"], logs["flow/keypoint_displacement"])
    values["losses[0] (FlowSupervision)"].backward()
    head = m.method.alignment.head[-1].weight
    assert head.grad is not None and head.grad.abs().sum() > 0  # the zero-init head learns
    opt = torch.optim.Adam(m.method.alignment.parameters(), lr=2e-3)
    cond = m.condition(pair_batch)
    errors = []
    for _ in range(30):
        opt.zero_grad()
        loss, logs = term(SimpleNamespace(method=m.method, cond=cond))  # what the term reads
        loss.backward()
        opt.step()
        errors.append(logs["flow/joint_error"].item())
    assert errors[-1] < 0.9 * errors[0], errors


def test_flow_supervision_needs_a_method_with_flows(tiny_parts, pair_batch):
    m = module(tiny_parts, "source_unaligned", losses=[FlowSupervision()])
    with pytest.raises(ValueError, match="flows.*SourceUnaligned"):
        m.terms_step(pair_batch)


@pytest.mark.parametrize("name, key", [("reposedm", "train/flow/mean_abs"),
                                       ("reference_attention", "train/method/gate")])
def test_the_training_step_logs_the_flow_and_the_method(tiny_parts, tmp_path, name, key):
    losses = [FlowSupervision()] if name == "reposedm" else None
    m = module(tiny_parts, name, losses=losses)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_steps=2,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(m, DataLoader(pair_samples(), batch_size=3, collate_fn=collate_pair_samples))
    assert key in trainer.callback_metrics
    if name == "reference_attention":
        assert trainer.callback_metrics[key] > 0  # opened after the first step
