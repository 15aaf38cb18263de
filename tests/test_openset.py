import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve as sk_roc_curve

import mlkit
from mlkit import openset


def test_auroc_equals_sklearn_with_ties_and_batched_rows():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (4, 50), generator=g).float()  # many ties
    positive = torch.rand(4, 50, generator=g) < 0.4
    ours = openset.auroc(scores, positive)
    assert ours.shape == (4,)
    for row in range(4):
        assert ours[row].item() == pytest.approx(roc_auc_score(positive[row].numpy(), scores[row].numpy()), abs=1e-12)
    continuous = torch.randn(300, generator=g)
    labels = torch.rand(300, generator=g) < 0.3
    assert openset.auroc(continuous, labels).item() == pytest.approx(roc_auc_score(labels.numpy(), continuous.numpy()))
    assert openset.auroc(torch.tensor([0.0, 1.0]), torch.tensor([False, True])).item() == 1.0


def test_roc_curve_equals_sklearn_and_its_area_is_the_auroc():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 20, (200,), generator=g).double()
    positive = torch.rand(200, generator=g) < 0.5
    fpr, tpr = openset.roc_curve(scores, positive)
    sk_fpr, sk_tpr, _ = sk_roc_curve(positive.numpy(), scores.numpy(), drop_intermediate=False)
    torch.testing.assert_close(fpr, torch.as_tensor(sk_fpr))
    torch.testing.assert_close(tpr, torch.as_tensor(sk_tpr))
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(openset.auroc(scores, positive).item())


def test_fit_threshold_maximises_the_mean_of_in_scope_accuracy_and_recall():
    g = torch.Generator().manual_seed(2)
    in_scores, out_scores = torch.randn(400, generator=g), torch.randn(150, generator=g) + 1.5
    correct = torch.rand(400, generator=g) < 0.8
    threshold = openset.fit_threshold(in_scores, correct, out_scores)
    accuracy, recall = openset.accuracy_at(in_scores, correct, out_scores, threshold)
    grid = torch.linspace(-5, 6, 4001)
    brute = max((((in_scores < t) & correct).double().mean() + (out_scores >= t).double().mean()).item() for t in grid)
    assert (accuracy + recall).item() >= brute - 1e-12
    assert accuracy.item() <= correct.double().mean().item()


def test_rejection_scores_are_nearest_distance_and_one_minus_max_softmax():
    logits = torch.tensor([[-4.0, -1.0, -9.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(openset.rejection_scores(logits, "distance"), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(openset.rejection_scores(logits, "softmax"),
                               1 - logits.softmax(-1).max(-1).values)
    assert openset.rejection_scores(logits, "softmax")[1].item() == pytest.approx(2 / 3)


def test_open_set_logits_keep_in_scope_predictions_and_score_outliers_against_the_same_prototypes():
    torch.manual_seed(0)
    proto = mlkit.ProtoNet(mlkit.models.TextEncoder(30, dim=4, hidden=[6]))
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.randint(1, 30, (2, 6, 5), generator=g), torch.randint(1, 30, (2, 4, 5), generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2]).expand(2, -1)
    batch = mlkit.TaskBatch(sx, y, qx, y[:, :4])
    outliers = torch.randint(1, 30, (2, 3, 5), generator=g)
    q, o = openset.open_set_logits(proto, batch, outliers)
    torch.testing.assert_close(q, proto.query_predictions(batch))
    prototypes = proto.adapt(sx[1], y[1])
    torch.testing.assert_close(o[1], proto.predict(prototypes, outliers[1]))
    assert openset.default_kind(proto) == "distance"
    maml = mlkit.MAML(mlkit.models.TextEncoder(30, dim=4, hidden=[6], ways=3), "cross_entropy", inner_lr=0.1)
    assert openset.default_kind(maml) == "softmax"
    q, o = openset.open_set_logits(maml, batch, outliers)
    torch.testing.assert_close(q, maml.query_predictions(batch))
    assert o.shape == (2, 3, 3)


@pytest.mark.parametrize("call, match", [
    (lambda: openset.auroc(torch.rand(3), torch.tensor([True, True, True])), "one positive and one negative"),
    (lambda: openset.auroc(torch.rand(3), torch.tensor([1, 0, 1])), "bool"),
    (lambda: openset.auroc(torch.rand(3), torch.tensor([True, False])), "same shape"),
    (lambda: openset.auroc(torch.tensor([0.0, float("nan")]), torch.tensor([True, False])), "finite"),
    (lambda: openset.rejection_scores(torch.rand(2, 3), "energy"), "kind"),
    (lambda: openset.fit_threshold(torch.rand(3), torch.tensor([True, False]), torch.rand(2)), "in_correct"),
    (lambda: openset.fit_threshold(torch.rand(3), torch.ones(3, dtype=torch.bool), torch.rand(0)), "out_scores"),
    (lambda: openset.roc_curve(torch.rand(3), torch.zeros(3, dtype=torch.bool)), "one positive")])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_open_set_logits_rejects_outliers_of_the_wrong_shape():
    proto = mlkit.ProtoNet(mlkit.models.TextEncoder(30, dim=4, hidden=[6]))
    batch = mlkit.TaskBatch(torch.ones(2, 2, 5, dtype=torch.long), torch.tensor([[0, 1]] * 2),
                            torch.ones(2, 2, 5, dtype=torch.long), torch.tensor([[0, 1]] * 2))
    with pytest.raises(ValueError, match="outliers_x"):
        openset.open_set_logits(proto, batch, torch.ones(3, 2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outliers_x"):
        openset.open_set_logits(proto, batch, torch.ones(2, 2, 4, dtype=torch.long))
