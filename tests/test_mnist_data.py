"""MNISTDataModule: the embedded offline split, torchvision's code path, and clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from datamodules import MNISTDataModule
from datamodules.mnist import IDX_FILES, embedded_split, write_embedded_mnist
from lit_linearizer.errors import ConfigError, DataNotFoundError


def test_embedded_split_is_stratified_and_deterministic():
    train_x, train_y, val_x, val_y = embedded_split()
    assert train_x.shape == (4000, 28, 28) and val_x.shape == (1000, 28, 28)
    assert train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [400] * 10
    assert np.bincount(val_y).tolist() == [100] * 10
    again = embedded_split()
    assert np.array_equal(again[0], train_x) and np.array_equal(again[3], val_y)
    # No image is in both splits.
    train_set = {row.tobytes() for row in train_x}
    assert not any(row.tobytes() in train_set for row in val_x)


def test_embedded_idx_files_load_through_torchvision(tmp_path):
    root = write_embedded_mnist(tmp_path)
    assert all((root / "MNIST" / "raw" / name).is_file() for name in IDX_FILES)
    train = MNIST(str(root), train=True, download=False)
    val = MNIST(str(root), train=False, download=False)
    assert len(train) == 4000 and len(val) == 1000
    train_x, train_y, _, _ = embedded_split()
    assert torch.equal(train.data, torch.from_numpy(train_x))
    assert torch.equal(train.targets, torch.from_numpy(train_y).long())


def test_datamodule_batches_images_in_model_range(tmp_path):
    dm = MNISTDataModule(str(tmp_path), batch_size=32, image_size=32, image_shape=(1, 32, 32))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 1, 32, 32)
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["image"].min() == -1.0 and batch["image"].max() > 0.9  # real digits: black background, white strokes
    assert batch["index"].dtype == torch.long and batch["label"].max() < 10
    assert len(dm.val_dataset) == 1000


def test_missing_torchvision_data_fails_fast_with_one_line(tmp_path, no_network):
    dm = MNISTDataModule(str(tmp_path / "empty"), source="torchvision")
    started = time.time()
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    assert time.time() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "data.source=embedded" in message


def test_auto_source_falls_back_to_embedded(tmp_path, no_network):
    dm = MNISTDataModule(str(tmp_path), source="auto", batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 4000


def test_bad_source_and_shape_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.source"):
        MNISTDataModule(str(tmp_path), source="kaggle")
    dm = MNISTDataModule(str(tmp_path), image_size=28, image_shape=(1, 32, 32))
    dm.prepare_data()
    with pytest.raises(ConfigError, match=r"\(1, 28, 28\).*\(1, 32, 32\)"):
        dm.setup("fit")


def test_global_batch_must_divide_by_world_size(tmp_path):
    class FakeTrainer:
        world_size = 3

    dm = MNISTDataModule(str(tmp_path), batch_size=64)
    dm.trainer = FakeTrainer()
    with pytest.raises(ConfigError, match="divisible"):
        dm.setup("fit")
    dm.batch_size = 66
    dm.prepare_data()
    dm.setup("fit")
    assert dm.batch_size_per_device == 22
