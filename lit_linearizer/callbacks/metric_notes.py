"""Skipped metrics (with their reasons) and facts about metric networks, in the run's loggers."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

__all__ = ["MetricNotes"]


class MetricNotes(Callback):
    """Writes ``pl_module.skipped_metrics`` (name -> reason) and ``pl_module.metric_info`` (e.g. the digit
    classifier's weights hash) to the loggers once the metrics are built (fit or validation start), and again
    when they change.

    W&B: the run's summary (``skipped/<name>``: the reason, ``metric_info/<key>``: the value) and its config
    (``skipped_metrics``, ``metric_info``); other loggers: their hyper-parameters. metrics.json has the same
    (the tasks write it). The module brings this callback itself (``LinearizerLitModule.configure_callbacks``).
    """

    def __init__(self) -> None:
        self._recorded: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record(trainer, pl_module)

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        skipped = dict(getattr(pl_module, "skipped_metrics", {}) or {})
        info = dict(getattr(pl_module, "metric_info", {}) or {})
        notes = {**{f"skipped/{k}": v for k, v in skipped.items()}, **{f"metric_info/{k}": v for k, v in info.items()}}
        if not trainer.is_global_zero or not notes or notes == self._recorded:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(notes)
            logger.log_hyperparams({"skipped_metrics": skipped, "metric_info": info})
        self._recorded = notes
