"""Checks that a run's trainer settings fit the SLURM allocation it runs in.

Lightning starts one process per SLURM task; if ``trainer.devices`` differs from
``--ntasks-per-node`` (or ``trainer.num_nodes`` from ``--nodes``) the job hangs at the first
collective or silently uses part of the allocation. Fail at start-up instead, in one line.
"""

from __future__ import annotations

import os
from typing import Mapping

from lit_linearizer.errors import ConfigError

__all__ = ["check_slurm_allocation"]


def check_slurm_allocation(devices, num_nodes, environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError when running under ``srun`` with a mismatched trainer configuration."""
    env = os.environ if environ is None else environ
    if "SLURM_STEP_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return  # not inside srun (e.g. an interactive allocation): Lightning spawns its own processes
    tasks_per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    problems = []
    if tasks_per_node.isdigit() and isinstance(devices, int) and devices != int(tasks_per_node):
        problems.append(f"trainer.devices={devices} but --ntasks-per-node={tasks_per_node}")
    if nodes and nodes.isdigit() and int(num_nodes or 1) != int(nodes):
        problems.append(f"trainer.num_nodes={num_nodes} but --nodes={nodes}")
    if problems:
        raise ConfigError(
            f"the trainer does not match the SLURM allocation: {'; '.join(problems)}; "
            "they must be equal (scripts/slurm/train.sbatch passes them through)"
        )
