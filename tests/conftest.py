import contextlib
import functools
import http.server
import threading

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import mlkit  # noqa: E402

ALGORITHMS = {"maml": mlkit.MAML, "meta-sgd": mlkit.MetaSGD}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def flat_grad(loss, params):
    """All gradients of ``loss`` with respect to ``params``, concatenated into one vector."""
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params))])


def random_tasks(tasks=4, shots=5, queries=7, features=3, outputs=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, shots + queries, features, generator=g)
    y = torch.randn(tasks, shots + queries, outputs, generator=g)
    return mlkit.tasks.TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


@contextlib.contextmanager
def _serve(folder):
    """A quiet local HTTP server on 127.0.0.1 serving ``folder``; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def serve_folder():
    """``with serve_folder(folder) as base_url:`` serves ``folder`` over HTTP on 127.0.0.1 for the block."""
    return _serve
