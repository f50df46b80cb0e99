"""Training options of `PoseDiffusionModule`: the frozen-encoder cache and the LR schedule (which
the demo's autoencoder shares)."""
import lightning as L
import pytest
import torch

from grpose.data import PoseDataModule, SyntheticPoseDataset
from grpose.diffusion import MemorySettings, TrainingSettings
from grpose.diffusion.autoencoder import AutoencoderModule
from grpose.diffusion.components import tiny_vae
from test_diffusion import make_module


def test_cached_encodings_equal_the_encoders(tiny_parts, tiny_batch):
    plain, cached = make_module(tiny_parts), make_module(tiny_parts, memory=MemorySettings(cache_frozen=True))
    cached.load_state_dict(plain.state_dict())
    eps = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    first = cached.encode_images(tiny_batch.image[:2], eps[:2])  # fills two entries
    both = cached.encode_images(tiny_batch.image, eps)  # two from the cache, one new
    expected = plain.encode_images(tiny_batch.image, eps)
    torch.testing.assert_close(first, expected[:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(both, expected, atol=1e-6, rtol=0)
    assert len(cached.cache.posteriors) == 3
    captions = ["a person", "", "a person"]
    torch.testing.assert_close(cached.encode_text(captions), plain.encode_text(captions),
                               atol=1e-6, rtol=0)
    assert set(cached.cache.text_states) == {"a person", ""}
    plain_loss, _ = plain.diffusion_step(tiny_batch)
    cached_loss, _ = cached.diffusion_step(tiny_batch)
    torch.testing.assert_close(cached_loss, plain_loss, atol=1e-6, rtol=1e-5)


def test_cache_is_off_for_parts_that_train(tiny_parts):
    m = make_module(tiny_parts, memory=MemorySettings(cache_frozen=True),
                    training=TrainingSettings(trainable=["method", "text_encoder"]))
    assert m.cache.posteriors is not None and m.cache.text_states is None
    assert make_module(tiny_parts).cache.posteriors is None  # off by default


def learning_rates(tiny_parts, steps: int, module=None, **training) -> list[float]:
    m = module or make_module(tiny_parts, training=TrainingSettings(lr=1e-3, **training))
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])
    data = PoseDataModule(train=SyntheticPoseDataset(8, seed=0, split="train", resolution=32),
                          batch_size=2)
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
              limit_val_batches=0).fit(m, data)
    return seen


def test_warmup_then_cosine_decay(tiny_parts):
    lrs = learning_rates(tiny_parts, 6, lr_warmup_steps=2, lr_decay="cosine")
    expected = [5e-4, 1e-3] + [1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * k / 4)).item())
                               for k in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert learning_rates(tiny_parts, 3) == pytest.approx([1e-3] * 3)
    vae = AutoencoderModule(tiny_vae((8, 16), seed=0), lr=1e-3, lr_warmup_steps=2,
                            lr_decay="cosine")
    assert learning_rates(tiny_parts, 6, module=vae) == pytest.approx(expected, rel=1e-6)


def test_unknown_lr_decay_is_refused(tiny_parts):
    with pytest.raises(ValueError, match=r"training\.lr_decay"):
        TrainingSettings(lr_decay="linear")
    with pytest.raises(ValueError, match="lr_warmup_steps"):
        AutoencoderModule(tiny_vae((8, 16), seed=0), lr_warmup_steps=-1)
