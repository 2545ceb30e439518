"""Cluster plumbing: sweeps through Hydra multirun, SLURM allocation checks, launcher configs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lit_linearizer.cluster import check_slurm_allocation
from lit_linearizer.config import CONFIG_DIR
from lit_linearizer.errors import ConfigError
from tests.conftest import REPO_ROOT, TINY_ONE_STEP, cli_env


def test_slurm_allocation_mismatch_is_one_line():
    srun = {
        "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "linearizer", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NUM_NODES": "2"
    }
    with pytest.raises(ConfigError) as info:
        check_slurm_allocation(2, 1, srun)
    message = str(info.value)
    assert "\n" not in message
    assert "trainer.devices=2 but --ntasks-per-node=4" in message and "trainer.num_nodes=1 but --nodes=2" in message
    check_slurm_allocation(4, 2, srun)  # matching: fine
    check_slurm_allocation(4, 2, {**srun, "SLURM_NTASKS_PER_NODE": "4(x2)"})
    check_slurm_allocation(8, 1, {})  # not under SLURM: nothing to check


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_launcher_presets_compose(launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    expected = {"local": "LocalLauncher", "slurm": "SlurmLauncher"}[launcher]
    assert cfg.hydra.launcher._target_.endswith(expected)
    GlobalHydra.instance().clear()


def test_sbatch_script_is_valid_bash_and_passes_the_allocation_through():
    script = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --signal=B:USR1@90" in text and "srun" in text and "trap " in text
    assert 'trainer.devices="${SLURM_NTASKS_PER_NODE' in text and 'trainer.num_nodes="${SLURM_JOB_NUM_NODES}"' in text
    assert "hydra.run.dir=" in text and "SLURM_JOB_ID" in text  # the requeued job finds its checkpoint


@pytest.mark.slow
def test_two_point_multirun_sweep(tmp_path, session_dirs):
    env = cli_env(tmp_path, session_dirs)
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "lit_linearizer", "train", "-m", "experiment=mnist_one_step",
         "model.optimizer.lr=1e-3,3e-3", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "logger=none", "data.batch_size=16",
         *TINY_ONE_STEP, f"hydra.sweep.dir={sweep_dir}"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    learning_rates = set()
    for run in runs:
        payload = json.loads((run / "metrics.json").read_text())
        assert payload["metrics"]["psnr_one_vs_multi"] > 80
        assert (run / "checkpoints" / "last.ckpt").is_file()
        learning_rates.add((run / "config.yaml").read_text().split("lr: ")[1].split()[0])
    assert learning_rates == {"0.001", "0.003"}
