"""The GPU path: runs only where CUDA is available (skipped on CPU-only machines and in CI)."""
import pytest
import torch

import mlkit
from conftest import flat_grad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def conv_tasks(device, tasks=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tasks, 10, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(5).repeat(2).expand(tasks, -1)
    return mlkit.tasks.TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:]).to(device)


def test_auto_device_is_cuda():
    assert mlkit.resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("bn", ["mlkit", "torch"])
def test_cuda_meta_gradient_equals_cpu_and_loop(first_order, bn):
    grads = {}
    for device, batched in (("cpu", True), ("cuda", True), ("cuda", False)):
        torch.manual_seed(0)
        model = mlkit.models.Conv4(1, 5, filters=16)
        if bn == "torch":  # the same parameters in torch.nn.BatchNorm2d on batch statistics
            for i, layer in enumerate(model.features):
                if isinstance(layer, mlkit.models.BatchNorm):
                    model.features[i] = torch.nn.BatchNorm2d(16, track_running_stats=False)
        model = model.double().to(device)
        maml = mlkit.MAML(model, loss="cross_entropy", inner_lr=0.4, inner_steps=2, first_order=first_order)
        grads[device, batched] = flat_grad(maml.meta_loss(conv_tasks(device), batched=batched), maml.parameters()).cpu()
    torch.testing.assert_close(grads["cuda", True], grads["cpu", True], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grads["cuda", True], grads["cuda", False], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("algorithm", [mlkit.MAML, mlkit.MetaSGD])
def test_fit_and_evaluate_on_cuda(algorithm, tmp_path):
    torch.manual_seed(0)
    algo = algorithm(mlkit.models.MLP(1, [40, 40], 1), inner_lr=0.01)
    family = mlkit.tasks.Sinusoid()
    history = mlkit.fit(algo, family, iterations=300, device="cuda", checkpoint=tmp_path / "run.pt", progress=False)
    assert next(algo.parameters()).device.type == "cuda" and history.loss[-1] < history.loss[0]
    mse, ci = mlkit.evaluate(algo, family, tasks=200)  # at the trained inner steps: learned rates are tuned for them
    assert mse < 3.0 and ci > 0


def test_dropout_runs_batched_on_cuda_with_different_masks_per_task():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout2d(0.3),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 28 * 28, 5)).cuda()
    maml = mlkit.MAML(model, loss="cross_entropy", inner_lr=0.1)
    batch = conv_tasks("cuda").to(torch.float32)
    maml.meta_loss(batch).backward()
    out = mlkit.core.task_outputs(lambda p, x: torch.nn.functional.dropout(x, 0.5), {}, torch.ones(4, 3, 50, device="cuda"))
    masks = (out != 0).flatten(1)
    assert not any(torch.equal(masks[0], masks[t]) for t in range(1, 4))


@pytest.mark.parametrize("algorithm", ["reptile", "anil", "protonet"])
def test_new_algorithms_give_the_same_meta_gradient_on_cuda_as_on_the_cpu(algorithm):
    grads = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = mlkit.models.Conv4(1, 5, filters=16).double().to(device)
        algo = {"reptile": lambda: mlkit.Reptile(model, "cross_entropy", inner_lr=0.4, inner_steps=2),
                "anil": lambda: mlkit.ANIL(model, "cross_entropy", inner_lr=0.4, inner_steps=2),
                "protonet": lambda: mlkit.ProtoNet(model)}[algorithm]()
        grads[device] = flat_grad(algo.meta_loss(conv_tasks(device)), algo.parameters()).cpu()
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-6, atol=1e-8)
