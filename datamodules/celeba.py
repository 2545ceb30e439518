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

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from datamodules.base import ImageDataModule
from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.images import from_unit_range

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
LAYOUTS = ("torchvision", "folder")


def image_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete image file, or None. Reads the header and the file's end marker (JPEG EOI,
    PNG IEND); only a file without its end marker, or of another format, is decoded in full."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with Image.open(path) as image:
            marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(image.format)
            if marker is not None:
                with open(path, "rb") as handle:
                    handle.seek(max(0, size - 1024))
                    if marker in handle.read():
                        return None
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))  # decode at 1/8 scale
            image.load()
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        return " ".join(str(error).split())[:100] or type(error).__name__
    return None


def check_image_files(paths: Sequence[Path], dataset: str, advice: str = "remove or replace the broken files") -> None:
    """Every file of a dataset is a complete image; else a one-line DataNotFoundError naming the first bad file.

    Run once at setup (``prepare_data``), in threads: a broken file stops the run before training,
    not in the middle of an epoch with no checkpoint.
    """
    started = time.monotonic()
    if len(paths) >= 20_000:  # about a minute for CelebA's 202,599 files on a busy 2-core machine: say so first
        log.info("%s: checking %d image files once (a broken one stops the run now, not later)", dataset, len(paths))
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(image_file_problem, paths)) if why is not None]
    if problems:
        path, why = problems[0]
        count = f"{len(problems)} of {len(paths)} image files are" if len(problems) > 1 else "an image file is"
        raise DataNotFoundError(f"{dataset}: {count} unreadable, e.g. {path} ({why}); {advice}")
    elapsed = time.monotonic() - started
    if elapsed > 5:
        log.info("%s: checked %d image files in %.0f s", dataset, len(paths), elapsed)


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
        # Fail fast, on one process per node, with a one-line error: missing files, then unreadable images.
        train, val = self._splits()
        advice = "remove or replace the broken files"
        if self.layout == "torchvision":
            advice = "replace the broken files or drop their lines from list_eval_partition.txt"
        check_image_files([*train, *val], f"CelebA ({self.layout} layout)", advice)

    def _splits(self) -> tuple[list[Path], list[Path]]:
        return self._torchvision_splits() if self.layout == "torchvision" else self._folder_splits()

    def load_splits(self):
        train, val = self._splits()
        return ImageFileDataset(train, self._transform(True)), ImageFileDataset(val, self._transform(False))
