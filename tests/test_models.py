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
