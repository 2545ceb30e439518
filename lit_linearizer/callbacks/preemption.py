"""Stop cleanly on SIGTERM or a preemption signal, save a checkpoint, requeue under SLURM.

Clusters warn before they stop a job: SLURM sends the signal named in
``#SBATCH --signal=SIGUSR1@90`` 90 s before the allocation ends (or on preemption), and
SIGTERM when it stops a job. Lightning already stops cleanly on SIGTERM: it finishes the
current batch, with every callback (EMA included), on every rank, then raises
``SIGTERMException``. This callback turns the preemption signal into that same path (its
handler re-raises the signal as SIGTERM; Lightning's own SLURM handler would instead save
*inside* the signal handler, possibly in the middle of an optimizer step). On the exception it
saves ``<dirpath>/interrupted.ckpt`` and, after a preemption signal under SLURM, requeues the
job. The requeued job runs in the same directory (the sbatch script pins it to the job id)
and `linearizer train` resumes from that file by itself, so the final weights equal those of
an uninterrupted run (tests/test_resume.py). A run that finishes removes the file; a crash
(any other exception) does not write one, so nothing resumes into a broken state.

Not a Lightning ``Checkpoint`` subclass on purpose: with one of those, ``fit()`` without a
checkpoint path looks for ``last.ckpt`` to resume from and warns when there is none.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["INTERRUPTED_CHECKPOINT", "PreemptionCheckpoint"]

log = logging.getLogger(__name__)

INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


class PreemptionCheckpoint(Callback):
    """Checkpoint on SIGTERM and on ``signal_name`` (then requeue under SLURM), after the current batch.

    Args:
        dirpath: where ``interrupted.ckpt`` goes (the run's checkpoint directory).
        signal_name: the preemption signal (SLURM's ``--signal``), ``SIGUSR1`` by default.
        requeue: call ``scontrol requeue`` on that signal when running under SLURM.
    """

    def __init__(self, dirpath: str, signal_name: str = "SIGUSR1", requeue: bool = True):
        self.path = Path(dirpath) / INTERRUPTED_CHECKPOINT
        self.signum = getattr(signal, signal_name)
        self.requeue = requeue
        self._preempted = False
        self._previous_handler = None

    def _handler(self, signum, frame) -> None:
        self._preempted = True
        signal.raise_signal(signal.SIGTERM)  # Lightning's clean stop after the current batch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous_handler = signal.signal(self.signum, self._handler)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        trainer.save_checkpoint(self.path)
        log.warning("stopped after step %d; saved %s", trainer.global_step, self.path)
        if self._preempted and self.requeue and trainer.is_global_zero and os.environ.get("SLURM_JOB_ID"):
            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.warning("scontrol requeue %s: %s", job, "ok" if result.returncode == 0 else result.stderr.strip())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Finished: the interrupted state this run resumed from (if any) is spent.
        if trainer.is_global_zero and self.path.is_file():
            self.path.unlink()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None
