"""Per-item random draws, reproducible in any batch, number of processes or resumed run: each
item's generator is seeded from the run's seed and the item itself, never from the global RNG."""
from __future__ import annotations

import zlib

import numpy as np
import torch

TIMESTEP_SAMPLING = ("uniform", "cubic")


def check_timestep_sampling(name: str) -> None:
    if name not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, got {name!r}")


def id_hash(meta: dict, position: int) -> int:
    """A hash of the item's id (else of its position in the batch)."""
    return zlib.crc32(str(meta.get("id", position)).encode())


def item_key(meta: dict, position: int) -> int:
    """The item's dataset index, else `id_hash`."""
    return int(meta.get("index", id_hash(meta, position)))


def training_draws(metas: list[dict], seed: int, stream: tuple[int, int],
                   shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per item: a uniform `(B,)` for its timestep, the noise and the VAE sample's eps
    `(B, *shape)`, from a generator seeded by (`seed`, `stream`, the item's key)."""
    draws = []
    for i, meta in enumerate(metas):
        entropy = np.random.SeedSequence([seed, *stream, item_key(meta, i)])
        g = torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0]))
        draws.append((torch.rand(1, generator=g), torch.randn(shape, generator=g),
                      torch.randn(shape, generator=g)))
    u, noise, eps = zip(*draws)
    return torch.cat(u), torch.stack(noise), torch.stack(eps)


def timesteps_from_uniform(u: torch.Tensor, num_train_timesteps: int,
                           sampling: str = "uniform") -> torch.Tensor:
    """Training timesteps `(n,)` from uniforms `u` in [0, 1): "uniform", or "cubic"
    (T2I-Adapter's t = (1 - u^3) T: more steps at high noise)."""
    check_timestep_sampling(sampling)
    if sampling == "cubic":
        u = 1 - u**3
    return (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def sampling_seeds(metas: list[dict], seed: int) -> list[int]:
    """One sampling seed per item from `seed` and the item's id: an image's seed is the same in
    any batch or process."""
    return [(seed * 1_000_003 + id_hash(m, i)) % 2**31 for i, m in enumerate(metas)]
