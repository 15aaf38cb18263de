"""ProtoNet on a parameter-free encoder: nearest centroid on precomputed embeddings (e.g. a frozen sentence encoder)."""
import torch
from torch import nn

import mlkit
from mlkit import openset


def test_identity_encoder_is_nearest_centroid_with_squared_distance_logits():
    generator = torch.Generator().manual_seed(0)
    support_x, query_x = torch.randn(3, 10, 6, generator=generator), torch.randn(3, 7, 6, generator=generator)
    support_y = torch.arange(5).repeat(2).expand(3, 10)
    batch = mlkit.TaskBatch(support_x, support_y, query_x, torch.randint(0, 5, (3, 7), generator=generator))
    centroid = mlkit.ProtoNet(nn.Identity())
    assert centroid.device == torch.device("cpu")
    logits = centroid.query_predictions(batch)
    for task in range(3):
        means = torch.stack([support_x[task][support_y[task] == c].mean(0) for c in range(5)])
        torch.testing.assert_close(logits[task], -torch.cdist(query_x[task], means) ** 2, atol=1e-5, rtol=1e-5)
    query_logits, outlier_logits = openset.open_set_logits(centroid, batch, torch.randn(3, 4, 6, generator=generator))
    torch.testing.assert_close(query_logits, logits)
    assert outlier_logits.shape == (3, 4, 5)
