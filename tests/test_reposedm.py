"""RePoseDM: the pose-manifold distance field, soft-argmax keypoints, the guidance hook, the CLI."""
import copy
import os

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from grpose.cli import main
from grpose.data import PoseCondition, SyntheticPoseDataset, collate_pose_samples
from grpose.diffusion import PoseDiffusionModule, SamplingSettings
from grpose.diffusion.components import noise_scheduler
from grpose.diffusion.guidance import ClassifierFreeGuidance, SamplingStep
from grpose.diffusion.reposedm import RePoseDMGuidance, soft_keypoints
from grpose.methods import NoPose
from grpose.pose.field import (KINDS, SWAPS, PoseField, PoseFieldModule, load_field_checkpoint,
                               perturb, scale_bone, swap_limbs)
from grpose.pose.module import PoseEstimatorModule
from grpose.pose.network import PoseNetwork

TINY = ("trainer/cpu", "base/tiny", "data/synthetic_tiny")


def compose(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--config", f"configs/{name}.yaml")]


def synthetic_people(num: int, split: str) -> torch.Tensor:
    ds = SyntheticPoseDataset(num, seed=0, split=split, resolution=64)
    return torch.cat([ds[i].keypoints for i in range(num)])  # (N, 17, 3)


# -- the field ---------------------------------------------------------------------------------
def test_perturbations_and_field_invariance(make_person):
    pose = torch.from_numpy(make_person(30, 10))[None]  # (1, 17, 3)
    swapped = swap_limbs(pose, 0)
    (l7, l9), (r8, r10) = SWAPS[0]
    assert torch.equal(swapped[0, [l7, l9]], pose[0, [r8, r10]])
    longer = scale_bone(pose, (7, 9), 2.0)  # the left forearm: only the wrist moves
    moved = (longer != pose).any(-1)[0]
    assert moved.nonzero().flatten().tolist() == [9]
    forearm = pose[0, 9, :2] - pose[0, 7, :2]
    torch.testing.assert_close(longer[0, 9, :2] - pose[0, 7, :2], 2 * forearm)
    assert scale_bone(pose, (5, 7), 2.0)[0, 9, 0] != pose[0, 9, 0]  # the subtree moves along
    hidden = pose.clone()
    hidden[0, 7] = torch.tensor([-1.0, -1.0, 0.0])
    assert torch.equal(scale_bone(hidden, (7, 9), 2.0), hidden)

    people = pose.repeat(400, 1, 1)
    out, distance, kind = perturb(people, generator=torch.Generator().manual_seed(0))
    assert set(kind.tolist()) == set(range(len(KINDS)))
    assert torch.equal(out[kind == 0], people[kind == 0]) and (distance[kind == 0] == 0).all()
    assert (distance[kind > 0] > 0).all()
    assert perturb(pose[:0])[1].shape == (0,)  # a batch without people

    field = PoseField(32, 2)
    shifted = pose.clone()
    shifted[..., :2] = pose[..., :2] * 3 + 7
    torch.testing.assert_close(field(shifted), field(pose))  # translation / scale invariant
    assert (field(out) >= 0).all()


def test_field_scores_valid_poses_below_broken_ones(tmp_path, one_thread):
    """A short in-process training; held-out (validation split) people."""
    torch.manual_seed(0)
    ds = SyntheticPoseDataset(320, seed=0, split="train", resolution=64, flip_p=0.5)
    samples = [ds[i] for i in range(len(ds))]
    batches = [collate_pose_samples(samples[k:k + 32]) for k in range(0, len(samples), 32)]
    module = PoseFieldModule(PoseField(128, 3), lr=2e-3, copies=8)
    trainer = L.Trainer(max_steps=600, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, DataLoader(batches, batch_size=None, shuffle=True))
    held_out = synthetic_people(150, "val")
    held_out = held_out[(held_out[:, 5:, 2] > 0).all(-1)]  # arms and legs seen: no no-op changes
    field = module.network.eval()
    with torch.no_grad():
        valid = field(held_out)
        broken = {"arms swapped": swap_limbs(held_out, 0),
                  "arms and legs swapped": swap_limbs(swap_limbs(held_out, 0), 1),
                  "forearm x3": scale_bone(held_out, (7, 9), 3.0),
                  "thigh x2": scale_bone(held_out, (12, 14), 2.0),
                  "shin x0.3": scale_bone(held_out, (13, 15), 0.3)}
        scores = {name: field(p) for name, p in broken.items()}
    assert len(held_out) > 100
    for name, score in scores.items():  # measured: valid 0.09, broken 0.13-1.3, 74-100 % above
        assert valid.mean() < score.mean(), (name, valid.mean(), score.mean())
        assert (valid < score).float().mean() > 0.6, name


def test_field_trains_and_reloads_through_the_cli(tmp_path):
    cli = main(["fit", "--config", "configs/pose/field_synthetic.yaml", "--trainer.max_steps=2",
                f"--trainer.default_root_dir={tmp_path}", "--data.init_args.batch_size=4",
                "--data.init_args.num_workers=0", "--data.init_args.val.init_args.num_samples=4",
                "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"])
    assert cli.trainer.global_step == 2
    assert {"val/loss", "val/clean_score"} <= set(cli.trainer.callback_metrics)
    field = load_field_checkpoint(os.path.join(cli.trainer.log_dir, "checkpoints", "last.ckpt"))
    poses = synthetic_people(4, "val")
    torch.testing.assert_close(field(poses), cli.model.network.eval()(poses))


# -- soft-argmax and the hook ------------------------------------------------------------------
def test_soft_keypoints_reads_each_persons_peak():
    heat = torch.full((1, 17, 16, 16), 1e-4)
    heat[0, :, 3, 4] = heat[0, :, 12, 10] = 0.99  # two people: cells (x, y) (4, 3), (10, 12)
    at = lambda x, y: torch.tensor([x, y, 1.0]).expand(17, 3)  # noqa: E731
    near = torch.stack([at(17.0, 14.0), at(42.0, 50.0)])[None]  # (1, 2, 17, 3) pixels, stride 4
    both = torch.ones(1, 2, dtype=torch.bool)
    p_hat = soft_keypoints(heat, near, both, (64, 64), temperature=0.25)
    torch.testing.assert_close(p_hat[0, 0, 0], torch.tensor([17.5, 13.5]), atol=0.1, rtol=0)
    torch.testing.assert_close(p_hat[0, 1, 0], torch.tensor([41.5, 49.5]), atol=0.1, rtol=0)
    alone = soft_keypoints(heat, near[:, :1], both[:, :1], (64, 64), temperature=0.25)
    torch.testing.assert_close(alone[0, 0, 0], torch.tensor([29.5, 31.5]), atol=0.1, rtol=0)


def hook(**kwargs) -> RePoseDMGuidance:
    torch.manual_seed(1)
    return RePoseDMGuidance(pose_network=PoseNetwork(channels=32, head_channels=16),
                            field=PoseField(32, 2), **kwargs)


def test_guidance_step_lowers_the_energy(tiny_parts, tiny_batch, one_thread):
    vae = tiny_parts[1]
    cond = PoseCondition.from_batch(tiny_batch, (16, 16))
    x_t = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
    a = torch.tensor(0.5)

    def decode(z):
        return vae.decode(z / 0.18215).sample

    def x0(eps):
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    eps = 0.3 * x_t  # any eps that depends on x_t
    guide = hook(scale=1e3, pose_weight=1.0)
    guided = guide(SamplingStep(x_t, torch.tensor(500), eps, x0(eps), a, 0, 2, cond, decode))
    with torch.no_grad():
        before = guide.energy(decode(x0(eps)).clamp(-1, 1), cond)
        after = guide.energy(decode(x0(guided)).clamp(-1, 1), cond)
    assert (after < before).all(), (before, after)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode: false"):
        guide(SamplingStep(x_t, torch.tensor(500), eps, x0(eps), a, 0, 2, cond, decode))
    with pytest.raises(ValueError, match="step.decode"):
        guide(SamplingStep(x_t, torch.tensor(500), eps, x0(eps), a, 0, 2, cond))


def test_zero_scale_leaves_the_sampler_unchanged_bit_for_bit(tiny_parts, tiny_batch, one_thread):
    unet, vae, text = (copy.deepcopy(p) for p in tiny_parts)

    def generate(hooks):
        model = PoseDiffusionModule(unet, vae, text, NoPose(), noise_scheduler(),
                                    guidance=ClassifierFreeGuidance(2.0), sampling_hooks=hooks,
                                    sampling=SamplingSettings(num_inference_steps=2))
        return model.generate(tiny_batch)
    plain = generate([])
    assert torch.equal(generate([hook(scale=0.0)]), plain)
    assert torch.equal(generate([hook(scale=1e3, start=0.6)]), plain)  # acts on no step of 2
    assert not torch.equal(generate([hook(scale=1e3, stop=0.5)]), plain)  # the first step only


def test_predict_with_guidance_through_the_cli(tmp_path, one_thread):
    for name, module in (("pose", PoseEstimatorModule(PoseNetwork(channels=32, head_channels=16))),
                         ("field", PoseFieldModule(PoseField(32, 2)))):  # what the loaders read
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
                   tmp_path / f"{name}.ckpt")
    with open("configs/guidance/tiny/reposedm.yaml") as f:
        config = yaml.safe_load(f)
    assert config["trainer"]["inference_mode"] is False
    args = config["model"]["init_args"]["sampling_hooks"][0]["init_args"]
    args.update(pose_checkpoint=str(tmp_path / "pose.ckpt"),
                field_checkpoint=str(tmp_path / "field.ckpt"))
    with open(tmp_path / "guidance.yaml", "w") as f:
        yaml.safe_dump(config, f)
    out = tmp_path / "pred"
    cli = main(["predict", *compose(*TINY), "--config", str(tmp_path / "guidance.yaml"),
                f"--predict_writer.out_dir={out}", f"--trainer.default_root_dir={tmp_path}",
                "--trainer.logger=false", "--data.init_args.eval_batch_size=2",
                "--data.init_args.val.init_args.num_samples=2",
                "--model.init_args.sampling.num_inference_steps=2"])
    assert isinstance(cli.model.sampling_hooks[0], RePoseDMGuidance)
    assert sorted(os.listdir(out)) == ["config.yaml", "grid_0_00000.png",  # + what made them
                                       "validation_000000.png", "validation_000001.png"]


@pytest.mark.parametrize("scale", ["sd15", "tiny"])
def test_guidance_config_composes_on_a_method(capsys, scale):
    sd15 = scale == "sd15"
    configs = (("trainer/gpu8", "base/sd15", "data/humanart", "method/grpose_skeleton",
                "guidance/reposedm") if sd15 else
               (*TINY, "method/tiny/grpose_skeleton", "guidance/tiny/reposedm"))
    with pytest.raises(SystemExit) as e:
        main(["predict", *compose(*configs), "--print_config"])
    assert e.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert model["method"]["class_path"] == "grpose.methods.GRPoseSkeleton"
    hook, = model["sampling_hooks"]
    assert hook["class_path"] == "grpose.diffusion.reposedm.RePoseDMGuidance"
    assert config["trainer"]["inference_mode"] is False
