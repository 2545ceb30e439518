"""LightningDataModules: MNIST (with an offline embedded default), CelebA and style-transfer pairs."""

from datamodules.base import ImageDataModule, IndexedImageDataset
from datamodules.celeba import CelebADataModule
from datamodules.mnist import MNISTDataModule
from datamodules.style import StyleDataModule

__all__ = ["CelebADataModule", "ImageDataModule", "IndexedImageDataset", "MNISTDataModule", "StyleDataModule"]
