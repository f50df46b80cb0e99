"""Per-item draws: an item's timestep, noise, VAE eps and sampling seed depend on the run's seed,
the step and the item, not on the batch it is in."""
from __future__ import annotations

import pytest
import torch

from grpose.diffusion.draws import sampling_seeds, timesteps_from_uniform, training_draws

METAS = [{"index": 3, "id": "a"}, {"index": 7, "id": "b"}, {"id": "c"}]


def test_an_items_draws_do_not_depend_on_its_batch():
    u, noise, eps = training_draws(METAS, seed=5, stream=(0, 2), shape=(4, 2, 2))
    u1, noise1, eps1 = training_draws(METAS[1:2], seed=5, stream=(0, 2), shape=(4, 2, 2))
    assert u.shape == (3,) and noise.shape == eps.shape == (3, 4, 2, 2)
    assert torch.equal(u[1:2], u1) and torch.equal(noise[1:2], noise1)
    assert torch.equal(eps[1:2], eps1)
    assert not torch.equal(noise[1], eps[1])


@pytest.mark.parametrize("change", [dict(seed=6), dict(stream=(0, 3)), dict(stream=(1, 0))])
def test_another_seed_or_step_draws_anew(change):
    base = dict(seed=5, stream=(0, 2))
    a = training_draws(METAS, shape=(4, 2, 2), **base)[1]
    b = training_draws(METAS, shape=(4, 2, 2), **{**base, **change})[1]
    assert not torch.allclose(a, b)


def test_sampling_seeds_follow_the_id():
    seeds = sampling_seeds(METAS, 42)
    assert sampling_seeds(METAS[::-1], 42) == seeds[::-1]
    assert sampling_seeds(METAS, 43) != seeds
    assert all(0 <= s < 2**31 for s in seeds)


def test_timesteps_in_range_and_the_name_checked():
    u = torch.tensor([0.0, 0.5, 0.999999])
    assert timesteps_from_uniform(u, 1000).tolist() == [0, 500, 999]
    assert timesteps_from_uniform(u, 1000, "cubic").tolist() == [999, 875, 0]
    with pytest.raises(ValueError, match="timestep_sampling must be one of"):
        timesteps_from_uniform(u, 1000, "log")
