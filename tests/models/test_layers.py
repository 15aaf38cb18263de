import pytest
import torch
from torch import nn

import mlkit


def test_mlp_layers_and_shapes():
    model = mlkit.models.MLP(1, [40, 40], 1)
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [40, 40, 1]
    assert model(torch.randn(7, 1)).shape == (7, 1)
    with pytest.raises(ValueError, match="activation"):
        mlkit.models.MLP(1, [4], 1, activation="gelu")
    with pytest.raises(ValueError, match="init"):
        mlkit.models.MLP(1, [4], 1, init="xavier")


def test_mlp_maml_init_is_small_truncated_normal_with_zero_biases():
    torch.manual_seed(0)
    model = mlkit.models.MLP(1, [400, 400], 1, init="maml")
    weights = torch.cat([m.weight.flatten() for m in model if isinstance(m, nn.Linear)])
    assert weights.abs().max() <= 0.02 and 0.007 < weights.std() < 0.01  # truncation shrinks the std to ~0.0088
    assert all(torch.all(m.bias == 0) for m in model if isinstance(m, nn.Linear))


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 5, 5)])
def test_batchnorm_equals_torch_batchnorm_on_batch_statistics(float64, shape):
    x = torch.randn(shape)
    ours = mlkit.models.BatchNorm(4)
    reference = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(4, track_running_stats=False)
    with torch.no_grad():
        for bn in (ours, reference):
            bn.weight.copy_(torch.linspace(0.5, 2, 4))
            bn.bias.copy_(torch.linspace(-1, 1, 4))
    torch.testing.assert_close(ours(x), reference(x))


def test_replace_batchnorm_swaps_modules_and_keeps_affine_parameters():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)))
    with torch.no_grad():
        model[1][0].weight.fill_(2.0)
    mlkit.models.replace_batchnorm(model)
    assert isinstance(model[1][0], mlkit.models.BatchNorm)
    assert torch.equal(model[1][0].weight, torch.full((3,), 2.0))


@pytest.mark.parametrize("variant, filters, size, channels", [("strided", 64, 28, 1), ("pool", 32, 84, 3)])
def test_conv4_variants_shapes(variant, filters, size, channels):
    model = mlkit.models.Conv4(channels, ways=5, filters=filters, variant=variant, image_size=size)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.out_channels == filters for c in convs)
    assert all(c.stride == ((2, 2) if variant == "strided" else (1, 1)) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == (4 if variant == "pool" else 0)
    assert sum(isinstance(m, mlkit.models.BatchNorm) for m in model.modules()) == 4
    assert model(torch.randn(2, channels, size, size)).shape == (2, 5)


def test_conv4_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        mlkit.models.Conv4(variant="resnet")


def text_episodes(tasks=3, ways=3, shots=2, queries=2, vocab=40, length=7, seed=0):
    """Random padded token-id episodes: every text has 1..length ids, padded with 0."""
    g = torch.Generator().manual_seed(seed)
    n = ways * (shots + queries)
    ids = torch.randint(1, vocab, (tasks, n, length), generator=g)
    lengths = torch.randint(1, length + 1, (tasks, n, 1), generator=g)
    ids = ids.masked_fill(torch.arange(length) >= lengths, 0)
    y = torch.arange(ways).repeat_interleave(shots + queries).expand(tasks, -1)
    support = torch.arange(n) % (shots + queries) < shots
    return mlkit.tasks.TaskBatch(ids[:, support], y[:, support], ids[:, ~support], y[:, ~support])


def test_text_encoder_shapes_and_padding_is_masked_out():
    torch.manual_seed(0)
    encoder = mlkit.models.TextEncoder(50, dim=8, hidden=[16])
    assert encoder(torch.tensor([[3, 4, 0]])).shape == (1, 16) and encoder.out_features == 16
    short, padded = torch.tensor([[3, 4]]), torch.tensor([[3, 4, 0, 0, 0]])
    torch.testing.assert_close(encoder(short), encoder(padded))  # padding changes nothing
    assert not torch.allclose(encoder(torch.tensor([[3, 4]])), encoder(torch.tensor([[3, 5]])))
    classifier = mlkit.models.TextEncoder(50, dim=8, hidden=[], out_features=6, ways=4)
    assert classifier(torch.tensor([[1, 2], [0, 0]])).shape == (2, 4)  # a text with no ids still gets logits


@pytest.mark.parametrize("kwargs, match", [(dict(vocab_size=1), "vocab_size"), (dict(dim=0), "dim"),
                                           (dict(hidden=[0]), "hidden"), (dict(ways=0), "ways"),
                                           (dict(dropout=1.0), "dropout"), (dict(out_features=0), "out_features")])
def test_text_encoder_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlkit.models.TextEncoder(**{"vocab_size": 10, **kwargs})


def test_text_encoder_rejects_float_inputs():
    with pytest.raises(ValueError, match="int64 token ids"):
        mlkit.models.TextEncoder(10)(torch.rand(2, 3))


def test_text_encoder_protonet_batched_equals_loop(float64):
    torch.manual_seed(0)
    proto = mlkit.ProtoNet(mlkit.models.TextEncoder(40, dim=6, hidden=[8]))
    batch = text_episodes()
    batched, loop = proto.meta_loss(batch), proto.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, loop)
    params = list(proto.parameters())
    torch.testing.assert_close(torch.cat([g.flatten() for g in torch.autograd.grad(batched, params)]),
                               torch.cat([g.flatten() for g in torch.autograd.grad(loop, params)]))


@pytest.mark.parametrize("first_order", [False, True])
def test_text_encoder_maml_batched_equals_loop(float64, first_order):
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.TextEncoder(40, dim=6, hidden=[8], ways=3), "cross_entropy", inner_lr=0.5,
                      inner_steps=2, first_order=first_order)
    batch = text_episodes()
    batched, loop = maml.meta_loss(batch), maml.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, loop)
    params = list(maml.parameters())
    grads = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]) for loss in (batched, loop)]
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0][:40 * 6].abs().sum() > 0  # the embedding table is meta-learned too
    torch.testing.assert_close(maml.query_predictions(batch), torch.stack(
        [maml.predict(maml.adapt(sx, sy, differentiable=False), qx) for sx, sy, qx in
         zip(batch.support_x, batch.support_y, batch.query_x)]))
