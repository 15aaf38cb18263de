import pytest
import torch

import mlkit


def test_pool_only_returns_its_own_tasks():
    family = mlkit.tasks.Sinusoid(shots=3, queries=2)
    pool = mlkit.tasks.TaskPool(family, size=4, seed=1)
    batch = pool.sample(50, generator=torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (50, 3, 1)
    amplitudes = set(pool.tasks.info["amplitude"].tolist())
    assert set(batch.info["amplitude"].tolist()) == amplitudes  # all 4 appear in 50 draws, nothing else
    for i in range(50):
        j = pool.tasks.info["amplitude"].tolist().index(batch.info["amplitude"][i].item())
        assert torch.equal(batch.support_x[i], pool.tasks.support_x[j])


def test_pool_is_fixed_by_its_seed():
    family = mlkit.tasks.Sinusoid()
    assert torch.equal(mlkit.tasks.TaskPool(family, 3, seed=5).tasks.support_x,
                       mlkit.tasks.TaskPool(family, 3, seed=5).tasks.support_x)
    with pytest.raises(ValueError, match="size"):
        mlkit.tasks.TaskPool(family, 0)
