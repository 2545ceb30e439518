"""Cluster plumbing: sweeps through Hydra multirun, SLURM allocation checks, launcher configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from lit_linearizer.cluster import REQUEUE_SIGNALS, check_slurm_allocation
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
def test_launcher_presets_compose(launcher, monkeypatch):
    GlobalHydra.instance().clear()
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # as in a launcher: not set (an earlier test may have)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    expected = {"local": "LocalLauncher", "slurm": "SlurmLauncher"}[launcher]
    assert cfg.hydra.launcher._target_.endswith(expected)
    # A sweep launcher resolves hydra.sweep.dir (and with it paths.*) before Hydra has set its config: the run's
    # paths must not need ${hydra:...} then (they did: InterpolationResolutionError, HydraConfig was not set).
    assert not HydraConfig.initialized()
    sweep_dir = cfg.hydra.sweep.dir
    assert Path(sweep_dir).is_absolute() and "multiruns" in sweep_dir
    if launcher == "slurm":  # nothing assumed about the node: no GPUs, memory or partition unless asked for
        assert cfg.hydra.launcher.gpus_per_node is None and cfg.hydra.launcher.mem_gb is None
        assert cfg.hydra.launcher.additional_parameters.requeue is True
    GlobalHydra.instance().clear()


def test_submitit_signal_is_a_requeue_signal_and_every_trainer_takes_the_slurm_overrides():
    """submitit asks SLURM for USR2 before the time limit (train.sbatch for USR1): both stop, save and requeue. The
    sbatch script passes trainer.num_nodes and trainer.devices to whatever trainer preset the user picked."""
    from submitit.slurm.slurm import SlurmExecutor  # noqa: F401  (the launcher's backend is installed)

    assert {"SIGUSR1", "SIGUSR2"} <= set(REQUEUE_SIGNALS)
    for trainer in sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml")):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"trainer={trainer}", "trainer.num_nodes=1", "trainer.devices=2"])
        assert cfg.trainer.num_nodes == 1 and cfg.trainer.devices == 2, trainer
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
         "model.optimizer.lr=1e-3,3e-3", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "logger=none", "data.batch_size=16",
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


@pytest.mark.slow
def test_local_launcher_sweep_as_documented(tmp_path, session_dirs):
    """`linearizer train -m hydra/launcher=local ...` as docs/cluster.md writes it (no hydra.sweep.dir, run from
    another directory): the launcher resolves the sweep dir before Hydra sets its config, which used to fail with
    InterpolationResolutionError (HydraConfig was not set)."""
    env = {**cli_env(tmp_path, session_dirs), "OMP_NUM_THREADS": "1"}
    del env["LINEARIZER_LOG_DIR"]  # outputs/ of the directory the command runs in, as for a user
    env["PYTHONPATH"] = str(REPO_ROOT)
    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "lit_linearizer", "train", "-m", "hydra/launcher=local", "experiment=mnist_one_step",
         "model.optimizer.lr=1e-3,3e-3", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "logger=none", "data.batch_size=16",
         "evaluate_after_fit=false", *TINY_ONE_STEP],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    runs = sorted((workdir / "outputs" / "mnist_one_step" / "multiruns").glob("*/[0-9]"))
    assert [p.name for p in runs] == ["0", "1"], result.stderr[-2000:]
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
