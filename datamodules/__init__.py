"""LightningDataModules: MNIST (with an offline embedded default), CelebA and style-transfer pairs."""

from datamodules.base import ImageDataModule, IndexedImageDataset
from datamodules.mnist import MNISTDataModule
from datamodules.style import StyleDataModule

__all__ = ["ImageDataModule", "IndexedImageDataset", "MNISTDataModule", "StyleDataModule"]
