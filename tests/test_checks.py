"""The mistakes a new user makes in the first hour, each answered by one readable ValueError."""
import pytest
import torch
from torch import nn

import mlkit
from conftest import random_tasks


def classification_tasks(tasks=3, ways=3, shots=2, queries=2, features=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, ways * (shots + queries), features, generator=g)
    y = torch.arange(ways).repeat(shots + queries).expand(tasks, -1).clone()
    n = ways * shots
    return mlkit.TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def classifier(features=4, ways=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, ways))


# The model check: one rule for both paths ----------------------------------------------------------------
@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.InstanceNorm1d])
def test_running_statistics_in_training_mode_are_refused_naming_the_module(norm):
    model = nn.Sequential(nn.Linear(4, 8), norm(8, track_running_stats=True), nn.Linear(8, 1))
    with pytest.raises(ValueError, match=rf"model\.1 \({norm.__name__}\) updates running statistics"):
        mlkit.MAML(model)


class CountingLayer(nn.Module):
    """Writes to a buffer in forward: adaptation cannot give each task its own copy."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x


@pytest.mark.parametrize("batched", [True, False])
def test_a_module_writing_to_its_buffers_is_refused_on_both_paths_and_left_unchanged(batched):
    model = nn.Sequential(nn.Linear(3, 8), CountingLayer(), nn.Linear(8, 1))
    maml = mlkit.MAML(model, batched=batched)
    with pytest.raises(ValueError, match=r"model\.1 \(CountingLayer\) writes to its buffer 'calls'"):
        maml.meta_loss(random_tasks())
    assert model[1].calls.item() == 0


def test_frozen_eval_mode_batch_norm_is_accepted_and_both_paths_agree(float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model[1].eval()
    before = model[1].running_mean.clone()
    maml = mlkit.MAML(model, inner_lr=0.1, inner_steps=2)
    batch = random_tasks()
    batched, looped = maml.meta_loss(batch), maml.meta_loss(batch, batched=False)
    torch.testing.assert_close(batched, looped)
    torch.testing.assert_close(torch.autograd.grad(batched, list(model.parameters())),
                               torch.autograd.grad(looped, list(model.parameters())))
    assert torch.equal(model[1].running_mean, before)


# Random layers ------------------------------------------------------------------------------------------------
def dropout_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Dropout(0.2), nn.Linear(40, 1))


@pytest.mark.parametrize("batched", [True, False])
def test_dropout_runs_on_both_paths_and_through_fit_and_evaluate(batched):
    maml = mlkit.MAML(dropout_mlp(), batched=batched)
    family = mlkit.tasks.Sinusoid(shots=5, queries=5)
    loss = maml.meta_loss(family.sample(4))
    loss.backward()
    assert torch.isfinite(loss)
    mlkit.fit(maml, family, iterations=3, meta_batch=4, device="cpu", progress=False)
    assert maml.query_predictions(family.sample(3)).shape == (3, 5, 1)
    mean, _ = mlkit.evaluate(maml, family, tasks=20)
    assert mean > 0


@pytest.mark.parametrize("images", [5, 25])
def test_conv_net_with_dropout2d_runs_whether_the_cpu_vmaps_or_loops(images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Flatten(), nn.Linear(4 * 28 * 28, 5))
    maml = mlkit.MAML(model, loss="cross_entropy", inner_lr=0.1)
    x = torch.rand(2, 2 * images, 1, 28, 28)
    y = torch.arange(5).repeat(2 * images // 5).expand(2, -1)
    batch = mlkit.TaskBatch(x[:, :images], y[:, :images], x[:, images:], y[:, images:])
    assert maml.vectorize(batch.support_x) == (images < 16)
    maml.meta_loss(batch).backward()


def test_evaluate_runs_in_eval_mode_and_restores_every_module_mode():
    maml = mlkit.MAML(dropout_mlp())
    family = mlkit.tasks.Sinusoid()
    maml.model[2].eval()  # a user's own choice of modes must survive
    first, second = mlkit.evaluate(maml, family, tasks=50), mlkit.evaluate(maml, family, tasks=50)
    assert first == second  # dropout is off: the same seed gives the same figures
    assert maml.training and maml.model.training and not maml.model[2].training


# Readable errors: the batched path says what the loop says -----------------------------------------------------
@pytest.mark.parametrize("batched", [True, False])
def test_wrong_input_width_is_reported_with_the_shape_on_both_paths(batched):
    maml = mlkit.MAML(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)), batched=batched)
    batch = random_tasks(features=4)
    with pytest.raises(ValueError, match=r"cannot run on support_x of the first task, shape \[5, 4\].*mat1 and mat2"):
        maml.meta_loss(batch)


@pytest.mark.parametrize("batched", [True, False])
def test_label_out_of_range_names_the_label_and_the_class_count(batched):
    batch = classification_tasks()
    bad = mlkit.TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y.clone().fill_(7))
    maml = mlkit.MAML(classifier(), loss="cross_entropy", batched=batched)
    with pytest.raises(ValueError, match=r"query_y contains label 7, but the model outputs 3 classes"):
        maml.meta_loss(bad)


@pytest.mark.parametrize("batched", [True, False])
def test_float_labels_for_cross_entropy_say_convert_to_long(batched):
    batch = classification_tasks()
    bad = mlkit.TaskBatch(batch.support_x, batch.support_y.float(), batch.query_x, batch.query_y)
    maml = mlkit.MAML(classifier(), loss="cross_entropy", batched=batched)
    with pytest.raises(ValueError, match=r"support_y holds torch.float32 values.*\.long\(\)"):
        maml.meta_loss(bad)


def test_conv4_input_without_channel_dimension_is_reported_without_vmap_groups():
    maml = mlkit.MAML(mlkit.models.Conv4(1, ways=5, filters=16), loss="cross_entropy")
    x = torch.rand(2, 10, 28, 28)
    y = torch.arange(5).repeat(2).expand(2, -1)
    with pytest.raises(ValueError, match=r"shape \[5, 28, 28\].*to have 1 channels, but got 5") as error:
        maml.meta_loss(mlkit.TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]))
    assert "groups=2" not in str(error.value)  # vmap's grouped convolution, which the user never asked for


def test_a_failure_inside_vmap_is_re_raised_from_the_per_task_path():
    def picky_loss(pred, target):
        if pred.shape[0] != 5:
            raise RuntimeError("picky_loss wants five examples")
        return ((pred - target) ** 2).mean()

    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1), loss=picky_loss)
    with pytest.raises(RuntimeError, match="picky_loss wants five examples") as error:
        maml.meta_loss(random_tasks(queries=7))
    assert error.value.__suppress_context__


# Silent shape mistakes ------------------------------------------------------------------------------------------
def test_adapting_a_batch_of_tasks_as_one_task_is_refused_once_the_input_shape_is_known():
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    family = mlkit.tasks.Sinusoid()
    mlkit.fit(maml, family, iterations=1, meta_batch=2, device="cpu", progress=False)
    batch = family.sample(4)
    with pytest.raises(ValueError, match="looks like a batch of tasks"):
        maml.adapt(batch.support_x, batch.support_y)
    with pytest.raises(ValueError, match="looks like a batch of tasks"):
        maml.predict(maml.params(), batch.query_x)
    assert maml.adapt(batch.support_x[0], batch.support_y[0])["0.weight"].shape == (8, 1)


def test_a_task_batch_of_one_task_without_the_task_dimension_is_refused():
    x, y = torch.randn(10, 1), torch.randn(10, 1)
    with pytest.raises(ValueError, match=r"3 or more dims\), got shape \[10, 1\].*x\[None\]"):
        mlkit.TaskBatch(x, y, x, y)


def test_regression_targets_without_the_output_dimension_are_refused():
    batch = mlkit.tasks.Sinusoid().sample(4)
    flat = mlkit.TaskBatch(batch.support_x, batch.support_y[..., 0], batch.query_x, batch.query_y[..., 0])
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    with pytest.raises(ValueError, match=r"support_y has per-example shape \[\], but the model predicts \[1\]"):
        maml.meta_loss(flat)


# Frozen parameters -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", [mlkit.MAML, mlkit.MetaSGD, mlkit.Reptile])
def test_frozen_parameters_move_in_neither_loop(algorithm):
    torch.manual_seed(0)
    model = mlkit.models.MLP(1, [16, 16], 1)
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    algo = algorithm(model, inner_lr=0.05)
    batch = mlkit.tasks.Sinusoid().sample(2)
    adapted = algo.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    assert adapted["0.weight"] is model[0].weight
    assert not torch.equal(adapted["2.weight"], model[2].weight)
    mlkit.fit(algo, mlkit.tasks.Sinusoid(), iterations=5, meta_batch=2, device="cpu", progress=False)
    assert torch.equal(model[0].weight, frozen)


# Devices, settings ---------------------------------------------------------------------------------------------
def test_inputs_on_another_device_are_refused_with_how_to_move_them():
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    x = torch.randn(5, 1, device="meta")
    with pytest.raises(ValueError, match=r"support_x is on meta but the model is on cpu.*\.to\('cpu'\)"):
        maml.adapt(x, x)
    with pytest.raises(ValueError, match="the batch is on meta"):
        maml.meta_loss(mlkit.TaskBatch(x[None], x[None], x[None], x[None]))


@pytest.mark.parametrize("name, value", [("inner_lr", "oops"), ("inner_lr", float("nan")), ("inner_lr", {"0": 0.1}),
                                         ("inner_steps", -2), ("inner_steps", 1.5), ("first_order", "yes")])
def test_setting_a_bad_hyperparameter_fails_at_once(name, value):
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    with pytest.raises(ValueError, match=name):
        setattr(maml, name, value)


def test_task_batch_to_a_dtype_keeps_integer_labels():
    batch = classification_tasks().to(torch.float64)
    assert batch.support_x.dtype == torch.float64 and batch.support_y.dtype == torch.long
    assert batch.to("cpu", torch.float16).query_y.dtype == torch.long


class NoDeviceFamily:
    def sample(self, tasks, generator=None):
        return random_tasks(tasks=tasks)


@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_fit_and_evaluate_check_the_family_protocol_the_same_way(call):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1))
    run = (lambda: mlkit.fit(maml, NoDeviceFamily(), iterations=1, progress=False)) if call == "fit" else \
        (lambda: mlkit.evaluate(maml, NoDeviceFamily(), tasks=2))
    with pytest.raises(ValueError, match=r"sample must accept \(tasks, generator=None, device=None\)"):
        run()
    assert isinstance(mlkit.tasks.Sinusoid(), mlkit.TaskFamily) and not isinstance(object(), mlkit.TaskFamily)


# Your own losses and models (issue 25) ---------------------------------------------------------------------------
import copy  # noqa: E402
import warnings  # noqa: E402

import torch.nn.functional as F  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR, StepLR  # noqa: E402


def focal_loss(pred, target, gamma=2.0):
    log_p = F.log_softmax(pred, -1).gather(1, target[:, None])[:, 0]
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


def gaussian_nll(pred, target):
    """A vmap-able Gaussian NLL: pred [n, 2] = (mean, raw scale), target [n, 1]."""
    var = F.softplus(pred[:, 1:]) + 1e-3
    return 0.5 * (var.log() + (target - pred[:, :1]) ** 2 / var).mean()


def meta_grad(algorithm, batch):
    return torch.cat([g.flatten() for g in torch.autograd.grad(algorithm.meta_loss(batch), list(algorithm.parameters()))])


@pytest.mark.parametrize("loss", ["lambda", "focal_gamma_0", "nll"])
def test_a_custom_cross_entropy_gives_the_builtin_meta_gradient_on_both_paths(loss, float64):
    batch = classification_tasks().to(torch.float64)
    reference = meta_grad(mlkit.MAML(classifier(), "cross_entropy", inner_lr=0.3, inner_steps=2), batch)
    if loss == "nll":
        model, loss_fn = nn.Sequential(classifier(), nn.LogSoftmax(-1)), nn.NLLLoss()
    else:
        model = classifier()
        loss_fn = (lambda p, y: F.cross_entropy(p, y)) if loss == "lambda" else (lambda p, y: focal_loss(p, y, 0.0))
    for batched in (True, False):
        maml = mlkit.MAML(copy.deepcopy(model), loss_fn, inner_lr=0.3, inner_steps=2, batched=batched)
        torch.testing.assert_close(meta_grad(maml, batch), reference)


@pytest.mark.parametrize("loss", ["focal", "label_smoothing", "gaussian_nll", "torch_gaussian_nll"])
def test_focal_label_smoothing_and_gaussian_nll_train_with_batched_equal_to_loop(loss, float64):
    if loss in ("focal", "label_smoothing"):
        batch, model = classification_tasks().to(torch.float64), classifier()
        loss_fn = focal_loss if loss == "focal" else nn.CrossEntropyLoss(label_smoothing=0.1)
    else:
        batch, model = random_tasks().to(torch.float64), mlkit.models.MLP(3, [16], 2)
        loss_fn = gaussian_nll if loss == "gaussian_nll" else (
            lambda p, y: F.gaussian_nll_loss(p[:, :1], y, F.softplus(p[:, 1:]) + 1e-3))
    loop = meta_grad(mlkit.MAML(copy.deepcopy(model), loss_fn, inner_lr=0.1, batched=False), batch)
    batched = mlkit.MAML(copy.deepcopy(model), loss_fn, inner_lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(meta_grad(batched, batch), loop)
    # torch's gaussian_nll_loss checks its variance with a data-dependent `if`: the loss is named as the culprit
    assert [str(w.message)[:8] for w in caught if "vmap" in str(w.message)] == (
        ["the loss"] if loss == "torch_gaussian_nll" else [])


def test_a_custom_loss_with_task_classification_checks_labels_and_reports_accuracy():
    maml = mlkit.MAML(classifier(ways=3), focal_loss, task="classification")
    assert mlkit.train.metric_name(maml) == "accuracy"
    bad = classification_tasks(ways=4)
    with pytest.raises(ValueError, match=r"support_y contains label 3, but the model outputs 3 classes"):
        maml.meta_loss(bad)
    mean, _ = mlkit.evaluate(maml, FixedFamily(classification_tasks()), tasks=3)
    assert 0 <= mean <= 100


class FixedFamily:
    def __init__(self, batch):
        self.batch = batch

    def sample(self, tasks, generator=None, device=None):
        return self.batch[:tasks]


@pytest.mark.parametrize("loss, task, message", [("mse", "classification", "contradicts loss='mse'"),
                                                 ("cross_entropy", "regression", "contradicts"),
                                                 (focal_loss, "labels", "task must be 'classification'")])
def test_a_task_that_is_unknown_or_contradicts_the_loss_is_refused(loss, task, message):
    with pytest.raises(ValueError, match=message):
        mlkit.MAML(classifier(), loss, task=task)


@pytest.mark.parametrize("batched", [True, False])
def test_an_unreduced_loss_is_refused_on_both_paths(batched):
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1), nn.MSELoss(reduction="none"), batched=batched)
    with pytest.raises(ValueError, match=r"the loss must return a scalar .* returned \[5, 1\].*reduction='mean'"):
        maml.meta_loss(random_tasks())


def test_the_learned_optimizer_trains_in_fit_and_a_scheduler_scales_its_steps():
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    before = copy.deepcopy(maml.state_dict())
    seen = []
    mlkit.fit(maml, mlkit.tasks.Sinusoid(), iterations=3, meta_batch=2, device="cpu", progress=False,
              optimizer=mlkit.optim.LearnedOptimizer, scheduler=lambda opt: StepLR(opt, 1, gamma=0.5),
              on_step=lambda step: seen.append(step.lr))
    assert seen == [1.0, 0.5, 0.25]
    assert not torch.equal(before["model.0.weight"], maml.model[0].weight)


def test_learned_optimizer_step_size_follows_its_lr():
    torch.manual_seed(0)
    x0 = torch.randn(5)
    a, b = nn.Parameter(x0.clone()), nn.Parameter(x0.clone())
    full, half = mlkit.optim.LearnedOptimizer([a]), mlkit.optim.LearnedOptimizer([b])
    LambdaLR(half, lambda i: 0.5)
    assert half.param_groups[0]["lr"] == 0.5
    for p, opt in ((a, full), (b, half)):
        p.grad = torch.linspace(-1, 1, 5)
        opt.step()
    torch.testing.assert_close(b.detach() - x0, 0.5 * (a.detach() - x0))
    old = full.state_dict()
    old["param_groups"] = [{("scale" if k == "lr" else k): v for k, v in g.items()} for g in old["param_groups"]]
    half.load_state_dict(old)  # a state saved when the multiplier was called "scale"
    assert half.param_groups[0]["lr"] == 1.0


class DataDependentIf(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        h = self.linear(x)
        return h * 2 if h.sum() > 0 else h


class GRUModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.out = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.gru(x[:, None])[0][:, -1])


class ItemScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x) * float(x.abs().max().item())


class BooleanMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        h = self.linear(x)
        return h + 0 * h[h > 0].sum()


@pytest.mark.parametrize("model, where", [(DataDependentIf, r"model \(DataDependentIf\)"), (GRUModel, r"model\.gru \(GRU\)"),
                                          (ItemScale, r"model \(ItemScale\)"), (BooleanMask, r"model \(BooleanMask\)")])
@pytest.mark.parametrize("algorithm", [mlkit.MAML, mlkit.Reptile])
def test_a_model_vmap_cannot_run_falls_back_to_the_loop_with_one_warning_naming_the_layer(model, where, algorithm):
    torch.manual_seed(0)
    net, batch = model(), random_tasks()
    reference = algorithm(copy.deepcopy(net), batched=False)
    fallback = algorithm(net)
    with pytest.warns(UserWarning, match=rf"{where} cannot run under torch.func.vmap .*batched=False"):
        loss = fallback.meta_loss(batch)
    torch.testing.assert_close(loss, reference.meta_loss(batch))
    assert fallback.batched is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fallback.meta_loss(batch)
        torch.testing.assert_close(fallback.query_predictions(batch), reference.query_predictions(batch))


def test_evaluate_and_query_predictions_work_under_inference_mode():
    torch.manual_seed(0)
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1), inner_lr=0.1, inner_steps=2)
    family = mlkit.tasks.Sinusoid()
    batch = family.sample(3)
    expected, score = maml.query_predictions(batch), mlkit.evaluate(maml, family, tasks=6)
    adapted = maml.adapt(batch.support_x[0], batch.support_y[0], differentiable=False)
    with torch.inference_mode():
        torch.testing.assert_close(maml.query_predictions(batch), expected)
        assert mlkit.evaluate(maml, family, tasks=6) == score
        torch.testing.assert_close(maml.adapt(batch.support_x[0], batch.support_y[0]), adapted)


def test_adapt_on_a_fresh_model_refuses_a_batch_of_tasks():
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    batch = mlkit.tasks.Sinusoid().sample(4)
    with pytest.raises(ValueError, match=r"support_x \[4, 10, 1\] looks like a batch of tasks.*batch\.support_x\[i\]"):
        maml.adapt(batch.support_x, batch.support_y)
    assert maml.adapt(batch.support_x[0], batch.support_y[0])["0.weight"].shape == (8, 1)


def test_predict_refuses_a_partial_params_dict():
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
    batch = mlkit.tasks.Sinusoid().sample(1)
    params = maml.adapt(batch.support_x[0], batch.support_y[0])
    with pytest.raises(ValueError, match=r"missing \['0.weight', '0.bias', '2.bias'\].*whole dict from adapt"):
        maml.predict({"2.weight": params["2.weight"]}, batch.query_x[0])
    with pytest.raises(ValueError, match="prototypes"):
        mlkit.ProtoNet(classifier()).predict(params, torch.randn(2, 4))


@pytest.mark.parametrize("call", ["MAML", "Reptile", "MetaSGD", "setter", "adapt", "evaluate", "layer dict"])
def test_negative_inner_learning_rates_are_refused_everywhere(call):
    model = mlkit.models.MLP(1, [8], 1)
    batch = mlkit.tasks.Sinusoid().sample(1)
    run = {"MAML": lambda: mlkit.MAML(model, inner_lr=-0.1), "Reptile": lambda: mlkit.Reptile(model, inner_lr=-0.1),
           "MetaSGD": lambda: mlkit.MetaSGD(model, inner_lr=-0.1),
           "setter": lambda: setattr(mlkit.MAML(model), "inner_lr", -1),
           "adapt": lambda: mlkit.MAML(model).adapt(batch.support_x[0], batch.support_y[0], inner_lr=-0.1),
           "evaluate": lambda: mlkit.evaluate(mlkit.MAML(model), mlkit.tasks.Sinusoid(), tasks=2, inner_lr=-0.1),
           "layer dict": lambda: mlkit.MAML(model, inner_lr={"": 0.1, "2": -0.2})}[call]
    with pytest.raises(ValueError, match=r"inner_lr(\['2'\])? must be >= 0"):
        run()


def test_a_per_layer_prefix_that_matches_nothing_is_refused():
    with pytest.raises(ValueError, match=r"inner_lr prefix 'head' matches no parameter.*'0.weight'"):
        mlkit.MAML(mlkit.models.MLP(1, [8], 1), inner_lr={"": 0.1, "head": 0.5})


def _empty(part):
    batch = classification_tasks()
    if part == "tasks":
        return mlkit.TaskBatch(batch.support_x[:0], batch.support_y[:0], batch.query_x[:0], batch.query_y[:0])
    if part == "support":
        return mlkit.TaskBatch(batch.support_x[:, :0], batch.support_y[:, :0], batch.query_x, batch.query_y)
    return mlkit.TaskBatch(batch.support_x, batch.support_y, batch.query_x[:, :0], batch.query_y[:, :0])


@pytest.mark.parametrize("algorithm", [lambda: mlkit.MAML(classifier(), "cross_entropy"),
                                       lambda: mlkit.ProtoNet(classifier())], ids=["MAML", "ProtoNet"])
@pytest.mark.parametrize("part, message", [("tasks", "the batch has 0 tasks"),
                                           ("support", "every task's support set in the batch is empty"),
                                           ("query", "every task's query set in the batch is empty")],
                         ids=["tasks", "support", "query"])
def test_empty_sets_and_zero_tasks_are_refused(algorithm, part, message):
    with pytest.raises(ValueError, match=message):
        algorithm().meta_loss(_empty(part))


@pytest.mark.parametrize("algorithm", [lambda: mlkit.MAML(classifier(), "cross_entropy"),
                                       lambda: mlkit.MAML(classifier(), focal_loss, task="classification"),
                                       lambda: mlkit.ProtoNet(classifier())], ids=["MAML", "focal", "ProtoNet"])
def test_uint8_labels_are_refused_saying_convert_to_long(algorithm):
    batch = classification_tasks()
    batch = mlkit.TaskBatch(batch.support_x, batch.support_y.to(torch.uint8), batch.query_x, batch.query_y)
    with pytest.raises(ValueError, match=r"support_y holds torch.uint8 class labels.*\.long\(\)"):
        algorithm().meta_loss(batch)


def test_protonet_adapt_refuses_mismatched_lengths_and_an_empty_support_set():
    protonet, x, y = mlkit.ProtoNet(classifier()), torch.randn(6, 4), torch.arange(3).repeat(2)
    with pytest.raises(ValueError, match="support_x has 6 examples but support_y has 4"):
        protonet.adapt(x, y[:4])
    with pytest.raises(ValueError, match=r"support_x has no examples \(shape \[0, 4\]\)"):
        protonet.adapt(x[:0], y[:0])


@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_seed_none_is_refused_with_how_to_get_a_fresh_stream(call):
    maml, family = mlkit.MAML(mlkit.models.MLP(1, [8], 1)), mlkit.tasks.Sinusoid()
    with pytest.raises(ValueError, match=r"seed must be an integer.*random\.randrange"):
        if call == "fit":
            mlkit.fit(maml, family, iterations=1, seed=None, progress=False)
        else:
            mlkit.evaluate(maml, family, tasks=2, seed=None)


def test_resuming_with_another_scheduler_lambda_is_refused_and_with_the_same_one_resumes(tmp_path):
    path, family = tmp_path / "run.pt", mlkit.tasks.Sinusoid()
    maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))

    def run(iterations, factor):
        return mlkit.fit(maml, family, iterations, meta_batch=2, device="cpu", progress=False, checkpoint=path,
                         scheduler=lambda opt: LambdaLR(opt, lambda i: factor))

    run(2, 1.0)
    with pytest.raises(ValueError, match=r"other settings: scheduler='.*<lambda>#[0-9a-f]{12}', not '.*<lambda>#"):
        run(4, 0.1)
    with pytest.raises(ValueError, match="other settings: scheduler="):
        mlkit.fit(maml, family, 4, meta_batch=2, device="cpu", progress=False, checkpoint=path,
                  scheduler=lambda opt: StepLR(opt, 1))
    assert run(4, 1.0).iteration == [1, 2, 3, 4]


@pytest.mark.parametrize("form", ["scalar", "per_layer"])
def test_a_learnable_inner_lr_gets_the_finite_difference_gradient(form, float64):
    torch.manual_seed(0)
    batch = random_tasks().to(torch.float64)
    alpha = nn.Parameter(torch.tensor(0.2))
    maml = mlkit.MAML(mlkit.models.MLP(3, [8], 1), inner_lr=alpha if form == "scalar" else {"": 0.1, "2": alpha},
                      inner_steps=2)
    assert any(p is alpha for p in maml.parameters())
    grads = {}
    for batched in (True, False):
        (grad,) = torch.autograd.grad(maml.meta_loss(batch, batched=batched), [alpha])
        grads[batched] = grad
    eps = 1e-6
    with torch.no_grad():
        alpha += eps
        up = maml.meta_loss(batch, batched=False)
        alpha -= 2 * eps
        down = maml.meta_loss(batch, batched=False)
        alpha += eps
    torch.testing.assert_close(grads[True], (up - down) / (2 * eps))
    torch.testing.assert_close(grads[False], grads[True])
    mlkit.fit(maml, FixedFamily(batch), iterations=2, meta_batch=2, device="cpu", progress=False)
    assert alpha.item() != 0.2
    assert maml.settings()["inner_lr"] == ("learned" if form == "scalar" else {"": 0.1, "2": "learned"})
    restored = mlkit.MAML(mlkit.models.MLP(3, [8], 1), inner_lr=nn.Parameter(torch.tensor(0.5)) if form == "scalar"
                          else {"": 0.1, "2": nn.Parameter(torch.tensor(0.5))}, inner_steps=2)
    restored.load_state_dict(maml.state_dict())
    assert next(iter(restored.learned_lrs.values())).item() == alpha.item()


def test_reptile_and_metasgd_refuse_a_learnable_inner_lr():
    for algorithm in (mlkit.Reptile, mlkit.MetaSGD):
        with pytest.raises(ValueError, match="inner_lr"):
            algorithm(mlkit.models.MLP(1, [8], 1), inner_lr=nn.Parameter(torch.tensor(0.1)))


def test_fit_takes_an_optimizer_instance_and_matches_the_factory():
    family, results = mlkit.tasks.Sinusoid(), []
    for form in ("instance", "factory"):
        torch.manual_seed(0)
        maml = mlkit.MAML(mlkit.models.MLP(1, [8], 1))
        optimizer = torch.optim.SGD(maml.parameters(), lr=0.05) if form == "instance" else \
            (lambda ps: torch.optim.SGD(ps, lr=0.05))
        results.append(mlkit.fit(maml, family, iterations=3, meta_batch=2, device="cpu", progress=False,
                                 optimizer=optimizer).loss)
    assert results[0] == results[1]
    other = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds 2 tensors that are not parameters of the algorithm"):
        mlkit.fit(mlkit.MAML(mlkit.models.MLP(1, [8], 1)), family, 1, optimizer=other, progress=False)
    with pytest.raises(ValueError, match="meta_lr applies to a named optimizer"):
        mlkit.fit(maml, family, 1, optimizer=torch.optim.SGD(maml.parameters(), lr=0.1), meta_lr=0.1, progress=False)
