"""What every image DataModule here shares: in-memory tensors, global batch size, loaders.

Datasets are small enough to preprocess once into tensors (MNIST: 4,000-60,000 images),
which makes CPU training several times faster than decoding PIL images every epoch.
Batches are dicts: ``image`` in [-1, 1], ``label`` and ``index`` (the sample's position in
its split, so that evaluation noise can be tied to the sample rather than to the rank or
the batch it lands in: metrics then agree between one process and DDP).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.resumable import ResumableDataLoader, ResumableSampler
from lit_linearizer.errors import ConfigError
from lit_linearizer.images import from_unit_range, uint8_to_unit_range


class IndexedImageDataset(Dataset):
    """Images ``(N, C, H, W)`` in [-1, 1] with integer labels; items are dicts."""

    def __init__(self, images: Tensor, labels: Tensor | None = None):
        self.images = images
        self.labels = torch.zeros(len(images), dtype=torch.long) if labels is None else labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "label": self.labels[index], "index": torch.tensor(index)}


class ImageDataModule(L.LightningDataModule):
    """Base class. Subclasses implement ``prepare_data`` and ``load_splits``.

    Args:
        batch_size: the *global* batch size; each of ``world_size`` processes gets
            ``batch_size // world_size`` (an error if it does not divide).
        num_workers: loader workers (0 is fastest for in-memory tensors on CPU).
        image_shape: (C, H, W) the model expects; checked against the data.
        pin_memory: pin host memory (GPU training).
        seed: seed of the training order (epoch e uses seed + e on every rank).
    """

    def __init__(
        self, batch_size: int = 64, num_workers: int = 0, image_shape=None, pin_memory: bool = False, seed: int = 0
    ):
        super().__init__()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(
                f"data.batch_size={batch_size!r} is not valid: it must be a positive integer (the global batch)"
            )
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.pin_memory = pin_memory
        self.batch_size_per_device = batch_size
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    def load_splits(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets whose items are dicts with at least ``image`` and ``index``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch and must be divisible by the "
                f"{world_size} processes; pick a multiple of {world_size}"
            )
        self.batch_size_per_device = self.batch_size // world_size
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self.load_splits()
            shape = tuple(self.train_dataset[0]["image"].shape)
            if self.image_shape is not None and shape != self.image_shape:
                raise ConfigError(f"the data has images of shape {shape} but the model expects {self.image_shape}")
        if stage in (None, "fit") and len(self.train_dataset) // world_size < self.batch_size_per_device:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the training split ({self.describe_train_split()}"
                f"{f' over {world_size} processes' if world_size > 1 else ''}): not one full batch, nothing would "
                f"train; {self.too_small_advice()}"
            )

    def describe_train_split(self) -> str:
        """The training split's size, for messages."""
        return f"{len(self.train_dataset)} images"

    def too_small_advice(self) -> str:
        return "lower data.batch_size or add data"

    def _loader_options(self) -> dict:
        return dict(
            batch_size=self.batch_size_per_device,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # Checkpointable mid-epoch (see datamodules/resumable.py); the order depends on the seed only.
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.seed,
        )
        return ResumableDataLoader(self.train_dataset, sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, shuffle=False, **self._loader_options())


def to_model_range(images_uint8: Tensor, size: int | None) -> Tensor:
    """uint8 ``(N, C, H, W)`` or ``(N, H, W)`` -> float in [-1, 1], resized to ``size`` (antialiased)."""
    x = uint8_to_unit_range(images_uint8)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if size is not None and x.shape[-2:] != (size, size):
        x = torch.cat(
            [
                torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
                for chunk in x.split(4096)
            ]
        )
    return from_unit_range(x.clamp(0.0, 1.0)).contiguous()
