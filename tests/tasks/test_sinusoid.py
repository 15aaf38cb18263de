import math

import pytest
import torch

import mlkit


def test_sample_shapes_and_ranges():
    batch = mlkit.tasks.Sinusoid(shots=10, queries=15).sample(25, generator=torch.Generator().manual_seed(0))
    assert batch.support_x.shape == batch.support_y.shape == (25, 10, 1)
    assert batch.query_x.shape == batch.query_y.shape == (25, 15, 1)
    assert batch.tasks == 25
    amplitude, phase = batch.info["amplitude"], batch.info["phase"]
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
    assert phase.min() >= 0 and phase.max() <= math.pi
    for x in (batch.support_x, batch.query_x):
        assert x.min() >= -5 and x.max() <= 5


def test_targets_follow_each_tasks_curve():
    batch = mlkit.tasks.Sinusoid(shots=5, queries=5).sample(8)
    a, p = batch.info["amplitude"][:, None, None], batch.info["phase"][:, None, None]
    torch.testing.assert_close(batch.support_y, a * torch.sin(batch.support_x - p))
    torch.testing.assert_close(batch.query_y, a * torch.sin(batch.query_x - p))


def test_same_generator_seed_same_tasks_and_different_seed_different_tasks():
    family = mlkit.tasks.Sinusoid()
    a = family.sample(4, generator=torch.Generator().manual_seed(3))
    b = family.sample(4, generator=torch.Generator().manual_seed(3))
    c = family.sample(4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)


@pytest.mark.parametrize("kwargs", [{"shots": 0}, {"shots": -1}, {"queries": 0}, {"shots": 2.5}])
def test_bad_shots_or_queries_raise(kwargs):
    with pytest.raises(ValueError, match="shots|queries"):
        mlkit.tasks.Sinusoid(**kwargs)


def test_bad_task_count_raises():
    with pytest.raises(ValueError, match="tasks"):
        mlkit.tasks.Sinusoid().sample(0)
