"""The top-down estimator: RMPG placement, supervised part-group sub-nodes, training checkpoint,
`PoseDetector` use (`make eval`), the perception loss's gradient path, mmpose key mapping."""
from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml

from grpose.data import PoseDataModule, SyntheticPoseDataset
from grpose.data.batch import collate_pose_samples
from grpose.pose import RMPG, PoseDetector, PoseEstimatorModule, PoseNetwork
from grpose.pose.topdown import (SyntheticPersonDataset, TopDownDetector, TopDownModule,
                                 TopDownPoseNet, group_targets, heatmap_targets, keypoint_boxes,
                                 load_mmpose_checkpoint, map_mmpose_keys)
from grpose.pose.topdown.network import resize_to

TINY = dict(backbone="resnet18", input_size=(32, 32), deconv_channels=(16, 16),
            backbone_kwargs={"channels": [8, 8, 16, 16], "stem_width": 8, "output_stride": 16})


def tiny(**kwargs) -> TopDownPoseNet:
    torch.manual_seed(0)
    return TopDownPoseNet(**TINY, **kwargs)


def test_rmpg_collects_its_sub_nodes_and_keeps_its_output():
    rmpg = RMPG(16, (2, 2)).eval()
    x = torch.randn(2, 16, 4, 4)
    nodes = {}
    assert torch.equal(rmpg(x, collect=nodes), rmpg(x))
    assert rmpg.node_paths(2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert set(nodes) == {(), (0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)}
    assert nodes[(1, 0)].shape == (2, 4, 4, 4) and nodes[(1,)].shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="no level 3"):
        rmpg.node_paths(3)


def test_rmpg_starts_as_the_identity_so_the_variants_share_the_baseline():
    base = tiny().eval()
    with_rmpg = tiny(rmpg_positions=[0, 1, 2], supervised=[2]).eval()
    missing, unexpected = with_rmpg.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("rmpg.", "aux_heads.")) for k in missing)
    crops = torch.randn(2, 3, 32, 32)
    out = with_rmpg(crops)
    torch.testing.assert_close(out["heatmaps"], base(crops)["heatmaps"])
    assert out["heatmaps"].shape == (2, 17, 8, 8) and base(crops)["aux"] == {}
    assert {k: tuple(v.shape) for k, v in out["aux"].items()} == {
        "2/head": (2, 5, 8, 8), "2/arms": (2, 6, 8, 8), "2/torso": (2, 4, 8, 8),
        "2/legs": (2, 6, 8, 8)}


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="not divisible"):
        TopDownPoseNet(**{**TINY, "input_size": (30, 32)})
    with pytest.raises(ValueError, match="4 nodes, but 2 part groups"):
        tiny(rmpg_positions=[1], supervised=[1], part_groups={"up": (0,), "down": (15,)})
    with pytest.raises(ValueError, match="supervised among them"):
        tiny(rmpg_positions=[1], supervised=[2])


def test_supervised_sub_nodes_learn_their_part_groups_targets():
    groups = {"upper": (0, 5), "lower": (11,)}
    net = tiny(rmpg_positions=[2], supervised=[2], rmpg_splits=[2], aux_level=1,
               part_groups=groups)
    module = TopDownModule(net, aux_weight=0.5)
    kp = torch.full((1, 17, 3), -1.0)
    kp[..., 2] = 0
    kp[0, 0], kp[0, 5], kp[0, 11] = torch.tensor([[9.5, 5.5, 1], [13.5, 9.5, 1], [17.5, 21.5, 1]])
    out = net(torch.randn(1, 3, 32, 32))
    terms = module.losses(out, kp, (32, 32))
    # the targets by hand: joint 0 at grid (2, 1), joint 5 at (3, 2), joint 11 at (4, 5)
    peaks = torch.zeros(1, 17, 8, 8)
    peaks[0, 0, 1, 2] = peaks[0, 5, 2, 3] = peaks[0, 11, 5, 4] = 1.0
    target, weights = heatmap_targets(kp, (8, 8), (4.0, 4.0))
    assert torch.equal(target == 1.0, peaks == 1.0)
    upper = target[:, [0, 5]]
    expected = (((out["aux"]["2/upper"] - upper) ** 2).mean((-2, -1)).mean() +
                ((out["aux"]["2/lower"] - target[:, [11]]) ** 2).mean((-2, -1)).mean()) / 2
    torch.testing.assert_close(terms["aux"], expected)
    assert group_targets(target, weights, groups)["upper"][1].tolist() == [[1.0, 1.0]]
    (terms["heatmap"] + 0.5 * terms["aux"]).backward()
    assert net.aux_heads["2/upper"].weight.grad.abs().sum() > 0
    assert resize_to(out["heatmaps"], (4, 4)).shape == (1, 17, 4, 4)


def fit_tiny(tmp_path, **kwargs) -> str:
    module = TopDownModule(tiny(**kwargs), warmup_steps=1)
    data = SyntheticPersonDataset(4, seed=1, resolution=48, input_size=(32, 32))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, PoseDataModule(train=data, batch_size=2))
    path = str(tmp_path / "topdown.ckpt")
    trainer.save_checkpoint(path)
    return path


class Boxes(PoseDetector):
    """A person detector that finds the people it is given (their boxes come from them)."""

    def __init__(self, people: list[torch.Tensor]):
        self.people = people

    def __call__(self, images):
        return [{"keypoints": p, "scores": torch.ones(len(p))} for p in self.people]


def test_checkpoint_serves_as_detector_with_given_or_detected_boxes(tmp_path):
    path = fit_tiny(tmp_path, rmpg_positions=[1], supervised=[1])
    batch = collate_pose_samples([SyntheticPoseDataset(2, seed=0, split="val",
                                                       resolution=48)[i] for i in range(2)])
    people = [batch.people(i) for i in range(2)]
    detector = TopDownDetector(checkpoint=path)
    found = detector(batch.image, [keypoint_boxes(p) for p in people])
    assert [tuple(f["keypoints"].shape) for f in found] == [(len(p), 17, 3) for p in people]
    via_detector = TopDownDetector(checkpoint=path, person_detector=Boxes(people))(batch.image)
    torch.testing.assert_close(via_detector[0]["keypoints"], found[0]["keypoints"])
    with pytest.raises(ValueError, match="needs person boxes"):
        detector(batch.image)
    empty = detector(batch.image, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert empty[1]["keypoints"].shape == (0, 17, 3)


def test_make_eval_runs_it_from_its_config(tmp_path):
    from tools.commands.evaluate import cli
    topdown = fit_tiny(tmp_path)
    bottom_up = str(tmp_path / "bottom_up.ckpt")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(PoseEstimatorModule(PoseNetwork(), warmup_steps=1), PoseDataModule(
        train=SyntheticPoseDataset(2, seed=1, resolution=48), batch_size=2))
    trainer.save_checkpoint(bottom_up)
    config = yaml.safe_load(open("configs/eval/demo_topdown.yaml"))
    config["detector"]["init_args"]["checkpoint"] = topdown
    config["detector"]["init_args"]["person_detector"]["init_args"]["checkpoint"] = bottom_up
    config["data"] = {"class_path": "grpose.data.SyntheticPoseDataset",
                      "init_args": {"num_samples": 3, "seed": 3, "split": "val",
                                    "resolution": 48}}
    config.pop("features")
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    gen = tmp_path / "gen"
    gen.mkdir()
    from PIL import Image
    from grpose.callbacks.images import to_uint8
    data = SyntheticPoseDataset(3, seed=3, split="val", resolution=48)
    for i in range(3):
        Image.fromarray(to_uint8(data[i].image[None])[0]).save(gen / f"{data[i].meta['id']}.png")
    res = cli(["--config", str(path), "--images", str(gen), f"--out={tmp_path / 'out'}"])
    assert res["num_images"] == 3 and "ap" in res["all"]


def test_perception_loss_loads_it_and_its_gradient_reaches_the_image(tmp_path):
    from grpose.diffusion.losses import PosePerceptionLoss
    loss = PosePerceptionLoss(checkpoint=fit_tiny(tmp_path, rmpg_positions=[2]))
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    pred = loss.network(images * 2 - 1)
    sum((pred[k] ** 2).mean() for k in loss.keys).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.network.parameters())
    images.grad = None  # the detector's crops are differentiable too (grid_sample)
    boxes = [torch.tensor([[4.0, 2.0, 20.0, 30.0]])] * 2
    found = TopDownDetector(network=loss.network, flip_test=False).estimate(images, boxes)
    found[0]["keypoints"][..., 2].sum().backward()  # the joints' heatmap maxima
    assert images.grad[0].abs().sum() > 0 and images.grad[1].abs().sum() == 0


def mmpose_layout(net: TopDownPoseNet, prefix: str) -> dict[str, torch.Tensor]:
    """A random state dict written with mmpose's names for `net`'s backbone and head."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith(("rmpg.", "aux_heads.")):
            continue
        name = k if k.startswith("backbone.") else prefix + k
        out[name] = torch.randint(0, 5, v.shape, generator=g) if not v.is_floating_point() \
            else torch.randn(v.shape, generator=g)
    return out


@pytest.mark.parametrize("prefix", ["keypoint_head.", "head."])
def test_mmpose_simplebaselines_keys_map_onto_the_network(tmp_path, prefix):
    net = tiny(rmpg_positions=[1])
    state = mmpose_layout(net, prefix)
    assert "backbone.layer1.0.conv1.weight" in state and f"{prefix}final_layer.bias" in state
    assert f"{prefix}deconv_layers.1.running_var" in state
    path = tmp_path / "simplebaselines.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 210}}, path)
    load_mmpose_checkpoint(net, str(path))
    own = net.state_dict()
    for k, v in state.items():
        assert torch.equal(own[k.replace(prefix, "", 1) if k.startswith(prefix) else k], v), k
    wider = TopDownPoseNet(**{**TINY, "deconv_channels": (32, 16)})
    with pytest.raises(ValueError, match="simplebaselines.pth: does not fit"):
        load_mmpose_checkpoint(wider, str(path))
    with pytest.raises(ValueError, match="not an mmpose SimpleBaselines"):
        map_mmpose_keys({"model.conv.weight": torch.zeros(1)})


def test_generation_metrics_give_a_top_down_detector_the_true_boxes():
    from grpose.data.batch import PoseBatch
    from grpose.metrics.suite import GenerationMetrics
    seen = {}

    class Boxes:
        takes_boxes = True

        def __call__(self, images, boxes=None):
            seen["boxes"] = boxes
            return [{"keypoints": torch.zeros(0, 17, 3), "scores": torch.zeros(0)}
                    for _ in images]
    kp = torch.tensor([[[10.0, 20.0, 1.0]] * 17])
    kp[0, 3] = torch.tensor([30.0, 40.0, 1.0])
    batch = PoseBatch(image=torch.zeros(1, 3, 64, 64), pose_image=torch.zeros(1, 3, 64, 64),
                      keypoints=kp[None], person_mask=torch.ones(1, 1, dtype=torch.bool),
                      captions=[""], meta=[{"index": 0}])
    metrics = GenerationMetrics(Boxes())
    metrics.update(torch.zeros(1, 3, 64, 64), batch)
    assert torch.equal(seen["boxes"][0], torch.tensor([[10.0, 20.0, 30.0, 40.0]]))
