"""DDP with 2 CPU processes (gloo), as a user runs it: `linearizer train trainer=ddp_cpu`.

Lightning relaunches the CLI for rank 1 with the same argv, so this exercises the real path
(subcommand kept in sys.argv, Hydra run dir shared, rank-zero-only writes, synced metrics).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from lit_linearizer.checkpoints import read_checkpoint
from tests.conftest import REPO_ROOT, TINY_ONE_STEP, cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_training_matches_single_process_evaluation(tmp_path, session_dirs):
    env = cli_env(tmp_path, session_dirs)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO_ROOT))
    run = tmp_path / "ddp"
    overrides = [
        "experiment=mnist_one_step",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=4",
        "trainer.num_sanity_val_steps=0",
        "logger=csv",
        "data.batch_size=32",  # global: 16 per process
        *TINY_ONE_STEP,
        "model.metrics.domain_classifier=mnist",
        f"hydra.run.dir={run}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "lit_linearizer", "train", *overrides],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ddp_metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 4

    # The ActNorm statistics were all-reduced: both ranks trained one set of weights, so the
    # checkpoint (rank zero's) is the model; evaluate it in a single process on the same data.
    evaluation = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "lit_linearizer", "eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
         "trainer.limit_val_batches=4", f"hydra.run.dir={evaluation}"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    single = json.loads((evaluation / "metrics.json").read_text())["metrics"]
    # 4 batches of 16 on each of 2 ranks = the same 128 images as 4 batches of 32 in one process.
    for name in ("loss", "psnr_one_vs_multi", "psnr_inversion", "fid_mnist_classifier"):
        assert single[name] == pytest.approx(ddp_metrics[name], rel=1e-4), name
    assert torch.isfinite(torch.tensor(ddp_metrics["fid_mnist_classifier"]))
