import torch

import mlkit
from conftest import random_tasks


def test_joint_training_loss_is_the_pooled_loss_without_adaptation():
    torch.manual_seed(0)
    model = mlkit.models.MLP(3, [8], 1)
    joint = mlkit.JointTraining(model, inner_lr=0.5, inner_steps=3)
    batch = random_tasks()
    expected = torch.stack([((model(torch.cat([sx, qx])) - torch.cat([sy, qy])) ** 2).mean()
                            for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y)])
    torch.testing.assert_close(joint.meta_loss(batch), expected.mean())


def test_joint_training_still_fine_tunes_at_test_time():
    torch.manual_seed(0)
    joint = mlkit.JointTraining(mlkit.models.MLP(3, [8], 1), inner_lr=0.1, inner_steps=2)
    batch = random_tasks(tasks=1)
    adapted = joint.adapt(batch.support_x[0], batch.support_y[0])
    assert any(not torch.equal(adapted[k], v) for k, v in joint.params().items())
