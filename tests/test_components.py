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


def test_autoencoder_trains_on_random_crops_of_each_image():
    from grpose.diffusion.autoencoder import AutoencoderModule
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    module = AutoencoderModule(tiny_vae((8, 16), seed=0, mid_attention=False), crop_size=16,
                               seed=3)
    crops = module.crop(images)
    assert crops.shape == (2, 3, 16, 16)
    for k, (image, crop) in enumerate(zip(images, crops)):  # a square of its own image
        top, left = divmod(int(crop[0, 0, 0].item()) - k * 3 * 32 * 32, 32)
        assert torch.equal(crop, image[:, top:top + 16, left:left + 16])
    again = AutoencoderModule(tiny_vae((8, 16), seed=0, mid_attention=False), crop_size=16, seed=3)
    assert torch.equal(again.crop(images), crops)  # the seed sets the positions
    assert torch.equal(AutoencoderModule(tiny_vae((8, 16), seed=0)).crop(images), images)
    for bad in (0, 15):  # not a multiple of the VAE's downsampling (2)
        with pytest.raises(ValueError, match="crop_size"):
            AutoencoderModule(tiny_vae((8, 16), seed=0), crop_size=bad)
    with pytest.raises(ValueError, match="larger than the images"):
        AutoencoderModule(tiny_vae((8, 16), seed=0), crop_size=64).crop(images)


# -- SD 1.5's text side: a transformers CLIPTextModel folder, CLIPTokenizer ids ---------------
PROMPTS = ["", "a dancer", "Two people, one raising both arms; the other sits on a red chair.",
           " ".join(["a tall person in a long coat walking"] * 12)]  # > 77 tokens: truncated


def _tiny_clip_text_model(hidden_act="quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                            num_attention_heads=2, num_hidden_layers=2,
                            max_position_embeddings=77, hidden_act=hidden_act,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _save_sd15_text_encoder(model, folder):
    """`model` as in SD 1.5's `text_encoder/`: keys under `text_model.`, with `position_ids`."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True)
    model.config.to_json_file(folder / "config.json")
    state = {f"text_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_text_encoder_from_a_clip_text_model_folder(tmp_path, hidden_act):
    hf = _tiny_clip_text_model(hidden_act)
    _save_sd15_text_encoder(hf, tmp_path / "sd" / "text_encoder")
    ours = OpenCLIPTextEncoder(weights=str(tmp_path / "sd"))  # the SD folder as it is
    assert ours.width == 32 and len(ours.tower.transformer.resblocks) == 2
    ids = ours.tokenize(PROMPTS)
    with torch.no_grad():
        expected = hf(input_ids=ids).last_hidden_state
        torch.testing.assert_close(ours(PROMPTS), expected, rtol=0, atol=1e-5)
    hf.save_pretrained(tmp_path / "saved", safe_serialization=True)  # no `text_model.` prefix
    direct = OpenCLIPTextEncoder(weights=str(tmp_path / "saved"))
    assert torch.equal(direct(PROMPTS), ours(PROMPTS))
    with pytest.raises(ValueError, match="disagree"):
        OpenCLIPTextEncoder(weights=str(tmp_path / "sd"), text_cfg=dict(width=64))


def test_text_encoder_folder_errors_name_the_file(tmp_path):
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "text_encoder"
    _save_sd15_text_encoder(_tiny_clip_text_model(), folder)
    state = load_file(folder / "model.safetensors")
    del state["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="layers.1.self_attn.k_proj.bias"):
        OpenCLIPTextEncoder(weights=str(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        OpenCLIPTextEncoder(weights=str(tmp_path / "empty"))


def _clip_tokenizer_from_open_clip_bpe(tmp_path):
    """transformers' CLIPTokenizer built from the BPE files open_clip bundles."""
    import gzip
    import json

    import open_clip
    from transformers import CLIPTokenizer
    simple = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in simple.encoder.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with gzip.open(open_clip.tokenizer.default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                         model_max_length=77)


def test_token_ids_equal_sd15_clip_tokenizer(tmp_path):
    tokenizer = _clip_tokenizer_from_open_clip_bpe(tmp_path)
    expected = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    encoder = OpenCLIPTextEncoder(text_cfg=TINY_TEXT)
    ids = encoder.tokenize(PROMPTS)
    assert torch.equal(ids, expected)
    assert ids[0, 1:].eq(49407).all() and ids[3, -1] == 49407 and ids[3, -2] != 49407
    zero = OpenCLIPTextEncoder(text_cfg=TINY_TEXT, pad_with_eos=False).tokenize(PROMPTS)  # SD 2.x
    assert zero[0, 2:].eq(0).all() and torch.equal(torch.where(zero == 0, 49407, zero), ids)


def test_text_encoder_from_a_torchscript_clip_file(tmp_path):
    source = OpenCLIPTextEncoder(text_cfg=TINY_TEXT, seed=5)
    state = {**source.tower.state_dict(), "logit_scale": torch.ones(()),
             "visual.proj": torch.zeros(2, 2)}  # scripted with CLIP's names, like OpenAI's .pt
    scripted = torch.jit.script(_ScriptableState(state))
    scripted.save(str(tmp_path / "ViT-L-14-openai.pt"))
    loaded = OpenCLIPTextEncoder(text_cfg=TINY_TEXT, weights=str(tmp_path / "ViT-L-14-openai.pt"))
    assert torch.equal(loaded(PROMPTS), source(PROMPTS))


class _ScriptableState(torch.nn.Module):
    """A module holding `state` under its dotted names (nested submodules), scriptable."""

    def __init__(self, state: dict, prefix: str = ""):
        super().__init__()
        children = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if rest:
                children.setdefault(head, {})[rest] = value
            else:
                self.register_buffer(head, value.clone())
        for name, sub in children.items():
            self.add_module(name, _ScriptableState(sub))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_text_encoder_refuses_a_pickle_that_runs_code(tmp_path, zip_format):
    import pickle
    marker, path = tmp_path / "ran", tmp_path / "clip.pt"
    payload = {"token_embedding.weight": _RunsCode(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="not loadable as plain tensors"):
        OpenCLIPTextEncoder(text_cfg=TINY_TEXT, weights=str(path))
    assert not marker.exists()
