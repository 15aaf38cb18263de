import pytest
import torch

from mlkit.tasks import TaskBatch


def make(sx=(4, 5, 3), sy=(4, 5, 1), qx=(4, 7, 3), qy=(4, 7, 1)):
    return TaskBatch(torch.zeros(sx), torch.zeros(sy), torch.zeros(qx), torch.zeros(qy))


def test_built_by_hand_from_tensors():
    batch = make()
    assert batch.tasks == 4 and batch[1].tasks == 1 and batch[1:3].tasks == 2


@pytest.mark.parametrize("shapes, match", [
    ({"sy": (4, 6, 1)}, "support_x has 5 examples per task but support_y has 6"),
    ({"qy": (4, 8, 1)}, "query_x has 7 examples per task but query_y has 8"),
    ({"qx": (3, 7, 3), "qy": (3, 7, 1)}, "number of tasks"),
    ({"qx": (4, 7, 2)}, "input shape"),
    ({"qy": (4, 7, 2)}, "target shape"),
    ({"sx": (4, 5)}, "3 or more dims"),
])
def test_shape_mismatch_raises(shapes, match):
    with pytest.raises(ValueError, match=match):
        make(**shapes)


def test_non_tensor_raises():
    with pytest.raises(ValueError, match="torch.Tensor"):
        TaskBatch([[0.0]], torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1))
