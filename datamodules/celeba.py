"""CelebA (or any folder of face photos), centre-cropped and resized, decoded lazily.

Layouts (``layout``):
- ``torchvision``: ``<data_dir>/celeba/img_align_celeba/*.jpg`` and
  ``<data_dir>/celeba/list_eval_partition.txt`` (lines ``000001.jpg 0``; 0 train, 1 val, 2 test),
  the layout torchvision's CelebA downloads into. Only these two are needed (torchvision's
  class also wants the attribute files and checks their MD5s, so it is not used).
- ``folder``: ``<data_dir>`` is a folder of images (jpg/png, searched recursively); the last
  ``val_fraction`` of the sorted file list is the validation split.

Nothing is downloaded (CelebA's Google Drive links need a browser); a missing file is a
one-line error naming the path and the expected layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datamodules.base import ImageDataModule
from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.images import from_unit_range

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
LAYOUTS = ("torchvision", "folder")


class ImageFileDataset(Dataset):
    """Image files -> dicts with ``image`` in [-1, 1] (C, H, W) and ``index``."""

    def __init__(self, paths: list[Path], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        try:
            with Image.open(self.paths[index]) as image:
                pixels = self.transform(image.convert("RGB"))
        except OSError as error:
            raise DataNotFoundError(f"cannot read image {self.paths[index]}: {error}") from None
        return {"image": from_unit_range(pixels), "label": torch.tensor(0), "index": torch.tensor(index)}


class CelebADataModule(ImageDataModule):
    """Faces as 3 x ``image_size`` x ``image_size`` images in [-1, 1].

    Args:
        data_dir: see the layouts above.
        layout: ``torchvision`` or ``folder``.
        crop_size: side of the centre crop taken before resizing (140 frames the face in CelebA's
            178 x 218 aligned images); null skips cropping.
        image_size: side after resizing (64 in the paper).
        val_fraction: validation share for the ``folder`` layout.
        horizontal_flip: random flips for training.
    """

    def __init__(
        self,
        data_dir: str = "data",
        layout: str = "torchvision",
        crop_size: int | None = 140,
        image_size: int = 64,
        val_fraction: float = 0.05,
        horizontal_flip: bool = True,
        **loader_kwargs,
    ):
        super().__init__(**loader_kwargs)
        if layout not in LAYOUTS:
            raise ConfigError(f"data.layout={layout!r} is not one of {LAYOUTS}")
        self.data_dir = Path(data_dir).expanduser()
        self.layout = layout
        self.crop_size = crop_size
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.horizontal_flip = horizontal_flip

    def _transform(self, train: bool):
        steps = [v2.PILToTensor()]
        if self.crop_size:
            steps.append(v2.CenterCrop(self.crop_size))
        steps.append(v2.Resize((self.image_size, self.image_size), antialias=True))
        if train and self.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.ToDtype(torch.float32, scale=True))
        return v2.Compose(steps)

    def _torchvision_splits(self) -> tuple[list[Path], list[Path]]:
        base = self.data_dir / "celeba"
        images, partition = base / "img_align_celeba", base / "list_eval_partition.txt"
        for path in (images, partition):
            if not path.exists():
                raise DataNotFoundError(
                    f"CelebA: {path} is missing; expected {base}/img_align_celeba/*.jpg and "
                    f"{base}/list_eval_partition.txt (torchvision's layout), or use data.layout=folder"
                )
        splits: dict[str, list[Path]] = {"0": [], "1": []}
        for line_number, line in enumerate(partition.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                name, split = line.split()
            except ValueError:
                message = f"CelebA: {partition} line {line_number} is not '<file> <split>': {line!r}"
                raise DataNotFoundError(message) from None
            if split in splits:
                splits[split].append(images / name)
        missing = next((p for p in splits["0"] + splits["1"] if not p.is_file()), None)
        if missing is not None:
            raise DataNotFoundError(f"CelebA: {missing} is listed in {partition.name} but missing")
        if not splits["0"] or not splits["1"]:
            raise DataNotFoundError(f"CelebA: {partition} lists no training (0) or validation (1) images")
        return splits["0"], splits["1"]

    def _folder_splits(self) -> tuple[list[Path], list[Path]]:
        if not self.data_dir.is_dir():
            raise DataNotFoundError(
                f"image folder {self.data_dir} does not exist (data.layout=folder expects a folder of images)"
            )
        paths = sorted(p for p in self.data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(paths) < 2:
            raise DataNotFoundError(
                f"image folder {self.data_dir} holds {len(paths)} images (jpg/png); need at least 2"
            )
        n_val = max(1, int(round(len(paths) * self.val_fraction)))
        return paths[:-n_val], paths[-n_val:]

    def prepare_data(self) -> None:
        self._splits()  # fail fast, on one process, with the one-line error

    def _splits(self) -> tuple[list[Path], list[Path]]:
        return self._torchvision_splits() if self.layout == "torchvision" else self._folder_splits()

    def load_splits(self):
        train, val = self._splits()
        return ImageFileDataset(train, self._transform(True)), ImageFileDataset(val, self._transform(False))
