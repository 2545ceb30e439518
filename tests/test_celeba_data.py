"""CelebADataModule on a tiny fixture written in torchvision's layout (and as a plain folder)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules import CelebADataModule
from lit_linearizer.errors import DataNotFoundError


def write_fixture(root, n_train=6, n_val=2):
    """Random 178x218 JPEGs (CelebA's aligned size) and a partition file; returns data_dir."""
    images = root / "celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n_train + n_val + 1):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(images / name)
        split = 0 if i < n_train else 1 if i < n_train + n_val else 2
        lines.append(f"{name} {split}")
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def test_torchvision_layout_loads_cropped_resized_images(tmp_path):
    dm = CelebADataModule(str(write_fixture(tmp_path)), image_size=32, crop_size=140, batch_size=4,
                          num_workers=0, image_shape=(3, 32, 32))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 2  # the test split (2) is not used
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0


def test_missing_partition_file_names_the_path_and_layout(tmp_path):
    write_fixture(tmp_path)
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataNotFoundError) as info:
        CelebADataModule(str(tmp_path)).prepare_data()
    message = str(info.value)
    assert "\n" not in message and "list_eval_partition.txt is missing" in message and "img_align_celeba" in message


def test_listed_but_missing_image_is_named(tmp_path):
    write_fixture(tmp_path)
    (tmp_path / "celeba" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DataNotFoundError, match="000002.jpg"):
        CelebADataModule(str(tmp_path)).prepare_data()


def test_plain_folder_layout(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.full((40, 30, 3), i * 20, dtype=np.uint8)).save(folder / f"{i}.png")
    dm = CelebADataModule(str(folder), layout="folder", crop_size=None, image_size=16, val_fraction=0.2, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (8, 2)
    assert dm.val_dataset[0]["image"].shape == (3, 16, 16)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        CelebADataModule(str(tmp_path / "nowhere"), layout="folder").prepare_data()


def test_a_broken_image_is_found_at_setup_and_named(tmp_path):
    """A truncated JPEG in the middle of the training split stops prepare_data, not the middle of an epoch."""
    write_fixture(tmp_path)
    images = tmp_path / "celeba" / "img_align_celeba"
    whole = (images / "000003.jpg").read_bytes()
    (images / "000003.jpg").write_bytes(whole[: len(whole) // 2])
    dm = CelebADataModule(str(tmp_path), image_size=32, batch_size=2)
    with pytest.raises(DataNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "\n" not in message and str(images / "000003.jpg") in message and "list_eval_partition.txt" in message
    (images / "000003.jpg").write_bytes(b"not an image at all")
    (images / "000005.jpg").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match=r"2 of 8 image files are unreadable, e\.g\. .*000003\.jpg"):
        dm.prepare_data()


def test_a_broken_png_in_a_folder_is_named(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((40, 30, 3), i * 20, dtype=np.uint8)).save(folder / f"{i}.png")
    whole = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(whole[:-20])  # the IEND chunk and the end of the data are gone
    with pytest.raises(DataNotFoundError, match=r"2\.png .*remove or replace"):
        CelebADataModule(str(folder), layout="folder", crop_size=None, image_size=16).prepare_data()
