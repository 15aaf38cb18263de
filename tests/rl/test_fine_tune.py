"""Fine-tuning (the evaluation protocol), training with checkpoints, and the shipped policies."""
import pytest
import torch

from mlkit import rl


def test_fine_tune_takes_fresh_policy_gradient_steps_at_the_given_rates(float64):
    torch.manual_seed(0)
    policy = rl.GaussianMLPPolicy(hidden=(8,), init_std=0.5).double()
    env = rl.Navigation2D(horizon=10)
    goals = env.sample_goals(3, torch.Generator().manual_seed(1), dtype=torch.float64)
    result = rl.fine_tune(policy, goals, steps=2, trajectories=5, lrs=(0.2, 0.1), env=env,
                          generator=torch.Generator().manual_seed(2))
    assert result.returns.shape == (3, 3, 5) and len(result.params) == 3
    assert result.mean_returns().shape == (3, 2 + 1)
    # replay the protocol by hand: step k uses trajectories drawn after step k-1 and the rate lrs[k]
    g = torch.Generator().manual_seed(2)
    params = {k: p.detach().expand(3, *p.shape) for k, p in policy.params().items()}
    for k, lr in enumerate((0.2, 0.1)):
        noise = torch.randn(3, 5, 10, 2, generator=g, dtype=torch.float64)
        traj = rl.rollout(rl.per_task_act(policy, params), goals, noise, env)
        torch.testing.assert_close(result.returns[:, k], traj.returns())
        x, y = rl.maml.pack(traj, rl.advantages(traj, 0.99))
        params = rl.adapt_tasks(policy, params, x, y, lr, create_graph=False)
        for name in params:
            torch.testing.assert_close(result.params[k + 1][name], params[name])


@pytest.mark.parametrize("kwargs", [{"steps": -1}, {"trajectories": 0}, {"lrs": ()}, {"lrs": (float("nan"),)},
                                    {"goals": torch.zeros(2)}])
def test_fine_tune_rejects_bad_arguments(kwargs):
    args = {"goals": torch.zeros(2, 2), **kwargs}
    with pytest.raises(ValueError):
        rl.fine_tune(rl.GaussianMLPPolicy(hidden=(4,)), **args)


def tiny_algorithm():
    torch.manual_seed(0)
    return rl.MAMLTRPO(rl.GaussianMLPPolicy(hidden=(8,)), env=rl.Navigation2D(horizon=5), trajectories=3)


def test_training_resumes_from_a_checkpoint_exactly(tmp_path):
    straight = tiny_algorithm()
    rl.train(straight, 3, meta_batch=2, seed=4, progress=False)
    resumed = tiny_algorithm()
    rl.train(resumed, 2, meta_batch=2, seed=4, checkpoint=tmp_path / "run.pt", progress=False)
    history = rl.train(resumed, 3, meta_batch=2, seed=4, checkpoint=tmp_path / "run.pt", progress=False)
    assert len(history.return_after) == 3
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_rejects_bad_arguments_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="iterations"):
        rl.train(tiny_algorithm(), 0)
    with pytest.raises(ValueError, match="directory"):
        rl.train(tiny_algorithm(), 1, checkpoint=tmp_path)
    rl.train(tiny_algorithm(), 1, meta_batch=2, checkpoint=tmp_path / "run.pt", progress=False)
    with pytest.raises(ValueError, match="written with"):
        rl.train(tiny_algorithm(), 2, meta_batch=3, checkpoint=tmp_path / "run.pt", progress=False)


@pytest.mark.parametrize("name", rl.PRETRAINED)
def test_shipped_policies_are_small_and_record_how_they_were_made(name):
    from importlib import resources
    size = (resources.files("mlkit.rl") / "pretrained" / f"navigation-{name}.pt").stat().st_size
    assert size < 2 * 1024 * 1024
    policy, info = rl.load_pretrained(name)
    assert isinstance(policy, rl.GaussianMLPPolicy)
    assert info["algorithm"]["inner_steps"] == (1 if name == "maml" else 0)
    assert len(info["history"]["return_after"]) == info["iterations"]
    assert info["script"] == "benchmarks/train_navigation.py"


def test_the_shipped_maml_policy_improves_with_one_policy_gradient_step():
    policy, _ = rl.load_pretrained("maml")
    goals = rl.Navigation2D().sample_goals(8, torch.Generator().manual_seed(5))
    returns = rl.fine_tune(policy, goals, steps=1, trajectories=20,
                           generator=torch.Generator().manual_seed(6)).mean_returns().mean(0)
    assert returns[1] > returns[0] + 5


def test_load_pretrained_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown pretrained"):
        rl.load_pretrained("ppo")
