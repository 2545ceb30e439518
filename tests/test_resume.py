"""Exact resume: a run interrupted by a real signal mid-epoch and resumed ends with the same weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lit_linearizer.checkpoints import read_checkpoint
from tests.conftest import REPO_ROOT, TINY_ONE_STEP, cli_env

RUN = [
    "experiment=mnist_one_step",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.deterministic=true",
    "logger=none",
    "data.batch_size=16",
    "evaluate_after_fit=false",
    "model.ema_decay=0.9",
    *TINY_ONE_STEP,
]


def _train(run_dir, env, extra=()):
    return subprocess.run(
        [sys.executable, "-m", "lit_linearizer", "train", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.parametrize(
    "signal_name",
    ["SIGTERM", pytest.param("SIGUSR1", marks=pytest.mark.slow)],
)
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, session_dirs, signal_name):
    env = cli_env(tmp_path, session_dirs)
    env["PYTHONPATH"] = str(REPO_ROOT)
    straight = _train(tmp_path / "straight", env)
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted_dir = tmp_path / "interrupted"
    # Step 9 is mid-way through the second epoch (6 batches per epoch).
    killer = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", "+callbacks.kill.step=9",
              f"+callbacks.kill.signal_name={signal_name}"]
    first = _train(interrupted_dir, env, killer)
    assert first.returncode == {"SIGTERM": 143, "SIGUSR1": 75}[signal_name], first.stderr[-3000:]
    saved = read_checkpoint(interrupted_dir / "checkpoints" / "interrupted.ckpt")
    # The signal is sent after PreemptionCheckpoint looked at step 9: the run stops at the next step boundary.
    assert saved["global_step"] == 10
    assert f"interrupted at step {saved['global_step']}" in first.stdout

    resumed = _train(interrupted_dir, env)  # same directory: resumes by itself
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert not (interrupted_dir / "checkpoints" / "interrupted.ckpt").exists()  # spent once finished

    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(interrupted_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "current_model_state"):  # EMA weights and raw weights
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}/{name} differs after resume"
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]


def assert_same_training_state(a: dict, b: dict) -> None:
    """Raw weights, EMA weights, every optimizer tensor, the scheduler and each rank's noise stream: bitwise."""
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):  # EMA weights and raw weights
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}/{name} differs after resume"
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        for name in state_a[i]:
            assert torch.equal(torch.as_tensor(state_a[i][name]), torch.as_tensor(state_b[i][name])), f"optimizer {i}"
    assert a["lr_schedulers"] == b["lr_schedulers"]
    noise_a, noise_b = a["lit_linearizer"]["noise_generators"], b["lit_linearizer"]["noise_generators"]
    assert len(noise_a) == len(noise_b)
    assert all(torch.equal(x["state"], y["state"]) for x, y in zip(noise_a, noise_b))


@pytest.mark.slow
def test_ddp_run_stopped_on_one_rank_resumes_exactly(tmp_path, session_dirs):
    """Two gloo ranks; the signal reaches rank zero only: both stop at the same step, and the resumed run's weights,
    EMA, optimizer and both ranks' noise streams equal those of an uninterrupted run, bit for bit."""
    from tests.test_distributed import free_port

    env = cli_env(tmp_path, session_dirs)
    env.update(PYTHONPATH=str(REPO_ROOT), MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    ddp = ["trainer=ddp_cpu"]

    def run(run_dir, extra=()):
        return _train(run_dir, {**env, "MASTER_PORT": str(free_port())}, [*ddp, *extra])

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    interrupted_dir = tmp_path / "interrupted"
    killer = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", "+callbacks.kill.step=8",
              "+callbacks.kill.signal_name=SIGUSR1"]
    first = run(interrupted_dir, killer)  # 6 steps per epoch: step 9 is inside the second epoch
    assert first.returncode == 75, first.stderr[-3000:]
    saved = read_checkpoint(interrupted_dir / "checkpoints" / "interrupted.ckpt")
    assert saved["global_step"] == 9 and len(saved["lit_linearizer"]["noise_generators"]) == 2
    resumed = run(interrupted_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(interrupted_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == 12
    assert_same_training_state(a, b)
    ranks = a["lit_linearizer"]["noise_generators"]
    assert not torch.equal(ranks[0]["state"], ranks[1]["state"])  # each rank has its own stream
