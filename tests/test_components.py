"""Frozen parts from local files only: diffusers folders and an open_clip checkpoint."""
import pytest
import torch

from grpose.diffusion.components import (OpenCLIPTextEncoder, load_unet, load_vae, tiny_unet,
                                         tiny_vae)

TINY_TEXT = dict(width=32, heads=2, layers=2)


def test_unet_and_vae_from_local_diffusers_folders(tmp_path):
    unet, vae = tiny_unet(seed=3), tiny_vae(seed=4)
    unet.save_pretrained(tmp_path / "sd" / "unet")
    vae.save_pretrained(tmp_path / "sd" / "vae")
    loaded_unet, loaded_vae = load_unet(str(tmp_path / "sd")), load_vae(str(tmp_path / "sd"))
    for a, b in ((unet, loaded_unet), (vae, loaded_vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_unet("runwayml/stable-diffusion-v1-5")  # a hub id is not a local path


def test_text_encoder_from_a_clip_checkpoint(tmp_path):
    source = OpenCLIPTextEncoder(text_cfg=TINY_TEXT, seed=5)
    state = {k: v for k, v in source.tower.state_dict().items() if k != "attn_mask"}
    state.update({"visual.conv1.weight": torch.zeros(1), "logit_scale": torch.ones(())})
    torch.save(state, tmp_path / "clip.pt")  # a full CLIP checkpoint: text and vision towers
    loaded = OpenCLIPTextEncoder(text_cfg=TINY_TEXT, weights=str(tmp_path / "clip.pt"), seed=6)
    captions = ["a dancer raising both arms", ""]
    out = loaded(captions)
    assert out.shape == (2, 77, 32) and torch.equal(out, source(captions))
    assert not torch.equal(out, OpenCLIPTextEncoder(text_cfg=TINY_TEXT, seed=6)(captions))
    torch.save({"transformer.bogus": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a CLIP text tower"):
        OpenCLIPTextEncoder(text_cfg=TINY_TEXT, weights=str(tmp_path / "bad.pt"))


def test_autoencoder_init_logvar_starts_with_a_narrow_posterior():
    from grpose.diffusion.autoencoder import AutoencoderModule
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    wide = tiny_vae((8, 16), seed=0).encode(images).latent_dist.std.mean()
    module = AutoencoderModule(tiny_vae((8, 16), seed=0, mid_attention=False), init_logvar=-6.0)
    std = module.vae.encode(images).latent_dist.std
    assert torch.allclose(std, torch.full_like(std, 0.0498), atol=1e-3) and wide > 0.3
    rec, _ = module.losses(images)
    rec.backward()  # the log-variance still learns
    assert module.vae.quant_conv.weight.grad[4:].abs().sum() > 0
