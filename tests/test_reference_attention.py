"""Reference attention's processor (`grpose.methods.reference`): diffusers' own attention when
its projection is zero, the joined attention of a slow explicit-softmax computation otherwise
(with and without a match term on the reference logits), one `scaled_dot_product_attention`
call per layer, processors restored after the call (and after an error), a zero projection that
opens after one optimizer step, and `ReferenceAttention`'s body-part prior."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from grpose.methods import UNetConditioning, method_from_config
from grpose.methods.base import zero_module
from grpose.methods.reference import Reference, attend
from grpose.methods.transfer.methods import attention_layers

T = torch.tensor([10, 400, 900])
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


def references(unet, batch: int, projection=None, seed: int = 0) -> dict[str, Reference]:
    """Random tokens (7 per item) for every self-attention layer; zero projections by default."""
    g = torch.Generator().manual_seed(seed)
    refs = {}
    for name, _ in attention_layers(unet):
        width = unet.get_submodule(name).to_q.in_features
        out = unet.get_submodule(name).to_out[0].out_features
        proj = projection(out) if projection else zero_module(nn.Linear(out, out, bias=False))
        refs[name] = Reference(torch.randn(batch, 7, width, generator=g), proj, torch.ones(batch))
    return refs


def processors(unet) -> dict[str, object]:
    return {name: unet.get_submodule(name).processor for name, _ in attention_layers(unet)}


def test_a_zero_projection_is_diffusers_own_attention(tiny_parts, tiny_inputs):
    unet = tiny_parts[0]
    noisy, text, _ = tiny_inputs
    assert all(isinstance(p, AttnProcessor2_0) for p in processors(unet).values())
    with torch.no_grad():
        plain = unet(noisy, T, encoder_hidden_states=text).sample
        with attend(unet, references(unet, 3)):
            joined = unet(noisy, T, encoder_hidden_states=text).sample
    torch.testing.assert_close(joined, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_match", [False, True])
def test_the_joined_attention_equals_the_slow_computation(tiny_parts, with_match):
    unet = tiny_parts[0]
    attn = unet.get_submodule(LAYER)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, attn.to_q.in_features, generator=g)
    tokens = torch.randn(2, 5, attn.to_q.in_features, generator=g)
    match = (torch.randn(2, 16, 13, generator=g), torch.randn(2, 5, 13, generator=g)
             ) if with_match else None
    proj = nn.Linear(attn.to_out[0].out_features, attn.to_out[0].out_features, bias=False)
    nn.init.normal_(proj.weight, std=0.3)
    scale = torch.tensor([1.0, 0.5])

    def split(x):  # (B, L, H * D) -> (B, H, L, D)
        return x.view(2, x.shape[1], attn.heads, -1).transpose(1, 2)

    def merge(x):
        return x.transpose(1, 2).reshape(2, 16, -1)
    with torch.no_grad():
        q = split(attn.to_q(hidden))
        k, v = split(attn.to_k(hidden)), split(attn.to_v(hidden))
        k_ref, v_ref = split(attn.to_k(tokens)), split(attn.to_v(tokens))
        d = q.shape[-1]
        bias = 0 if match is None else (match[0] @ match[1].transpose(-1, -2))[:, None]
        logits = torch.cat([q @ k.transpose(-1, -2), q @ k_ref.transpose(-1, -2)], -1) / d**0.5
        logits[..., 16:] += bias  # the match term: the reference tokens' logits only
        own = merge(logits[..., :16].softmax(-1) @ v)
        joined = merge(logits.softmax(-1) @ torch.cat([v, v_ref], 2))
        delta = proj(F.linear(joined - own, attn.to_out[0].weight))
        want = attn.to_out[0](own) + scale.view(-1, 1, 1) * delta
        with attend(unet, {LAYER: Reference(tokens, proj, scale, match)}):
            got = attn(hidden)
    assert not torch.allclose(got, attn(hidden), atol=1e-3)  # the tokens do change it
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_one_attention_call_per_layer(tiny_parts, tiny_inputs, monkeypatch):
    unet = tiny_parts[0]
    noisy, text, _ = tiny_inputs
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(args[1].shape[-2])  # the number of keys
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    with torch.no_grad():
        unet(noisy, T, encoder_hidden_states=text)
        plain = list(calls)
        calls.clear()
        with attend(unet, references(unet, 3)):
            unet(noisy, T, encoder_hidden_states=text)
    assert len(calls) == len(plain) == 2 * len(attention_layers(unet))  # self + cross per block
    assert sum(a != b for a, b in zip(calls, plain)) == len(attention_layers(unet))  # + 7 keys


def test_processors_are_restored_after_the_call_and_after_an_error(tiny_parts, tiny_inputs):
    unet = copy.deepcopy(tiny_parts[0])
    noisy, text, _ = tiny_inputs
    before = processors(unet)
    with attend(unet, references(unet, 3)):
        assert all(type(p).__name__ == "ReferenceProcessor" for p in processors(unet).values())
        unet(noisy, T, encoder_hidden_states=text)
    assert processors(unet) == before
    with pytest.raises(RuntimeError, match="a failing call"), attend(unet, references(unet, 3)):
        raise RuntimeError("a failing call")
    assert processors(unet) == before
    assert not any(isinstance(m, nn.Linear) and "processor" in n for n, m in unet.named_modules())


def test_scaled_and_masked_conditioning_reach_the_reference_scale():
    ref = Reference(torch.ones(3, 2, 4), nn.Identity(), torch.ones(3))
    c = UNetConditioning(reference={"a": ref})
    assert c.scaled(0.5).reference["a"].scale.tolist() == [0.5] * 3
    masked = c.masked(torch.tensor([True, False, True])).reference["a"]
    assert masked.scale.tolist() == [1.0, 0.0, 1.0] and masked.tokens is ref.tokens


def test_the_zero_projection_opens_and_then_the_tokens_learn(tiny_parts, tiny_inputs,
                                                             pair_batch_keypoints):
    from grpose.diffusion.denoiser import predict_eps
    unet = copy.deepcopy(tiny_parts[0])
    method = method_from_config("configs/method/tiny/transfer_reference_attention.yaml")
    method.attach(unet)
    noisy, text, cond = tiny_inputs
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    cond = cond.with_source(latents, pair_batch_keypoints)
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    assert method.training_logs()["gate"] == 0
    grads = []
    for _ in range(2):
        opt.zero_grad()
        predict_eps(unet, method, noisy, T, text, cond).square().mean().backward()
        grads.append((sum(p.weight.grad.abs().sum() for p in method.projections),
                      sum(p.weight.grad.abs().sum() for p in method.tokens)))
        opt.step()
    # at zero, W learns and the tokens cannot yet (their gradient is rounding: own = A v / m)
    assert grads[0][0] > 0 and grads[0][1] < 1e-4 * grads[1][1]
    assert grads[1][1] > 1e-3  # after one step the tokens get a gradient
    assert method.training_logs()["gate"] > 1e-4
    assert method.match_strength.grad.abs().sum() > 0  # the body-part prior's strength learns


def test_the_part_prior_matches_the_same_limb_and_leaves_poseless_items_alone(
        tiny_parts, tiny_inputs, pair_batch_keypoints):
    unet = copy.deepcopy(tiny_parts[0])
    method = method_from_config("configs/method/tiny/transfer_reference_attention.yaml")
    method.attach(unet)
    _, _, cond = tiny_inputs
    cond = cond.with_source(torch.zeros(3, 4, 16, 16), cond.keypoints)  # the source = target
    cond = replace(cond, active=torch.tensor([True, True, False]))
    query, key = method.part_terms(cond, (16, 16))
    logit = query @ key.transpose(1, 2)  # (B, N, M): 2 m_q . m_k - 1
    assert logit[2].abs().max() == 0  # no target pose: no prior
    coverage = query[0, :, :-1].norm(dim=-1)  # the length of a cell's limb vector
    on_person = coverage > 0.9
    assert on_person.sum() > 5
    own_cell = logit[0].diagonal()[on_person]  # a query and the token of its own cell
    assert (own_cell > 0.5).all() and logit[0].min() >= -1 - 1e-6
    off = coverage < 1e-3  # far from the person: every token pushed down
    assert torch.allclose(logit[0][off], torch.full_like(logit[0][off], -1.0), atol=3e-3)
    bare = method_from_config("configs/method/tiny/transfer_reference_attention.yaml",
                              part_match=0.0)
    bare.attach(copy.deepcopy(tiny_parts[0]))
    assert bare.match_strength is None
    assert all(r.match is None for r in bare.references(cond).values())
    with pytest.raises(ValueError, match="part_match"):
        method_from_config("configs/method/tiny/transfer_reference_attention.yaml",
                           part_match=-1.0)


@pytest.fixture
def pair_batch_keypoints():
    from grpose.data import SyntheticPoseDataset, collate_pose_samples
    ds = SyntheticPoseDataset(6, seed=0, split="val", resolution=64)
    return collate_pose_samples([ds[i] for i in range(3, 6)]).keypoints
