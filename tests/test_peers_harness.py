"""The harness of benchmarks/peers.py, on what .venv has (mlkit and the plain torch.func loop; no peers)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
sys.modules["peers"] = peers
_spec.loader.exec_module(peers)

TINY_CONV = peers.Config("tiny", "conv4", ways=2, shots=1, queries=2, meta_batch=3, inner_lr=0.4,
                         loss="cross_entropy", steps=2, first_order=False)


@pytest.mark.parametrize("name", ["a-s1-so", "a-s5-fo"])
def test_torch_func_loop_matches_mlkit(tmp_path, name):
    out = peers.check(peers.CONFIGS[name], ["mlkit", "torch.func loop"], "cpu", tmp_path / "ref.pt")
    assert out["mlkit"]["max_deviation"] == 0
    assert out["torch.func loop"]["max_deviation"] < 1e-10
    assert (tmp_path / "ref.pt").exists()


@pytest.mark.parametrize("first_order", [False, True])
def test_torch_twin_of_conv4_matches_mlkit(tmp_path, first_order):
    cfg = TINY_CONV._replace(first_order=first_order)
    out = peers.check(cfg, ["mlkit", "torch.func loop"], "cpu", tmp_path / "ref.pt")
    assert out["torch.func loop"]["max_deviation"] < 1e-10


def test_check_catches_a_wrong_meta_gradient(tmp_path, monkeypatch):
    def first_order_posing_as_second(state, batch, inner_lr, steps, first_order):
        return peers.step_torchfunc(state, batch, inner_lr, steps, True)

    monkeypatch.setitem(peers.IMPLS, "torch.func loop", (peers.make_plain, first_order_posing_as_second, None))
    out = peers.check(peers.CONFIGS["a-s1-so"], ["torch.func loop"], "cpu", tmp_path / "ref.pt")
    assert out["torch.func loop"]["max_deviation"] > peers.TOLERANCE


def test_check_reports_a_failing_implementation(tmp_path, monkeypatch):
    def broken(state, batch, inner_lr, steps, first_order):
        raise RuntimeError("boom\nmore")

    monkeypatch.setitem(peers.IMPLS, "torch.func loop", (peers.make_plain, broken, None))
    out = peers.check(peers.CONFIGS["a-s1-so"], ["mlkit", "torch.func loop"], "cpu", tmp_path / "ref.pt")
    assert out["torch.func loop"] == {"status": "error", "error": "RuntimeError: boom"}
    assert out["mlkit"]["max_deviation"] == 0


def test_flop_count_is_the_same_under_vmap_as_in_the_loop():
    maml = peers.make_mlkit(peers.mlkit_model(TINY_CONV, "cpu", torch.float32), TINY_CONV).own
    batch = peers.make_batch(TINY_CONV, "cpu", torch.float32)
    maml.meta_loss(batch)  # the first call probes the model once (a forward pass); count steady-state steps
    vmapped, stock, conv_backward = peers.count_flops(lambda: maml.meta_loss(batch).backward())
    looped, looped_stock, _ = peers.count_flops(lambda: maml.meta_loss(batch, batched=False).backward())
    assert conv_backward
    assert vmapped == looped == looped_stock  # the loop has no grouped convolutions
    assert stock > vmapped  # the stock formula overcounts vmap's grouped weight gradients


def test_config_filters():
    assert peers.selected(peers.CONFIGS, "b8") == ["b8-s1-so", "b8-s1-fo", "b8-s5-so", "b8-s5-fo"]
    assert peers.selected(peers.CONFIGS, "a-s5,c-fo") == ["a-s5-so", "a-s5-fo", "c-s1-fo", "c-s5-fo"]
    assert peers.selected(peers.CONFIGS, None) == list(peers.CONFIGS)


def _load_conv_kernels():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("conv_kernels", ROOT / "benchmarks" / "conv_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conv_kernels_layers_and_flops_match_the_flop_counter():
    conv_kernels = _load_conv_kernels()
    assert conv_kernels.layers(28) == [(1, 28), (64, 14), (64, 7), (64, 4)]
    for channels, size in conv_kernels.layers(12):
        per_task = conv_kernels.layer_steps(3, 2, channels, size, "cpu")["one per task"]
        with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
            per_task()
        assert counter.get_total_flops() == conv_kernels.layer_flops(3, 2, channels, size), channels
