"""Stop cleanly on a preemption signal, at a step boundary, and requeue the job under SLURM.

Clusters warn before they stop a job: SLURM sends the signal named in
``#SBATCH --signal=SIGUSR1@90`` 90 s before the allocation ends (or on preemption).
Lightning's own SLURM handler saves a checkpoint *inside* the signal handler, i.e. possibly
in the middle of an optimizer step. This callback only raises a flag in the handler; after
the current training batch, on every rank at once, it asks SLURM to requeue the job and
raises Lightning's ``SIGTERMException``, the same clean stop Lightning uses for SIGTERM. The
``OnExceptionCheckpoint`` in ``conf/callbacks/default.yaml`` then saves
``checkpoints/interrupted.ckpt``; the requeued job runs in the same directory (the sbatch
script pins it to the job id) and `linearizer train` resumes from that file by itself, so
the final weights equal those of an uninterrupted run (tests/test_resume.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class RequeueOnSignal(Callback):
    """On ``signal_name``: after the current batch, requeue (under SLURM) and stop with a checkpoint."""

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True):
        self.signum = getattr(signal, signal_name)
        self.requeue = requeue
        self._signalled = False
        self._previous_handler = None

    def _handler(self, signum, frame) -> None:
        self._signalled = True  # act at the next step boundary, never inside the handler

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous_handler = signal.signal(self.signum, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Every rank stops at the same step: any rank's signal stops all of them.
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        self._signalled = False
        if self.requeue and trainer.is_global_zero and os.environ.get("SLURM_JOB_ID"):
            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.warning("scontrol requeue %s: %s", job, "ok" if result.returncode == 0 else result.stderr.strip())
        log.warning("preemption signal: stopping after step %d", trainer.global_step)
        raise SIGTERMException()
