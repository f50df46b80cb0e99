"""KB-DMGen: vector quantisation and its losses, the dynamic mask (attention and loss), the
knowledge base built through the CLI and loaded into the method, FiLM of the decoder, the
open_clip image tower against open_clip, fit and predict through the CLI."""
from __future__ import annotations

import copy
import json
import math
import os
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml

import grpose.methods.stable_pose as sp
from grpose.cli import main
from grpose.diffusion import PoseDiffusionModule, TrainingSettings
from grpose.diffusion.components import noise_scheduler
from grpose.diffusion.denoiser import predict_eps
from grpose.diffusion.losses import DiffusionStep, DynamicPoseWeightedMSE, pose_weighted_mse
from grpose.methods import KBDMGen, method_from_config
from grpose.methods.kb_dmgen import (KnowledgeBase, OpenCLIPImageEncoder, dynamic_pose_mask,
                                     load_knowledge_base, mask_weight)
from grpose.methods.kb_dmgen.knowledge import code_statistics, perplexity, vector_quantize

TINY = "configs/method/tiny/kb_dmgen.yaml"
T = torch.tensor([10, 400, 900])


def test_vq_assigns_nearest_codes_straight_through():
    codes = F.normalize(torch.randn(8, 4), dim=-1)
    order = torch.tensor([3, 0, 7, 7, 1, 5])
    z = (codes[order] + 0.01 * torch.randn(6, 4)).requires_grad_()
    q = vector_quantize(z, codes)
    assert torch.equal(q.indices, order)
    torch.testing.assert_close(q.quantized, codes[order])
    q.quantized.sum().backward()  # straight-through: the gradient reaches z unchanged
    assert torch.equal(z.grad, torch.ones_like(z))
    torch.testing.assert_close(q.codebook_loss, F.mse_loss(codes[order], z.detach()))
    assert q.commitment.requires_grad and not q.codebook_loss.detach().requires_grad


def test_entropy_term_rises_when_codes_collapse_and_perplexity():
    codes = F.normalize(torch.randn(4, 8), dim=-1) * 3
    spread = vector_quantize(codes.repeat(4, 1), codes, temperature=0.01)
    collapsed = vector_quantize(codes[:1].repeat(16, 1), codes, temperature=0.01)
    assert collapsed.entropy_loss > spread.entropy_loss
    torch.testing.assert_close(spread.entropy_loss, torch.tensor(-math.log(4)), atol=1e-3, rtol=0)
    torch.testing.assert_close(collapsed.entropy_loss, torch.tensor(0.0), atol=1e-3, rtol=0)
    assert float(perplexity(spread.indices, 4)) == pytest.approx(4.0)
    assert float(perplexity(collapsed.indices, 4)) == pytest.approx(1.0)
    ppl, usage = code_statistics(torch.tensor([5, 5, 0, 0]))
    assert float(ppl) == pytest.approx(2.0) and float(usage) == 0.5


@pytest.mark.parametrize("entropy_weight", [0.0, 0.3])
def test_entropy_regularisation_keeps_the_codebook_in_use(entropy_weight):
    """Eight clusters of image embeddings, 16 codes: without the entropy term the projection
    collapses onto few codes; with it (nearly) every cluster gets its own code."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 24, generator=g)
    labels = torch.arange(8).repeat(32)
    embeddings = centres[labels] + 0.1 * torch.randn(256, 24, generator=g)
    kb = KnowledgeBase(24, 8, num_codes=16, code_dim=8)
    opt = torch.optim.Adam(kb.parameters(), lr=3e-3)
    for _ in range(150):
        q = kb.quantize(embeddings)
        loss = q.codebook_loss + 0.25 * q.commitment + entropy_weight * q.entropy_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ppl = float(perplexity(kb.quantize(embeddings).indices, 16))
    assert ppl > 6.0 if entropy_weight else ppl < 3.0


def test_codes_start_at_the_data():
    kb = KnowledgeBase(24, 8, num_codes=16, code_dim=8)
    embeddings = torch.randn(20, 24)
    assert not kb.initialised and kb.quantize(embeddings).indices.unique().numel() < 16
    kb.init_codes(embeddings)
    assert kb.initialised and torch.equal(kb.quantize(embeddings[:16]).indices, torch.arange(16))


def test_dynamic_mask_is_coarse_at_high_noise_and_fine_at_low_noise():
    coarse = (torch.rand(3, 1, 8, 8) > 0.3).float()
    fine = coarse * (torch.rand(3, 1, 8, 8) > 0.5).float()
    t = torch.tensor([999, 0, 333])
    m = dynamic_pose_mask(coarse, fine, t, 1000)
    assert torch.equal(m[0], coarse[0]) and torch.equal(m[1], fine[1])
    torch.testing.assert_close(m[2], fine[2] + (coarse[2] - fine[2]) / 3, rtol=0, atol=1e-6)
    gated = mask_weight(torch.arange(0, 1000, 100), 1000, (10.0, 0.5))
    assert (gated.diff() > 0).all() and gated[0] < 0.01 and gated[-1] > 0.98
    # the loss weights with the same mask
    eps, noise = torch.randn(2, 3, 4, 8, 8).unbind(0)
    step = DiffusionStep(None, SimpleNamespace(coarse_mask=coarse, fine_mask=fine), None, noise,
                         None, t, eps, torch.ones(1000), None, 1.0)
    loss, _ = DynamicPoseWeightedMSE(alpha=5.0)(step)
    torch.testing.assert_close(loss, pose_weighted_mse(eps, noise, m, 5.0))


def test_soft_masks_interpolate_the_attention_logits():
    logits = torch.randn(1, 2, 3, 3)
    floor = logits.min()
    soft = sp.pose_masked_logits(logits, torch.tensor([[0.0, 0.5, 1.0]]))
    assert torch.equal(soft[0, :, 2], logits[0, :, 2]) and torch.equal(soft[0, :, :, 2],
                                                                        logits[0, :, :, 2])
    assert (soft[0, :, 0, 0] == floor).all()
    torch.testing.assert_close(soft[0, :, 0, 1], (logits[0, :, 0, 1] + floor) / 2)
    hard = torch.tensor([[True, False, True]])
    assert torch.equal(sp.pose_masked_logits(logits, hard),
                       sp.pose_masked_logits(logits, hard.float()))


def test_film_is_the_identity_at_init_and_modulates_the_decoder(tiny_parts, tiny_inputs):
    unet = tiny_parts[0]
    method = method_from_config(TINY)
    method.attach(unet)
    noisy, text, cond = tiny_inputs
    with torch.no_grad():
        c = method(noisy, T, text, method.prepare(cond))
        assert {k: tuple(f.gamma.shape) for k, f in c.modulation.items()} == {
            "up_blocks.1": (3, 64), "up_blocks.2": (3, 32), "up_blocks.3": (3, 32)}
        assert all(not f.gamma.any() and not f.beta.any() for f in c.modulation.values())
        plain = unet(noisy, T, encoder_hidden_states=text).sample
        torch.nn.init.normal_(method.film.heads[2].weight, std=0.1)  # up_blocks.3 only
        changed = predict_eps(unet, method, noisy, T, text, cond)
        assert not torch.allclose(changed, plain)
        film = method.film(torch.zeros(2, dtype=torch.long), torch.tensor([10, 900]))
        assert not torch.equal(*film["up_blocks.3"].gamma)  # timestep-conditioned


def test_the_stage_gets_the_dynamic_mask(tiny_parts, tiny_inputs, monkeypatch):
    method = method_from_config(TINY)
    method.attach(tiny_parts[0])
    noisy, text, cond = tiny_inputs
    seen = []
    contexts = sp.StablePose.contexts
    monkeypatch.setattr(sp.StablePose, "contexts",
                        lambda self, x, c: seen.append(c) or contexts(self, x, c))
    with torch.no_grad():
        method(noisy, torch.tensor([999, 0, 500]), text, cond)
    m = seen[0].coarse_mask
    assert torch.equal(seen[0].fine_mask, m)
    assert torch.equal(m[0], cond.coarse_mask[0]) and torch.equal(m[1], cond.fine_mask[1])
    with pytest.raises(ValueError, match="film_blocks"):
        KBDMGen(film_blocks=("down_blocks.1",))


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory):
    """A knowledge base built by `python -m grpose fit` with configs/kb/tiny.yaml (4 steps:
    2 codebook, 2 classifier), and the CLI that built it."""
    root = tmp_path_factory.mktemp("kb")
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(root), "filename": "knowledge_base",
                                "every_n_train_steps": 2, "enable_version_counter": False}}]
    cli = main(["fit", "--config", "configs/data/synthetic_tiny.yaml", "--config",
                "configs/kb/tiny.yaml", f"--trainer.default_root_dir={root}",
                "--trainer.logger=false", f"--trainer.callbacks={json.dumps(callbacks)}",
                "--trainer.max_steps=4", "--trainer.val_check_interval=4",
                "--trainer.enable_progress_bar=false", "--model.init_args.codebook_steps=2",
                "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=8",
                "--data.init_args.train.init_args.num_samples=16",
                "--data.init_args.val.init_args.num_samples=8"])
    return str(root / "knowledge_base.ckpt"), cli


def test_knowledge_base_builds_through_the_cli_and_loads(knowledge_base):
    path, cli = knowledge_base
    assert cli.trainer.global_step == 4 and cli.model.stage == "classifier"
    metrics = cli.trainer.logged_metrics
    assert {"kb/classifier_acc", "kb/val_perplexity", "kb/val_usage"} <= set(metrics)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(k.startswith("knowledge.") for k in state)  # encoders: from the config
    kb = load_knowledge_base(path)
    for k, v in cli.model.knowledge.state_dict().items():
        assert torch.equal(kb.state_dict()[k], v)
    with pytest.raises(ValueError, match="width"):
        kb.classify(torch.randn(1, 77, 16))


def test_knowledge_base_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/kb"):
        load_knowledge_base(str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt.*not a knowledge base"):
        load_knowledge_base(str(tmp_path / "other.ckpt"))


def test_method_with_the_knowledge_base(knowledge_base, tiny_parts, tiny_batch):
    path, cli = knowledge_base
    unet, vae, text_encoder = (copy.deepcopy(p) for p in tiny_parts)
    method = method_from_config(TINY, knowledge_base=path)
    module = PoseDiffusionModule(unet, vae, text_encoder, method, noise_scheduler(),
                                 training=TrainingSettings(lr=1e-3))
    kb = method.knowledge
    assert kb.num_codes == 16 and method.film.code_embed.num_embeddings == 16
    assert not list(kb.parameters())  # buffers: no optimizer reaches them
    assert all(f"knowledge.{k}" in method.state_dict() for k in kb.state_dict())
    before = {k: v.clone() for k, v in kb.state_dict().items()}
    opt = module.configure_optimizers()
    loss, _ = module.diffusion_step(tiny_batch)
    loss.backward()
    opt.step()
    assert all(torch.equal(v, kb.state_dict()[k]) for k, v in before.items())  # frozen
    states = text_encoder(tiny_batch.captions)
    assert torch.equal(method.predict_codes(states), cli.model.knowledge.predict(states))


def test_fit_and_predict_through_the_cli_with_the_knowledge_base(knowledge_base, tmp_path):
    names = ("trainer/cpu", "base/tiny", "data/synthetic_tiny", "method/tiny/kb_dmgen")
    configs = [a for c in names for a in ("--config", f"configs/{c}.yaml")]
    kb = f"--model.init_args.method.init_args.knowledge_base={knowledge_base[0]}"
    cli = main(["fit", *configs, kb, "--trainer.fast_dev_run=1", "--data.init_args.batch_size=2",
                f"--trainer.default_root_dir={tmp_path}",
                "--model.init_args.sampling.num_inference_steps=2"])
    assert cli.trainer.global_step == 1
    assert type(cli.model.loss) is DynamicPoseWeightedMSE
    out = tmp_path / "pred"
    main(["predict", *configs, kb, f"--predict_writer.out_dir={out}",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
          "--data.init_args.eval_batch_size=2", "--data.init_args.val.init_args.num_samples=2",
          "--model.init_args.sampling.num_inference_steps=2", "--allow_untrained=true"])
    assert sorted(os.listdir(out)) == ["config.yaml", "grid_0_00000.png",  # + what made them
                                       "validation_000000.png", "validation_000001.png"]


def test_image_encoder_matches_open_clip(tmp_path):
    """Our image tower, loaded from an open_clip state dict file, gives open_clip's
    `encode_image` of the CLIP-normalised images."""
    vision = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16)
    text = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)
    torch.manual_seed(1)
    clip = open_clip.model.CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text).eval()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    encoder = OpenCLIPImageEncoder("ViT-B-32", str(tmp_path / "clip.pt"), vision, 24).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = clip.encode_image(((images + 1) / 2 - mean) / std)
        torch.testing.assert_close(encoder(images), reference)
        assert encoder(torch.rand(1, 3, 48, 48)).shape == (1, 24)  # resized to the tower's input
    with pytest.raises(ValueError, match="not a CLIP image tower"):
        OpenCLIPImageEncoder("ViT-B-32", str(tmp_path / "clip.pt"), dict(vision, width=64), 24)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        OpenCLIPImageEncoder("ViT-B-32", str(tmp_path / "none.pt"), vision, 24)


def test_the_optional_gate_learns_through_the_attention(tiny_parts, tiny_inputs,
                                                        perturb_zero_parameters):
    method = method_from_config(TINY, mask_gate=True)
    method.attach(tiny_parts[0])
    perturb_zero_parameters(method)
    noisy, text, cond = tiny_inputs
    c = method(noisy, T, text, cond)
    sum(r.square().sum() for r in c.down_residuals).backward()
    assert method.gate.grad is not None and method.gate.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dynamic_mask"):
        KBDMGen(dynamic_mask=False, mask_gate=True)


def test_the_sd15_knowledge_base_config_composes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", "configs/data/humanart.yaml", "--config", "configs/kb/sd15.yaml",
              "--print_config"])
    assert e.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert model["image_encoder"]["init_args"]["weights"] == model["text_encoder"]["init_args"][
        "weights"]
    assert config["data"]["init_args"]["train"]["init_args"]["caption_dropout"] == 0.0
