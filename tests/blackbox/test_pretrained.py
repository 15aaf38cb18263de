import importlib.resources
import math

import pytest
import torch

from mlkit.blackbox import gp, load_pretrained, rnn


def test_shipped_optimizer_loads_and_records_how_it_was_made():
    resource = importlib.resources.files("mlkit.blackbox").joinpath("pretrained/lstm.pt")
    assert resource.is_file() and len(resource.read_bytes()) < 2_000_000
    optimizer = load_pretrained()
    record = optimizer.record
    assert optimizer.max_dim == 6 and record["config"]["max_dim"] == 6
    assert isinstance(record["config"]["seed"], int) and record["config"]["loss"] in rnn.LOSSES
    assert record["command"].startswith("python -m mlkit.blackbox.pretrain")
    assert all(torch.isfinite(p).all() for p in optimizer.params().values())


@pytest.mark.slow
def test_shipped_optimizer_beats_random_search_on_heldout_gp_draws():
    # 128 draws meta-training never saw (dimensions 1-6), optimised by both methods. The paired differences of
    # best values after 30, 100 and 200 queries are independent across draws, so their mean minus 3.3 standard
    # errors (a one-sided 99.95% bound) must stay above zero: the verdict does not hang on a seed or on rounding.
    draws = gp.heldout_functions(128)
    optimizer = load_pretrained()
    params = {n: p.detach().double() for n, p in optimizer.params().items()}
    learned = rnn.best_so_far(params, draws, 200, seed=0, inputs=optimizer.inputs, standardise=optimizer.standardise)
    xs = torch.rand(128, 200, 6, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    random = torch.cummin(gp.gp_values(draws, xs * draws.mask[:, None, :]), 1).values
    for evaluations in (30, 100, 200):
        gain = random[:, evaluations - 1] - learned[:, evaluations - 1]
        assert gain.mean() - 3.3 * gain.std() / math.sqrt(gain.shape[0]) > 0, evaluations
