"""EMA of the weights: Lightning's ``WeightAveraging`` with a warmed-up decay and honest last checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import WeightAveraging

from lit_linearizer.schedules import warmup_ema

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage(WeightAveraging):
    """EMA of every parameter and buffer, decay warmed up as in ``schedules.warmup_ema``.

    Validation swaps the average in; checkpoints store it as ``state_dict`` and the raw weights
    as ``current_model_state`` (Lightning's behaviour). One change: the parent copies the
    average into the model in ``on_train_end``, but ``ModelCheckpoint`` writes ``last.ckpt`` in
    *its* ``on_train_end``, which runs after ours (Lightning orders checkpoint callbacks last).
    A run that ended without a final validation then saved the average twice and lost the raw
    weights, so resuming from it continued from the EMA. The copy therefore waits for
    ``on_fit_end``, after every checkpoint is written; fit still ends on the average.
    """

    def __init__(self, decay: float) -> None:
        super().__init__(avg_fn=warmup_ema(decay))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # deferred to on_fit_end (see the class docstring)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
