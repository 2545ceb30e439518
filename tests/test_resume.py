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
    assert first.returncode == 143, first.stderr[-3000:]
    saved = read_checkpoint(interrupted_dir / "checkpoints" / "interrupted.ckpt")
    assert saved["global_step"] == 9  # the batch the signal arrived in was completed
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
