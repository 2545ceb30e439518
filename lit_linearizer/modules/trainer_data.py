"""What application modules read from the trainer's DataModule: validation images, and the splits of the digit FID.

A LightningModule finds its data at run time (``trainer.datamodule``); nothing here imports data code, and
every function returns None or skips when the module runs without a trainer or without a DataModule.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import lightning as L
from torch import Tensor

from lit_linearizer.images import evenly_spaced
from lit_linearizer.metrics.digit_classifier import load_or_train_classifier
from lit_linearizer.metrics.digit_diagnostics import DigitDiagnostics

__all__ = [
    "add_digit_diagnostics", "add_digit_fid", "datamodule_of", "fit_on_training_split", "training_images",
    "validation_images",
]

Fit = TypeVar("Fit")


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


def training_images(module: L.LightningModule, n: int) -> Tensor | None:
    """Up to ``n`` training images ``(n, C, H, W)`` in [-1, 1], evenly spaced through the split (None without data)."""
    data = datamodule_of(module)
    if data is not None and getattr(data, "train_dataset", None) is None:
        data.setup("validate")
    dataset = getattr(data, "train_dataset", None)
    return None if dataset is None else evenly_spaced(dataset, n)


def fit_on_training_split(module, max_samples: int, fit: Callable[..., Fit]) -> Fit | None:
    """``fit(images, process=(rank, world_size), all_reduce=...)`` on up to ``max_samples`` training images, in
    the module's full precision; every process streams its share and ``all_reduce`` sums over processes (None on
    one process), so every process gets the same fit. None without training data."""
    images, trainer = training_images(module, max_samples), module.trainer
    if images is None:
        return None
    reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
    with module.full_precision():
        return fit(images, process=(trainer.global_rank, trainer.world_size), all_reduce=reduce)


def add_digit_diagnostics(module: L.LightningModule) -> DigitDiagnostics | None:
    """The digit-classifier diagnostics (metrics/digit_diagnostics.py) on the trainer's data, after ``add_digit_fid``
    trained and cached the classifier; their references go to ``module.reference_metrics``. None without data."""
    data = datamodule_of(module)
    if data is None or "fid_mnist_classifier" not in module.pretrained.metrics:
        return None
    train, val = data.train_dataset, data.val_dataset
    cache_dir = module.metric_settings.get("cache_dir", ".cache")
    classifier, _ = load_or_train_classifier(train.images, train.labels, val.images, val.labels, cache_dir)
    diagnostics = DigitDiagnostics(classifier)
    module.reference_metrics.update(diagnostics.references(train.images, val.images, cache_dir))
    return diagnostics.to(module.device)
