import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The optimiser's work is many tiny operations: one thread is faster and gives the same numbers everywhere."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
