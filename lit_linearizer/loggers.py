"""The W&B logger: Lightning's ``WandbLogger`` with W&B's own step equal to the training step, also after a resume.

Lightning's logger lets W&B count its ``log`` calls (``_step``): the images, metrics and checkpoint of one
moment land on different W&B steps, and a resumed offline run counts from 0 again (W&B learns where an
online run stopped from its server only). Here every row is logged at the training step it belongs to, so
the rows of one moment merge into one and a resumed run continues where its checkpoint stopped, online or
offline.
"""

from __future__ import annotations

from typing import Any, Mapping

from lightning.pytorch.loggers import wandb as lightning_wandb
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["WandbLogger", "finish_wandb"]

STEP_KEY = "trainer/global_step"


class WandbLogger(lightning_wandb.WandbLogger):
    """Lightning's ``WandbLogger`` (same arguments) that logs each row at W&B step = training step.

    A row with a training ``step`` goes to W&B step ``step`` (with ``trainer/global_step`` as before, the x-axis
    of W&B's charts). Rows of one step merge. When the run is already past that step (an online run resumed
    from an older checkpoint, or an evaluation of an old checkpoint logged into its own run) the row goes to
    W&B's next step instead of being dropped, and ``trainer/global_step`` still says which training step it is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._row_pending = False  # a row at an explicit step that W&B has not committed yet

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = lightning_wandb._add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        run = self.experiment
        if step is None or self._wandb_init.get("sync_tensorboard"):
            run.log(dict(metrics))
            self._row_pending = False
            return
        step = int(step)
        row = {**metrics, STEP_KEY: step}
        if step >= _next_step(run):
            run.log(row, step=step)
            self._row_pending = True
            return
        if self._row_pending:  # commit the later row first: this one must not merge into it
            run.log({}, commit=True)
        run.log(row)
        self._row_pending = False


def _next_step(run) -> int:
    """The W&B step of the run's next ``log`` call (0 where the run cannot say, e.g. ``WANDB_MODE=disabled``)."""
    try:
        return int(run.step)
    except Exception:  # disabled and dummy runs
        return 0


def finish_wandb(loggers, exit_code: int = 0) -> None:
    """Finish the W&B runs of ``loggers`` now. Lightning leaves them open until the process exits, so a later
    run in the same process (a local sweep, a test) would log into the same W&B run."""
    for logger in loggers:
        if isinstance(logger, lightning_wandb.WandbLogger) and logger._experiment is not None:
            run, logger._experiment = logger._experiment, None
            if hasattr(run, "finish"):
                run.finish(exit_code=exit_code)
