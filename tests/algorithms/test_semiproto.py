"""SemiProtoNet: soft k-means refinement of prototypes with unlabelled images (Ren et al., 2018)."""
import math

import pytest
import torch
from torch import nn

import mlkit
from conftest import flat_grad

REFINEMENTS = ["soft_kmeans", "soft_kmeans_cluster", "masked_soft_kmeans"]


def encoder(dim=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), mlkit.models.BatchNorm(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 6 * 6, dim))


def episodes(tasks=3, ways=3, shots=2, queries=2, unlabeled=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, ways * (shots + queries), 1, 6, 6, generator=g, dtype=dtype)
    y = torch.stack([torch.randperm(ways, generator=g).repeat(shots + queries) for _ in range(tasks)])
    u = torch.randn(tasks, unlabeled, 1, 6, 6, generator=g, dtype=dtype)
    n = ways * shots
    return mlkit.TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:], unlabeled_x=u)


def identity_embedding(refinement):
    """A SemiProtoNet whose embedding of a 2-vector is the vector itself."""
    linear = nn.Linear(2, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.eye(2))
        linear.bias.zero_()
    return mlkit.SemiProtoNet(linear, refinement).double()


@pytest.mark.parametrize("refinement", REFINEMENTS)
@pytest.mark.parametrize("empty", ["None", "M = 0"])
def test_without_unlabelled_images_every_variant_is_protonet_exactly(float64, refinement, empty):
    semi = mlkit.SemiProtoNet(encoder().double(), refinement)
    proto = mlkit.ProtoNet(encoder().double())
    batch = episodes()
    batch = mlkit.TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                            unlabeled_x=None if empty == "None" else batch.unlabeled_x[:, :0])
    for batched in (True, False):
        loss, reference = semi.meta_loss(batch, batched=batched), proto.meta_loss(batch, batched=batched)
        assert torch.equal(loss, reference)
        assert torch.equal(flat_grad(loss, semi.model.parameters()), flat_grad(reference, proto.model.parameters()))
    assert torch.equal(semi.query_predictions(batch), proto.query_predictions(batch))
    assert torch.equal(semi.adapt(batch.support_x[0], batch.support_y[0])["prototypes"],
                       proto.adapt(batch.support_x[0], batch.support_y[0])["prototypes"])


def test_soft_kmeans_matches_a_hand_computed_step():
    # Support: class 0 at (0, 0), class 1 at (2, 0) and (2, 2), so p0 = (0, 0), p1 = (2, 1).
    # Unlabelled u1 = (1, 0): distances 1 and 2; u2 = (3, 1): distances 10 and 1.
    w1 = [math.exp(-1) / (math.exp(-1) + math.exp(-2)), math.exp(-2) / (math.exp(-1) + math.exp(-2))]
    w2 = [math.exp(-10) / (math.exp(-10) + math.exp(-1)), math.exp(-1) / (math.exp(-10) + math.exp(-1))]
    p0 = [(0 + w1[0] * 1 + w2[0] * 3) / (1 + w1[0] + w2[0]), (0 + w1[0] * 0 + w2[0] * 1) / (1 + w1[0] + w2[0])]
    p1 = [(2 + 2 + w1[1] * 1 + w2[1] * 3) / (2 + w1[1] + w2[1]), (0 + 2 + w1[1] * 0 + w2[1] * 1) / (2 + w1[1] + w2[1])]
    query = [0.5, 1.0]
    expected_logits = [-((query[0] - p[0]) ** 2 + (query[1] - p[1]) ** 2) for p in (p0, p1)]

    algo = identity_embedding("soft_kmeans")
    support_x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    support_y = torch.tensor([0, 1, 1])
    unlabeled_x = torch.tensor([[1.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    params = algo.adapt(support_x, support_y, unlabeled_x=unlabeled_x)
    torch.testing.assert_close(params["prototypes"], torch.tensor([p0, p1], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(algo.predict(params, torch.tensor([query], dtype=torch.float64))[0],
                               torch.tensor(expected_logits, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_distractor_cluster_takes_its_share_of_the_softmax():
    # r = 2: the origin cluster's logit for u = (3, 0) is −9/4 − log 2; class logits −‖u − p_c‖².
    algo = identity_embedding("soft_kmeans_cluster")
    with torch.no_grad():
        algo.log_radius.fill_(math.log(2.0))
    support_x = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    u = [3.0, 0.0]
    logits = [-4.0, -18.0, -9.0 / 4 - math.log(2.0)]
    total = sum(math.exp(v) for v in logits)
    w = [math.exp(v) / total for v in logits[:2]]
    expected = [[(1 + 3 * w[0]) / (1 + w[0]), 0.0], [3 * w[1] / (1 + w[1]), 3 / (1 + w[1])]]
    prototypes = algo.adapt(support_x, torch.tensor([0, 1]), unlabeled_x=torch.tensor([u], dtype=torch.float64))
    torch.testing.assert_close(prototypes["prototypes"], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_masks_follow_the_normalised_distance_statistics():
    algo = identity_embedding("masked_soft_kmeans")
    distances = torch.tensor([[1.0, 4.0], [2.0, 4.0], [6.0, 4.0]], dtype=torch.float64)
    with torch.no_grad():   # an MLP whose output is its input's first two features: β = e^min, γ = e^max
        algo.mask_mlp[0].weight.zero_()
        algo.mask_mlp[0].weight[0, 0] = algo.mask_mlp[0].weight[1, 1] = 1e-3
        algo.mask_mlp[2].weight.zero_()
        algo.mask_mlp[2].weight[0, 0] = algo.mask_mlp[2].weight[1, 1] = 1e3
    normalised = distances / distances.mean(0)                   # column 0: 1/3, 2/3, 2; column 1: all 1
    low, high = normalised.min(0).values, normalised.max(0).values
    threshold, slope = torch.exp(1e3 * torch.tanh(1e-3 * low)), torch.exp(1e3 * torch.tanh(1e-3 * high))
    expected = torch.sigmoid(-slope * (normalised - threshold))
    torch.testing.assert_close(algo.masks(distances), expected, rtol=1e-12, atol=1e-12)
    # Column 1 has zero variance (guarded): its skewness is 0 and its excess kurtosis −3, no NaN.
    assert torch.isfinite(algo.masks(distances)).all()
    assert algo.masks(distances)[0, 0] > algo.masks(distances)[2, 0], "nearer unlabelled images get larger masks"


@pytest.mark.parametrize("refinement", REFINEMENTS)
@pytest.mark.parametrize("cpu_vmap", ["vmap", "task by task"])
def test_batched_equals_the_per_task_loop_with_unlabelled_images(float64, refinement, cpu_vmap, monkeypatch):
    monkeypatch.setattr(mlkit.algorithms.base, "CPU_CONV_VMAP_MAX_ELEMENTS", 10**9 if cpu_vmap == "vmap" else 0)
    algo = mlkit.SemiProtoNet(encoder().double(), refinement).double()
    batch = episodes()
    batched, looped = algo.meta_loss(batch, batched=True), algo.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flat_grad(batched, algo.parameters()), flat_grad(looped, algo.parameters()),
                               rtol=1e-9, atol=1e-10)
    one = algo.task_logits(algo.params(), 3, batch.support_x[1], batch.support_y[1], batch.query_x[1],
                           batch.unlabeled_x[1])
    torch.testing.assert_close(algo.query_predictions(batch)[1], one.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("refinement", REFINEMENTS)
def test_refinement_changes_the_loss_and_gradients_reach_the_learned_parts(float64, refinement):
    algo = mlkit.SemiProtoNet(encoder().double(), refinement).double()
    batch = episodes()
    loss = algo.meta_loss(batch)
    plain = mlkit.ProtoNet(encoder().double()).meta_loss(batch)
    assert abs(loss.item() - plain.item()) > 1e-6
    loss.backward()
    learned = {"soft_kmeans": [], "soft_kmeans_cluster": ["log_radius"],
               "masked_soft_kmeans": [f"mask_mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]}[refinement]
    named = dict(algo.named_parameters())
    assert sorted(n for n in named if not n.startswith("model.")) == sorted(learned)
    for name in learned:
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


@pytest.mark.parametrize("refinement", ["soft_kmeans_cluster", "masked_soft_kmeans"])
def test_gradient_of_the_learned_parts_matches_finite_differences(float64, refinement):
    algo = mlkit.SemiProtoNet(encoder().double(), refinement).double()
    batch = episodes(tasks=2)
    learned = [p for n, p in algo.named_parameters() if not n.startswith("model.")]
    analytic = flat_grad(algo.meta_loss(batch), learned)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):   # directional derivatives along random directions
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in learned]
        with torch.no_grad():
            losses = []
            for sign in (1, -1):
                for p, d in zip(learned, direction):
                    p.add_(sign * 1e-6 * d)
                losses.append(algo.meta_loss(batch).item())
                for p, d in zip(learned, direction):
                    p.sub_(sign * 1e-6 * d)
        numeric = (losses[0] - losses[1]) / 2e-6
        expected = (analytic * torch.cat([d.flatten() for d in direction])).sum().item()
        assert abs(numeric - expected) <= 1e-6 * max(1.0, abs(expected)), (numeric, expected)


def test_training_on_semi_supervised_digit_episodes_runs_with_fit_and_evaluate():
    train, test = mlkit.data.digits().split_classes([7, 3], seed=0)
    algo = mlkit.SemiProtoNet(mlkit.models.Conv4(1, None, filters=8, image_size=8), "masked_soft_kmeans")
    family = mlkit.tasks.FewShot(train, 3, 1, 2, unlabeled=3, distractors=2, labeled_fraction=0.2)
    history = mlkit.fit(algo, family, iterations=3, meta_batch=2, device="cpu", progress=False)
    accuracy, _ = mlkit.evaluate(algo, mlkit.tasks.FewShot(test, 3, 1, 5, unlabeled=3), tasks=4)
    assert len(history.loss) == 3 and 0 <= accuracy <= 100


def test_settings_refuse_a_state_of_another_refinement():
    state = mlkit.SemiProtoNet(encoder(), "soft_kmeans").state_dict()
    with pytest.raises(ValueError, match="settings differ|parameter names"):
        mlkit.SemiProtoNet(encoder(), "masked_soft_kmeans").load_state_dict(state)


@pytest.mark.parametrize("kwargs, match", [
    ({"refinement": "kmeans"}, "unknown refinement"), ({"refinement": "soft_kmeans_cluster", "init_radius": 0}, "init_radius"),
])
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mlkit.SemiProtoNet(encoder(), **kwargs)


def test_unlabelled_images_of_the_wrong_shape_are_refused_with_the_name():
    algo = mlkit.SemiProtoNet(encoder(), "soft_kmeans")
    batch = episodes(dtype=torch.float32)
    algo.meta_loss(batch)   # records the example shape
    with pytest.raises(ValueError, match="unlabeled_x"):
        algo.adapt(batch.support_x[0], batch.support_y[0], unlabeled_x=batch.unlabeled_x[0, :, :, :3])
