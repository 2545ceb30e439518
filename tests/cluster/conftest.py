"""The real single-node SLURM for tests/cluster: brought up once per session (as root), jobs cancelled after."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster.slurm import TOOLS, run


def _slurm_up() -> bool:
    try:
        return run(["sinfo", "-h", "-o", "%t"], check=False).stdout.strip() in ("idle", "mix", "alloc")
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster with ../shared/tools/slurm/up.sh (4 advertised CPUs: two 2-rank jobs side by side);
    stop it again at the end if this session started it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (../shared/tools/slurm/up.sh)")
    if not (TOOLS / "up.sh").is_file():
        pytest.skip(f"no SLURM test cluster tools in {TOOLS} (set LINEARIZER_SLURM_TOOLS)")
    was_up = _slurm_up()
    env = {**os.environ, "SLURM_CPUS": os.environ.get("LINEARIZER_SLURM_CPUS", "4")}
    result = subprocess.run([str(TOOLS / "up.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "SLURM UP" in result.stdout, result.stdout + result.stderr
    yield result.stdout.strip().splitlines()[-1]
    if not was_up and os.environ.get("LINEARIZER_SLURM_KEEP_UP") != "1":
        subprocess.run([str(TOOLS / "down.sh")], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def job_env(tmp_path_factory, slurm_cluster) -> dict[str, str]:
    """What a user's shell would pass to sbatch: caches in the session's temp dir, W&B offline, one thread per rank.
    LINEARIZER is left unset: the batch script must find the repository's command by itself."""
    from datamodules.mnist import write_embedded_mnist

    base = tmp_path_factory.mktemp("cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LINEARIZER"))}
    env.update(
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        PYTHONUNBUFFERED="1",
        LINEARIZER_DATA_DIR=str(base / "data"),
        LINEARIZER_CACHE_DIR=str(base / "cache"),
        LINEARIZER_LOG_DIR=str(base / "outputs"),
        **{name: str(base / "env" / name.lower()) for name in (
            "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "MPLCONFIGDIR", "TORCH_HOME", "XDG_CACHE_HOME")},
    )
    write_embedded_mnist(Path(env["LINEARIZER_DATA_DIR"]) / "embedded")  # once, before jobs read it side by side
    return env


@pytest.fixture
def jobs():
    """Job ids a test submits; whatever is still queued or running at its end is cancelled."""
    submitted: list[str] = []
    yield submitted
    for job in submitted:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
