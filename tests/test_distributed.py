"""mlkit.fit under torchrun: 2 gloo processes on the CPU are the single-process run, only split."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mlkit

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra):
    """This process's environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args, nproc=2, extra=(), timeout=240, **env):
    command = [sys.executable, "-m", "torch.distributed.run", *extra, f"--nproc-per-node={nproc}", str(WORKER), *args]
    return subprocess.run(command, env=environment(**env), capture_output=True, text=True, timeout=timeout)


def alone(tmp_path, *args):
    out = tmp_path / "alone"
    out.mkdir()
    subprocess.run([sys.executable, str(WORKER), "--out", str(out), *args], env=environment(), check=True, timeout=240)
    return out


def assert_same_parameters(a: Path, b: Path, names=("maml", "meta-sgd", "reptile")):
    for name in names:
        one, two = torch.load(a / f"{name}.pt"), torch.load(b / f"{name}.pt")
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-7, msg=f"{name} {key}")


def test_two_processes_give_the_parameters_of_one_and_resume_the_same_way(tmp_path):
    single = alone(tmp_path)
    split = tmp_path / "split"
    split.mkdir()
    first = torchrun("--out", str(split), "--iterations", "10", "--checkpoint", str(tmp_path / "run"), extra=["--standalone"])
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun("--out", str(split), "--checkpoint", str(tmp_path / "run"), extra=["--standalone"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_parameters(single, split)
    unchanged = torch.load(single / "maml.pt")
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in unchanged.values())


def test_two_nodes_through_a_rendezvous_give_the_parameters_of_one_process(tmp_path):
    single = alone(tmp_path, "--algorithms", "maml")
    split = tmp_path / "nodes"
    split.mkdir()
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
                               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                               "--rdzv-id=mlkit-test", str(WORKER), "--out", str(split), "--algorithms", "maml"],
                              env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert_same_parameters(single, split, names=("maml",))


def test_a_failing_rank_stops_the_run_with_its_error_instead_of_hanging(tmp_path):
    started = time.monotonic()
    run = torchrun("--out", str(tmp_path), "--algorithms", "maml", "--fail-at", "3", extra=["--standalone"])
    assert run.returncode != 0 and "injected failure on rank 1" in run.stderr
    assert time.monotonic() - started < 120


def test_without_torchrun_a_rank_waiting_for_a_dead_one_gives_up_after_the_timeout(tmp_path):
    env = environment(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), MLKIT_DISTRIBUTED_TIMEOUT="10")
    command = [sys.executable, str(WORKER), "--out", str(tmp_path), "--algorithms", "maml", "--fail-at", "3"]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    (_, err0), (_, err1) = (rank.communicate(timeout=180) for rank in ranks)
    assert "injected failure on rank 1" in err1
    assert ranks[0].returncode != 0 and "another rank failed or stalled" in err0


def test_a_meta_batch_the_ranks_cannot_split_is_refused(tmp_path):
    run = torchrun("--out", str(tmp_path), "--algorithms", "maml", "--meta-batch", "5", extra=["--standalone"])
    assert run.returncode != 0 and "meta_batch=5 cannot be split evenly over 2 ranks" in run.stderr


def test_distributed_true_without_a_launcher_says_how_to_launch():
    with pytest.raises(ValueError, match="launch the script with torchrun"):
        mlkit.fit(mlkit.MAML(mlkit.models.MLP(1, [4], 1)), mlkit.tasks.Sinusoid(), iterations=1, distributed=True,
                  progress=False)
