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
