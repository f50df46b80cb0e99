"""Stable-Pose: the pose-masked attention on hand-made masks, the PMSA-ViT's token layout and
mask order, SD-1.5 shapes of the stage, the unconditional branch, and predict through the CLI."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import grpose.methods.stable_pose as sp
from grpose.cli import main
from grpose.methods import method_from_config

# Parameter counts of the release's stage (`input_blocks.1.0.*`) and pose encoder
# (`feature_extractor.*`) in its checkpoint key list (reference/stablepose_release_keys.tsv).
RELEASE_STAGE = (6_174_912, 38)
RELEASE_POSE_ENCODER = (831_104, 14)


def counts(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), len(params)


def test_masked_logits_on_a_hand_made_mask():
    logits = torch.randn(2, 3, 4, 4)
    logits[1] += 5.0  # a different minimum per item
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    out = sp.pose_masked_logits(logits, mask)
    pose = mask[:, None, :, None] | mask[:, None, None, :]  # (B, 1, N, N)
    for b in range(2):
        floor = logits[b].min()
        assert torch.equal(out[b][pose[b].expand(3, 4, 4)], logits[b][pose[b].expand(3, 4, 4)])
        assert (out[b][~pose[b].expand(3, 4, 4)] == floor).all()
    # item 0: pose tokens 0 and 3 attend and are attended everywhere; 1, 2 only with them
    assert torch.equal(out[0, :, [0, 3]], logits[0, :, [0, 3]])
    assert torch.equal(out[0, :, :, [0, 3]], logits[0, :, :, [0, 3]])
    weights = out.softmax(-1)[0, :, 1]  # (H, N) of non-pose query 1
    assert torch.allclose(weights[:, 1], weights[:, 2])
    assert (weights[:, 1:3] <= weights[:, [0, 3]].amin(-1, keepdim=True)).all()
    # item 1 has no pose token: every logit is its own minimum (not item 0's)
    assert (out[1] == logits[1].min()).all() and logits[1].min() > logits[0].min()


def test_non_pose_tokens_cannot_attend_to_each_other():
    """Token 0 is pose. A pose query whose logits with the non-pose keys are very negative makes
    the filled minimum so low that non-pose -> non-pose weights vanish: a non-pose query's output
    is the pose token's value, whatever the other non-pose values are."""
    q = torch.tensor([[-40.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])[None, None]
    k = torch.tensor([[0.0, 1.0], [40.0, 0.3], [40.0, -0.5], [40.0, 0.8]])[None, None]
    v = torch.randn(1, 1, 4, 2)
    mask = torch.tensor([[True, False, False, False]])
    out = sp.pose_masked_attention(q, k, v, mask)
    assert torch.equal(out[0, 0, 1:], v[0, 0, :1].expand(3, 2))
    v2 = v.clone()
    v2[0, 0, 2] += 10.0  # another non-pose token's value
    assert torch.equal(sp.pose_masked_attention(q, k, v2, mask)[0, 0, [1, 3]], out[0, 0, [1, 3]])
    unmasked = sp.pose_masked_attention(q, k, v, None)
    assert not torch.allclose(sp.pose_masked_attention(q, k, v2, None)[0, 0, 1], unmasked[0, 0, 1])
    v0 = v.clone()
    v0[0, 0, 0] += 1.0  # the pose token's value reaches every non-pose query
    assert torch.allclose(sp.pose_masked_attention(q, k, v0, mask)[0, 0, 1:], out[0, 0, 1:] + 1)


def test_all_ones_mask_is_unmasked_attention():
    q, k, v = torch.randn(3, 2, 2, 6, 5).unbind(0)
    ones = torch.ones(2, 6, dtype=torch.bool)
    reference = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(sp.pose_masked_attention(q, k, v, ones), reference)
    assert torch.equal(sp.pose_masked_attention(q, k, v, ones),
                       sp.pose_masked_attention(q, k, v, None))


def test_patch_tokens_hold_their_patch_and_round_trip():
    x = torch.randn(2, 3, 6, 8)
    t = sp.patchify(x, 2)  # (2, 12, 12)
    assert t.shape == (2, 12, 12)
    assert torch.equal(t[1, 4 + 2], x[1, :, 2:4, 4:6].permute(1, 2, 0).reshape(-1))
    assert torch.equal(sp.unpatchify(t, 2, 6, 8), x)
    with pytest.raises(ValueError, match="not divisible"):
        sp.patchify(torch.randn(1, 3, 5, 8), 2)


def test_vit_uses_the_coarse_mask_then_the_fine_one(monkeypatch):
    seen, attend = [], sp.pose_masked_attention

    def spy(q, k, v, mask=None):
        seen.append(mask.clone())
        return attend(q, k, v, mask)

    monkeypatch.setattr(sp, "pose_masked_attention", spy)
    vit = sp.PMSAViT(8, vit_channels=4, heads=2, head_dim=4, mlp_dim=8, grid=4)
    coarse, fine = torch.zeros(2, 1, 1, 8, 8)
    coarse[0, 0, 0, 0] = coarse[0, 0, 5, 6] = 1  # tokens 0 and 2 * 4 + 3
    fine[0, 0, 7, 1] = 1  # token 3 * 4 + 0
    out = vit(torch.randn(1, 8, 8, 8), [coarse, fine])
    assert out.shape == (1, 8, 8, 8) and len(seen) == 2
    assert seen[0][0].nonzero().flatten().tolist() == [0, 11]
    assert seen[1][0].nonzero().flatten().tolist() == [12]


def test_positions_buffer_is_fixed_and_not_saved():
    vit = sp.PMSAViT(8, vit_channels=4, heads=2, head_dim=4, mlp_dim=8, grid=4)
    assert "positions" not in vit.state_dict()
    assert torch.equal(vit.positions, sp.sincos_positions(4, 4, 16))
    pos = sp.sincos_positions(2, 3, 8)  # (6, 8); token 5 is x = 2, y = 1; frequencies 1, 1e-4
    x, y = torch.tensor([2.0, 2e-4]), torch.tensor([1.0, 1e-4])
    assert torch.allclose(pos[5], torch.cat([x.sin(), x.cos(), y.sin(), y.cos()]))
    x = torch.randn(1, 8, 6, 6)  # another grid than the buffer's: computed on the fly
    assert vit(x, [torch.ones(1, 1, 6, 6)] * 2).shape == x.shape


@torch.no_grad()
def test_sd15_stage_builds_and_runs():
    """SD-1.5 level 0: 320 channels at 64^2 latents -> 1,024 tokens of 512; the parameter counts
    of the released stage and pose encoder; zero-initialised (the stage starts as its skip)."""
    stage = sp.PMSAStage(320, 320, 192, 1280, 32, grid=32)
    encoder = sp.StablePoseEncoder()
    assert counts(stage) == RELEASE_STAGE and counts(encoder) == RELEASE_POSE_ENCODER
    pose = encoder(torch.rand(1, 3, 512, 512) * 2 - 1)
    assert pose.shape == (1, 192, 64, 64) and not pose.any()
    x, temb = torch.randn(1, 320, 64, 64), torch.randn(1, 1280)
    assert stage.vit.tokens(x).shape == (1, 1024, 512)
    masks = (torch.rand(2, 1, 1, 64, 64) > 0.7).float().unbind(0)
    assert torch.equal(stage(x, temb, (pose, *masks)), x)
    torch.nn.init.normal_(stage.out_conv.weight, std=0.02)
    out = stage(x, temb, (torch.randn_like(pose), *masks))
    assert out.shape == x.shape and torch.isfinite(out).all() and not torch.equal(out, x)


def test_pose_encoder_widths_follow_the_latent_factor():
    assert sp.StablePoseEncoder((8, 16, 16), 4)(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="log2"):
        sp.StablePoseEncoder((8, 16, 16), 8)
    with pytest.raises(ValueError, match="power of two"):
        sp.StablePoseEncoder((8, 16, 16), 6)


def test_inactive_items_get_all_ones_masks_and_keep_pose_features(tiny_parts, tiny_inputs):
    method = method_from_config("configs/method/tiny/stable_pose.yaml")
    method.attach(tiny_parts[0])
    noisy, _, cond = tiny_inputs
    active = torch.tensor([True, False, True])
    with torch.no_grad():
        on = method.contexts(noisy, method.prepare(cond))[0]
        mixed = method.contexts(noisy, method.prepare(cond.with_active(active)))[0]
    assert torch.equal(mixed[0], on[0])  # the same pose features
    for got, full, mask in zip(mixed[1:], on[1:], (cond.coarse_mask, cond.fine_mask)):
        assert torch.equal(got[active], mask[active]) and torch.equal(full, mask)
        assert (got[1] == 1).all() and not (mask[1] == 1).all()
    with pytest.raises(ValueError, match="latent_factor"):
        method.contexts(noisy[..., :8, :8], method.prepare(cond))


def test_tiny_config_samples_through_predict(tmp_path):
    out = tmp_path / "pred"
    configs = ["trainer/cpu", "base/tiny", "data/synthetic_tiny", "method/tiny/stable_pose"]
    main(["predict", *[a for c in configs for a in ("--config", f"configs/{c}.yaml")],
          f"--predict_writer.out_dir={out}", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.logger=false", "--data.init_args.eval_batch_size=2",
          "--data.init_args.val.init_args.num_samples=2",
          "--model.init_args.sampling.num_inference_steps=2", "--allow_untrained=true"])
    assert sorted(os.listdir(out)) == ["config.yaml", "grid_0_00000.png",
                                       "validation_000000.png", "validation_000001.png"]
