"""The pose package: RMPG, target encoding/decoding, network, training module, detectors."""
import sys

import lightning as L
import numpy as np
import pytest
import torch

from grpose.data import PoseDataModule, SyntheticPoseDataset, collate_pose_samples
from grpose.data.skeletons import COCO17_SIGMAS
from grpose.pose import (RMPG, NetworkDetector, OnnxDetector, PoseEstimatorModule, PoseNetwork,
                         decode_people, encode_targets, match_people, oks)
from grpose.pose.decode import grid_to_pixel, pixel_to_grid
from grpose.pose.similarity import keypoint_areas
from grpose.pose.similarity import oks as numpy_oks

MAPS = ("centers", "heatmaps", "offsets", "refinements")


def synthetic_batch(n: int, res: int = 64, seed: int = 0, split: str = "val"):
    ds = SyntheticPoseDataset(n, seed=seed, split=split, resolution=res)
    return collate_pose_samples([ds[i] for i in range(n)])


# -- RMPG --------------------------------------------------------------------------------------
def test_rmpg_starts_as_identity_and_switches_off():
    x = torch.randn(2, 32, 6, 5)
    assert torch.equal(RMPG(32, [2, 2])(x), x)  # zero-initialised residual
    off = RMPG(32, [2, 2], enabled=False)
    assert torch.equal(off(x), x) and not list(off.parameters())
    with pytest.raises(ValueError):
        RMPG(30, [2, 2])


def test_rmpg_relates_children_and_zeroed_residual_is_identity():
    rmpg = RMPG(32, [2, 2]).eval()
    torch.nn.init.normal_(rmpg.out.weight, std=0.1)
    x = torch.randn(2, 32, 6, 5)
    y = rmpg(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # Changing one leaf's channels (0:8) changes every other leaf through the context relations.
    x2 = x.clone()
    x2[:, 0:8] += torch.randn_like(x2[:, 0:8])
    delta = (rmpg(x2) - y).abs()
    for leaf in range(1, 4):
        assert delta[:, 8 * leaf:8 * (leaf + 1)].max() > 1e-3, leaf
    torch.nn.init.zeros_(rmpg.out.weight)
    assert torch.equal(rmpg(x), x)


# -- targets and decoding ----------------------------------------------------------------------
def test_pixel_grid_round_trip_and_cell_centres():
    stride = (4.0, 4.0)
    assert torch.allclose(pixel_to_grid(torch.tensor([1.5, 5.5]), stride), torch.tensor([0.0, 1.0]))
    p = torch.rand(10, 2) * 64 - 0.5
    assert torch.allclose(grid_to_pixel(pixel_to_grid(p, stride), stride), p, atol=1e-5)


def test_targets_of_one_person():
    kp = torch.tensor([-1.0, -1.0, 0.0]).repeat(1, 1, 17, 1)
    kp[0, 0, 0] = torch.tensor([9.5, 13.5, 1.0])  # grid (2, 3)
    kp[0, 0, 9] = torch.tensor([17.5, 5.5, 1.0])  # grid (4, 1)
    # box centre: pixel (13.5, 9.5) = grid (3, 2)
    t = encode_targets(kp, torch.ones(1, 1, dtype=torch.bool), (8, 8), (4.0, 4.0))
    assert t["centers"][0, 0, 2, 3] == 1 and (t["centers"] == 1).sum() == 1
    assert torch.isclose(t["centers"][0, 0, 2, 4], torch.exp(torch.tensor(-0.5)))  # sigma 1 cell
    assert t["heatmaps"][0, 0, 3, 2] == 1 and t["heatmaps"][0, 9, 1, 4] == 1
    assert t["heatmaps"][0, 5].max() == 0  # missing joint: no peak
    assert torch.equal(t["offsets"][0, 0, :, 2, 3], torch.tensor([-1.0, 1.0]))
    assert torch.equal(t["offsets"][0, 9, :, 1, 2], torch.tensor([2.0, 0.0]))  # a neighbour cell
    assert t["offset_mask"][0, 0].sum() == 9 and t["offset_mask"][0, 5].sum() == 0
    assert t["refine_mask"].sum() == 2


def test_targets_keep_border_joints_on_the_grid():
    kp = torch.tensor([-1.0, -1.0, 0.0]).repeat(1, 1, 17, 1)
    kp[0, 0, 0] = torch.tensor([31.6, -0.6, 1.0])  # just outside a 32 x 32 image
    t = encode_targets(kp, torch.ones(1, 1, dtype=torch.bool), (8, 8), (4.0, 4.0))
    assert t["heatmaps"][0, 0, 0, 7] == 1 and t["refine_mask"][0, 0, 0, 7]


@pytest.mark.parametrize("res", [64, 96])
def test_encode_then_decode_recovers_synthetic_people(res):
    batch = synthetic_batch(48, res, seed=1)
    h = res // 4
    targets = encode_targets(batch.keypoints, batch.person_mask, (h, h), (4.0, 4.0))
    found = decode_people({k: targets[k] for k in MAPS}, (res, res))
    for i, f in enumerate(found):
        gt = batch.people(i)
        assert len(f["keypoints"]) == len(gt) and torch.all(f["scores"] == 1)
        sim = oks(f["keypoints"], gt)  # (P, P)
        assert torch.all(sim.amax(0) > 0.9999)
        for g, p in enumerate(sim.argmax(0).tolist()):
            vis = gt[g, :, 2] > 0
            assert torch.allclose(f["keypoints"][p, vis, :2], gt[g, vis, :2], atol=1e-4)
            assert torch.all(f["keypoints"][p, vis, 2] == 1)
            assert torch.all(f["keypoints"][p, ~vis, 2] < 0.1)


def test_decode_finds_nobody_on_empty_maps():
    out = {"centers": torch.zeros(2, 1, 8, 8), "heatmaps": torch.zeros(2, 17, 8, 8),
           "offsets": torch.zeros(2, 17, 2, 8, 8), "refinements": torch.zeros(2, 17, 2, 8, 8)}
    found = decode_people(out, (32, 32))
    assert [f["keypoints"].shape for f in found] == [(0, 17, 3)] * 2


def test_oks_and_matching():
    gt = synthetic_batch(1, 64, seed=3).people(0)
    moved = gt.clone()
    moved[..., :2] += 3.0
    assert torch.allclose(oks(gt, gt).diagonal(), torch.ones(len(gt)))
    assert torch.all(oks(moved, gt).diagonal() < 1)
    both = torch.cat([moved, gt])  # the exact copies score lower but match first by score
    scores = torch.cat([torch.zeros(len(gt)), torch.ones(len(gt))])
    assert torch.allclose(match_people(both, scores, gt), torch.ones(len(gt)))
    assert torch.equal(match_people(gt[:0], torch.zeros(0), gt), torch.zeros(len(gt)))


def test_torch_oks_agrees_with_the_numpy_oks():
    g = torch.Generator().manual_seed(0)
    gt = torch.cat([torch.rand(6, 17, 2, generator=g) * 60, torch.rand(6, 17, 1, generator=g)], -1)
    gt[..., 2] = (gt[..., 2] > 0.3).float()  # some joints invisible
    gt[0, 1:, 2] = 0  # one visible joint: box area 0, clamped to 1
    pred = gt[torch.randint(0, 6, (5,), generator=g)].clone()
    pred[..., :2] += torch.randn(5, 17, 2, generator=g) * 3
    g_np = gt.double().numpy()[None]  # (1, G, 17, 3)
    visible = g_np[..., 2] > 0
    area = np.maximum(keypoint_areas(g_np, visible), 1.0)  # the torch wrapper's area rule
    want = numpy_oks(pred.double().numpy()[None, ..., :2], g_np, visible, area, COCO17_SIGMAS)
    assert torch.allclose(oks(pred, gt).double(), torch.from_numpy(want[0]), rtol=1e-6, atol=1e-7)


# -- network and training ----------------------------------------------------------------------
def test_network_outputs_are_differentiable_tensors():
    net = PoseNetwork()
    assert 0.5e6 < sum(p.numel() for p in net.parameters()) < 2e6
    images = (torch.rand(2, 3, 64, 48) * 2 - 1).requires_grad_()
    out = net(images)
    assert out["features"].shape == (2, 64, 16, 12) and out["heatmaps"].shape == (2, 17, 16, 12)
    assert out["offsets"].shape == out["refinements"].shape == (2, 17, 2, 16, 12)
    assert 0 < out["heatmaps"].min() and out["heatmaps"].max() < 1
    out["heatmaps"].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("use_rmpg", [True, False])
def test_loss_decreases_on_a_fixed_batch(use_rmpg, one_thread):
    batch = synthetic_batch(8, 64, seed=2, split="train")
    module = PoseEstimatorModule(PoseNetwork(use_rmpg=use_rmpg))
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss, terms, _ = module.step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(terms) == {"center", "heatmap", "offset", "refine"}
    assert sum(losses[-3:]) / 3 < 0.4 * losses[0], losses  # measured: about 0.18


def _fit_tiny(tmp_path, steps: int = 2) -> tuple[PoseEstimatorModule, L.Trainer]:
    module = PoseEstimatorModule(PoseNetwork(channels=32, head_channels=16), snap_radius=2.0)
    data = PoseDataModule(train=SyntheticPoseDataset(16, split="train", resolution=32),
                          val=SyntheticPoseDataset(4, split="val", resolution=32), batch_size=4)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data)
    return module, trainer


def test_checkpoint_round_trip_through_network_detector(tmp_path, one_thread):
    module, trainer = _fit_tiny(tmp_path)
    path = str(tmp_path / "pose.ckpt")
    trainer.save_checkpoint(path)
    metrics = trainer.validate(module, trainer.datamodule, verbose=False)[0]
    assert {"val/loss", "val/match_rate", "val/oks", "val/count_error"} <= set(metrics)
    detector = NetworkDetector(checkpoint=path, decode={"center_threshold": 0.0, "max_people": 3})
    assert detector.decode_options["snap_radius"] == 2.0  # from the checkpoint
    images = synthetic_batch(2, 32).image
    module.eval()
    with torch.no_grad():
        expected = decode_people(module(images), (32, 32), center_threshold=0.0, max_people=3,
                                 snap_radius=2.0)
    for got, want in zip(detector(images), expected):
        assert got["keypoints"].shape == (3, 17, 3)
        assert torch.allclose(got["keypoints"], want["keypoints"], atol=1e-5)
    with pytest.raises(ValueError):
        NetworkDetector()


def test_synthetic_config_runs_through_the_cli(tmp_path, one_thread):
    from grpose.cli import main
    main(["fit", "--config", "configs/pose/synthetic.yaml", "--trainer.fast_dev_run=1",
          f"--trainer.default_root_dir={tmp_path}", "--data.init_args.batch_size=4",
          "--data.init_args.eval_batch_size=4", "--model.network.init_args.use_rmpg=false"])


# -- ONNX --------------------------------------------------------------------------------------
def test_onnx_detector_explains_a_missing_onnxruntime(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        OnnxDetector(str(tmp_path / "model.onnx"))


class MapsAsTuple(torch.nn.Module):
    """The network's maps as a tuple: ONNX outputs are positional."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        out = self.net(images)
        return tuple(out[k] for k in MAPS)


def test_onnx_detector_matches_the_network(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    net = PoseNetwork().eval()
    images = synthetic_batch(2, 64).image
    path = str(tmp_path / "pose.onnx")
    torch.onnx.export(MapsAsTuple(net), (images,), path, input_names=["image"],
                      output_names=list(MAPS), dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    options = {"center_threshold": 0.0, "max_people": 2}
    got = OnnxDetector(path, decode=options)(images)
    want = NetworkDetector(net, decode=options)(images)
    for g, w in zip(got, want):
        assert torch.allclose(g["keypoints"], w["keypoints"], atol=1e-3)


class TwoPeople(torch.nn.Module):
    """People straight from the model: every coordinate is the image mean; scores 0.9 and 0.1."""

    def forward(self, images):
        b = images.shape[0]
        keypoints = images.mean(dim=(1, 2, 3))[:, None, None, None].expand(b, 2, 17, 3)
        return keypoints + 0, torch.tensor([0.9, 0.1]).expand(b, 2) + 0 * keypoints[:, :, 0, 0]


def test_onnx_detector_people_layout_and_input_range(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    path = str(tmp_path / "people.onnx")
    torch.onnx.export(TwoPeople(), (images,), path, input_names=["pixels"],
                      output_names=["kp", "score"], dynamic_axes={"pixels": {0: "batch"}},
                      dynamo=False)
    detector = OnnxDetector(path, layout="people", outputs={"keypoints": "kp", "scores": "score"},
                            input_range="zero_one", score_threshold=0.5)
    found = detector(images)
    for f, image in zip(found, images):
        assert f["keypoints"].shape == (1, 17, 3)
        assert torch.allclose(f["scores"], torch.tensor([0.9]))
        assert torch.allclose(f["keypoints"], ((image + 1) / 2).mean().expand(1, 17, 3), atol=1e-5)
    with pytest.raises(ValueError, match="no outputs named"):
        OnnxDetector(path, layout="people")


# -- end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_short_training_finds_people_in_held_out_images(tmp_path, one_thread):
    """250 steps at 64 px (about 1-2 minutes on one core), then detection on 200 unseen images.

    Measured: 94% of the held-out people are found at OKS >= 0.5 by this run (96-98% after 300
    steps over 4 seeds, with or without RMPG). The 80% bar leaves room for platform differences;
    an untrained network finds nobody (its centre maps start at 0.05, under the 0.3 threshold).
    """
    L.seed_everything(0)
    module = PoseEstimatorModule(PoseNetwork())
    train = SyntheticPoseDataset(10_000, seed=0, split="train", resolution=64, flip_p=0.5)
    trainer = L.Trainer(max_steps=250, accelerator="cpu", logger=False, default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, PoseDataModule(train=train, batch_size=32))
    held_out = synthetic_batch(200, 64, seed=7)
    found = NetworkDetector(module.network, decode=module.decode_options)(held_out.image)
    matched = torch.cat([match_people(f["keypoints"], f["scores"], held_out.people(i), 0.0)
                         for i, f in enumerate(found)])
    rate = (matched >= 0.5).float().mean().item()
    print(f"held-out people found at OKS >= 0.5: {rate:.3f}, mean OKS {matched.mean():.3f}")
    assert rate >= 0.8


def test_degrade_blurs_and_adds_noise_only_when_asked():
    from grpose.pose.module import degrade
    images = torch.zeros(4, 3, 16, 16)
    images[:, :, 8, 8] = 1.0  # one bright pixel per image
    assert torch.equal(degrade(images, 0.0, 1.5, 0.0), images)
    blurred = degrade(images, 1.0, 1.5, 0.0)
    assert (blurred[:, :, 8, 8] < 1.0).all() and (blurred[:, :, 8, 9] > 0).all()
    noisy = degrade(images, 0.0, 1.5, 0.2)
    assert not torch.equal(noisy, images) and noisy.abs().max() <= 1.0


def test_a_pose_checkpoint_naming_code_outside_grpose_is_refused(tmp_path):
    import torch

    from grpose.pose.detector import load_pose_checkpoint
    path = tmp_path / "bad.ckpt"
    torch.save({"hyper_parameters": {"network_config": {"class_path": "os.system",
                                                        "init_args": {}}},
                "state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a grpose class"):
        load_pose_checkpoint(str(path))
