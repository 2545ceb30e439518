"""Stop a run on SIGTERM or a preemption signal, at a step boundary agreed by every rank; leave a resumable state.

A signal handler only records the signal (``lit_linearizer.cluster``). This callback reads the
record at points where every DDP rank stands at the same place and asks them all, in one
collective (``reduce_boolean_decision``: stop if any rank was signalled), whether to stop:

- before the first training step (``on_train_start``): stop without saving, nothing new was trained;
- after each optimizer step (``on_train_batch_end``) and after each validation of the fit: stop
  once Lightning has finished the step (every callback, EMA included) or the epoch, then save
  ``<dirpath>/interrupted.ckpt``. A stop agreed in a step that triggers a validation waits until
  that validation has ended, so the EMA weights are never saved while swapped in;
- in the evaluation after fit (``trainer.validate``, every batch): stop without saving; the run's
  ``last.ckpt`` holds the fitted state and the rerun evaluates again.

No collective ever runs inside a signal handler, and Lightning's own handlers (which broadcast
inside the SIGTERM handler and save inside the USR1 handler) are kept out. The handlers stay
installed after fit, so a signal in the evaluation is recorded, not fatal. What happens after a
stop (W&B, exit status, requeue) is up to `linearizer train` (tasks/train.py); a rerun in the same
run directory resumes from the newest of ``interrupted.ckpt`` and ``last.ckpt``. The callback also
keeps the run's wall time across those segments (in its checkpoint state).

Not a Lightning ``Checkpoint`` subclass on purpose: with one of those, ``fit()`` without a
checkpoint path looks for ``last.ckpt`` to resume from and warns when there is none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_linearizer.cluster import (
    REQUEUE_SIGNALS,
    hold_stop_handlers,
    received_signals,
    release_stop_handlers,
    stop_requested,
)

__all__ = ["INTERRUPTED_CHECKPOINT", "PreemptionCheckpoint"]

log = logging.getLogger(__name__)

INTERRUPTED_CHECKPOINT = "interrupted.ckpt"


class PreemptionCheckpoint(Callback):
    """Stop at an agreed step boundary on SIGTERM or a requeue signal and save ``interrupted.ckpt``.

    Args:
        dirpath: where ``interrupted.ckpt`` goes (the run's checkpoint directory).
        requeue_signals: the signals that announce a preemption or the time limit (SLURM's ``--signal``,
            submitit's USR2); a run stopped by one of them asks to be requeued. SIGTERM always stops.
    """

    def __init__(self, dirpath: str, requeue_signals: Iterable[str] = REQUEUE_SIGNALS):
        self.path = Path(dirpath) / INTERRUPTED_CHECKPOINT
        self.requeue_signals = tuple(requeue_signals)
        self.saved: Path | None = None  # interrupted.ckpt, once this process saved it
        self.stopped = False  # the ranks agreed to stop
        self.started = time.time()  # this segment's start (train.py sets it to its own start)
        self.wall_time_before = 0.0  # seconds the run spent in earlier segments (from the checkpoint)
        self._training = False  # between on_train_start and on_train_end: a stop saves a checkpoint
        self._held = False  # a stop agreed in a step that triggers validation, held until the validation ends
        self._holding = False  # this callback holds the stop handlers (from setup to teardown or on_exception)

    # -- the run's wall time over requeues -----------------------------------------------------------
    def wall_time_s(self) -> float:
        return self.wall_time_before + time.time() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wall_time_before = float(state_dict.get("wall_time_s", 0.0))

    # -- agreeing on a stop ---------------------------------------------------------------------------
    def _agreed(self, trainer: L.Trainer) -> bool:
        """True on every rank if any rank received a signal: one all-reduce, called by all ranks at the same point."""
        if self.stopped:
            return True
        self.stopped = bool(trainer.strategy.reduce_boolean_decision(stop_requested(), all=False))
        if self.stopped:
            log.warning("stopping (signals received: %s)", ", ".join(received_signals()) or "on another rank")
        return self.stopped

    @staticmethod
    def _stop_after_this_batch(trainer: L.Trainer, value: bool = True) -> None:
        # Lightning's own clean stop: it raises SIGTERMException once the batch (or the epoch) is complete,
        # on every rank; only its signal handler sets this flag otherwise, and that handler is kept out.
        trainer._signal_connector.received_sigterm = value

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._holding:  # `linearizer train` holds them from its start to its end; this covers other callers
            hold_stop_handlers(self.requeue_signals)
            self._holding = True
        # Lightning registers its handlers right before the run and restores the previous ones after it; its
        # SIGTERM handler runs a broadcast inside the handler (a deadlock when the ranks are in different
        # collectives) and its SLURM USR1 handler saves inside the handler. Keep them out of this trainer.
        trainer._signal_connector.register_signal_handlers = lambda: None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._agreed(trainer):  # signalled before training: nothing new to save
            raise SIGTERMException()
        self._training = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or epoch_loop.batch_progress.is_last_batch
        if step_done and self._agreed(trainer):
            self._stop_after_this_batch(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The evaluation loop raises on the flag after any batch, with the EMA weights swapped in: hold the
        # stop until the validation has ended.
        if trainer.state.fn == TrainerFn.FITTING and trainer.received_sigterm:
            self._held = True
            self._stop_after_this_batch(trainer, False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and self._agreed(trainer):
            raise SIGTERMException()  # the evaluation after fit: last.ckpt holds the fitted state

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and self._agreed(trainer):
            raise SIGTERMException()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if self._held or self._agreed(trainer):  # stop once Lightning is done with this step or epoch
            self._held = False
            self._stop_after_this_batch(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            release_stop_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            if isinstance(exception, SIGTERMException) and self._training:
                trainer.save_checkpoint(self.path)  # every rank: a collective, at a point all ranks agreed on
                self.saved = self.path
                log.warning("stopped after step %d; saved %s", trainer.global_step, self.path)
        finally:
            self._release()  # Lightning skips the teardown hooks after an exception
