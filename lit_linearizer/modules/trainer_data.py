"""What application modules read from the trainer's DataModule: validation images, and the splits of the digit FID.

A LightningModule finds its data at run time (``trainer.datamodule``); nothing here imports data code, and
every function returns None or skips when the module runs without a trainer or without a DataModule.
"""

from __future__ import annotations

import lightning as L
from torch import Tensor

from lit_linearizer.images import evenly_spaced

__all__ = ["add_digit_fid", "datamodule_of", "validation_images"]


def datamodule_of(module: L.LightningModule) -> L.LightningDataModule | None:
    """The trainer's DataModule, or None (not attached to a trainer, or fitted without a DataModule)."""
    return getattr(module._trainer, "datamodule", None)


def validation_images(module: L.LightningModule, n: int) -> Tensor | None:
    """``n`` images evenly spaced through the validation split, on the module's device (None without data)."""
    dataset = getattr(datamodule_of(module), "val_dataset", None)
    return None if dataset is None else evenly_spaced(dataset, n).to(module.device)


def add_digit_fid(module: L.LightningModule) -> None:
    """Register ``fid_mnist_classifier`` in ``module.pretrained`` on the trainer's data; its floor and the
    classifier's accuracy go to ``module.reference_metrics``. The classifier trains once (rank zero), cached."""
    data, trainer = datamodule_of(module), module.trainer
    if data is not None and getattr(data, "train_dataset", None) is None:
        data.setup("validate")
    splits = None if data is None else (data.train_dataset, data.val_dataset)
    barrier = trainer.strategy.barrier if trainer.world_size > 1 else None
    cache_dir = module.metric_settings.get("cache_dir", ".cache")
    references = module.pretrained.add_digit_fid(splits, cache_dir, module.device, trainer.is_global_zero, barrier)
    module.reference_metrics.update(references)
