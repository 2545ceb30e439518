"""Style-transfer pairs: content photos and, per style, a target image of the same photo.

Folder layout (users' own data, e.g. targets distilled from pretrained style networks)::

    <root>/content/<name>.png|jpg|jpeg
    <root>/<style>/<name>.<any of those>     # one target per content image, same stem, same size

``source``:
- ``embedded`` (default): content = the real photos shipped in the scikit-image and
  scikit-learn wheels (no network), targets rendered by the deterministic filters of
  ``datamodules/style_filters.py`` -- stand-ins for learned styles. Rendered once, atomically,
  into ``<data_dir>/style_embedded_<version>_<size>/`` in the folder layout above, and then read
  by the same code as a user's folder.
- ``folder``: the folder ``root``.

Training batches are random crops (the same crop of the content and of every target), with
optional random rescaling and horizontal flips; validation uses fixed crops (centre and four
corners) of held-out photos. Batches are dicts: ``image`` (content, ``(B, 3, S, S)`` in
[-1, 1]), ``target`` (``(B, num_styles, 3, S, S)``, in ``styles`` order), ``index``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from datamodules.base import ImageDataModule
from datamodules.style_filters import FILTERS_VERSION, STYLE_FILTERS, render
from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.images import uint8_to_model_range

log = logging.getLogger(__name__)

SOURCES = ("embedded", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CONTENT_DIR = "content"
EMBEDDED_STYLES = tuple(STYLE_FILTERS)

# Real photos that ship inside the wheels and need no network (scikit-image's others need pooch).
# Grey photos are replicated to three channels. skimage's ``cat`` is ``chelsea``: listed once.
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
SKLEARN_PHOTOS = ("china", "flower")


# -- reading and writing images ------------------------------------------------------------------
def read_rgb(path: Path) -> np.ndarray:
    """uint8 ``(H, W, 3)``; a one-line DataNotFoundError for unreadable files."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataNotFoundError(f"cannot read image {path}: {' '.join(str(error).split())[:120]}") from None


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased resize of a uint8 ``(H, W, 3)`` image so that its shorter side is ``size``."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(new, Image.Resampling.LANCZOS))


def embedded_photos() -> dict[str, np.ndarray]:
    """The offline content photos: name -> uint8 ``(H, W, 3)``."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {name: _as_rgb_uint8(getattr(skimage.data, name)()) for name in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    for filename, image in zip(sample.filenames, sample.images):
        stem = Path(filename).stem
        if stem in SKLEARN_PHOTOS:
            photos[stem] = _as_rgb_uint8(image)
    return dict(sorted(photos.items()))


def render_embedded(directory: Path, short_side: int, styles: Sequence[str] = EMBEDDED_STYLES) -> Path:
    """Render the embedded dataset into ``directory`` (folder layout), once and atomically.

    Everything is written into a temporary sibling folder that is renamed into place at the
    end: a concurrent reader (another rank, another run) sees the whole dataset or none of it.
    """
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        photos = {name: resize_short_side(image, short_side) for name, image in embedded_photos().items()}
        (staging / CONTENT_DIR).mkdir()
        for name, image in photos.items():
            Image.fromarray(image).save(staging / CONTENT_DIR / f"{name}.png")
        for style in styles:
            (staging / style).mkdir()
            for name, image in photos.items():
                Image.fromarray(render(style, image)).save(staging / style / f"{name}.png")
        manifest = {"filters_version": FILTERS_VERSION, "short_side": short_side, "styles": list(styles),
                    "photos": list(photos)}  # fmt: skip
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(staging, directory)
        except OSError:
            if not manifest_path.is_file():  # not a lost race: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("rendered the embedded style data into %s", directory)
    return directory


# -- the folder layout ----------------------------------------------------------------------------
def _images_in(folder: Path) -> dict[str, Path]:
    """stem -> path of the image files in ``folder`` (an error if a stem appears twice)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in found:
                raise DataNotFoundError(f"{path} and {found[path.stem]} have the same name: keep one image per name")
            found[path.stem] = path
    return found


def style_folders(root: Path) -> list[str]:
    """The style folders under ``root`` (every subfolder except ``content``), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != CONTENT_DIR and not p.name.startswith("."))


def scan_folder(root: Path, styles: Sequence[str]) -> list[tuple[str, Path, list[Path]]]:
    """``[(name, content path, [target path per style])]``, checking the layout; one-line errors."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"style data folder {root} does not exist (expected {root}/content/ and one folder per style)"
        )
    content_dir = root / CONTENT_DIR
    if not content_dir.is_dir():
        raise DataNotFoundError(f"no content folder {content_dir}: put the content images there (.png/.jpg)")
    contents = _images_in(content_dir)
    if not contents:
        raise DataNotFoundError(f"content folder {content_dir} has no .png/.jpg images")
    if not styles:
        raise ConfigError(
            f"list the styles to train: data.styles=[...] (style folders in {root}: {style_folders(root)})"
        )
    targets: dict[str, dict[str, Path]] = {}
    for style in styles:
        folder = root / style
        if not folder.is_dir():
            raise DataNotFoundError(
                f"style folder {folder} does not exist (style folders in {root}: {style_folders(root)})"
            )
        targets[style] = _images_in(folder)
        if not targets[style]:
            raise DataNotFoundError(f"style folder {folder} is empty: it needs one target image per content image")
    samples = []
    for name, content in contents.items():
        missing = [style for style in styles if name not in targets[style]]
        if missing:
            raise DataNotFoundError(
                f"missing target {root / missing[0] / content.name} for content image {content} "
                f"(every style folder needs an image named {name}.png/.jpg)"
            )
        samples.append((name, content, [targets[style][name] for style in styles]))
    return samples


def load_samples(samples, load_size: int | None) -> tuple[list[str], list[Tensor]]:
    """Read every content/target image: names and uint8 tensors ``(1 + num_styles, 3, H, W)``."""
    names, stacks = [], []
    for name, content_path, target_paths in samples:
        content = read_rgb(content_path)
        images = [content]
        for path in target_paths:
            target = read_rgb(path)
            if target.shape != content.shape:
                raise DataNotFoundError(
                    f"target {path} is {target.shape[1]}x{target.shape[0]} but its content image {content_path} "
                    f"is {content.shape[1]}x{content.shape[0]}: targets must have the content's size"
                )
            images.append(target)
        if load_size is not None:
            images = [resize_short_side(image, load_size) for image in images]
        names.append(name)
        stacks.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
    return names, stacks


# -- datasets -------------------------------------------------------------------------------------
class RandomCropPairs(Dataset):
    """``crops_per_image`` random crops per photo per epoch: the same window of content and targets.

    ``scale_range``: the window's side is ``image_size * s``, ``s ~ U(scale_range)``, resized back to
    ``image_size`` (antialiased); ``hflip``: mirror half of the crops. Randomness from torch's
    global generator (seeded by the run; DataLoader workers get their own seeds).
    """

    def __init__(
        self, stacks: Sequence[Tensor], image_size: int, crops_per_image: int, scale_range=(1.0, 1.0), hflip=True
    ):
        self.stacks = list(stacks)
        self.image_size = image_size
        self.crops_per_image = crops_per_image
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.stacks) * self.crops_per_image

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        stack = self.stacks[index % len(self.stacks)]
        height, width = stack.shape[-2:]
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        side = min(height, width, max(self.image_size, round(self.image_size * scale)))
        top = int(torch.randint(0, height - side + 1, ()))
        left = int(torch.randint(0, width - side + 1, ()))
        crop = uint8_to_model_range(stack[:, :, top : top + side, left : left + side])
        if side != self.image_size:
            crop = F.interpolate(crop, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        if self.hflip and bool(torch.rand(()) < 0.5):
            crop = crop.flip(-1)
        return {"image": crop[0], "target": crop[1:], "index": torch.tensor(index)}


class FixedCropPairs(Dataset):
    """Deterministic crops for validation: the centre, then the four corners (``crops_per_image`` <= 5)."""

    def __init__(self, stacks: Sequence[Tensor], image_size: int, crops_per_image: int = 5):
        if not 1 <= crops_per_image <= 5:
            raise ConfigError(f"data.val_crops_per_image={crops_per_image} must be in [1, 5] (centre + 4 corners)")
        s = image_size
        contents, targets = [], []
        for stack in stacks:
            height, width = stack.shape[-2:]
            centre = ((height - s) // 2, (width - s) // 2)
            corners = [centre, (0, 0), (0, width - s), (height - s, 0), (height - s, width - s)]
            for top, left in corners[:crops_per_image]:
                crop = uint8_to_model_range(stack[:, :, top : top + s, left : left + s])
                contents.append(crop[0])
                targets.append(crop[1:])
        self.images = torch.stack(contents)
        self.targets = torch.stack(targets)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "target": self.targets[index], "index": torch.tensor(index)}


# -- the DataModule -------------------------------------------------------------------------------
class StyleDataModule(ImageDataModule):
    """Content/target pairs for style transfer (see the module docstring).

    Args:
        styles: the style folder names, in the order of the model's operator bank.
        source: ``embedded`` or ``folder``.
        root: the dataset folder (``source=folder``).
        data_dir: where the embedded dataset is rendered (``source=embedded``).
        render_size: short side, in pixels, the embedded photos are rendered at.
        image_size: side of the square crops the model sees.
        load_size: resize every image's short side to this when loading (None: as stored).
        scale_range: random rescaling of training crops (``[1, 1]``: none).
        hflip: random horizontal flips of training crops.
        val_names: content names (file stems) held out for validation; if None, a seeded
            ``val_fraction`` of the photos (at least one).
        crops_per_image: random training crops per photo and epoch (the epoch length).
        val_crops_per_image: fixed validation crops per held-out photo (1-5).
        seed: seed of the train/validation split (with val_fraction) and of the training order.
    """

    def __init__(
        self,
        styles: Sequence[str] | None = EMBEDDED_STYLES,
        source: str = "embedded",
        root: str | None = None,
        data_dir: str = "data",
        render_size: int = 128,
        image_size: int = 64,
        load_size: int | None = None,
        scale_range: Sequence[float] = (1.0, 1.0),
        hflip: bool = True,
        val_names: Sequence[str] | None = None,
        val_fraction: float = 0.2,
        crops_per_image: int = 16,
        val_crops_per_image: int = 5,
        seed: int = 0,
        **loader_kwargs,
    ):
        super().__init__(seed=seed, **loader_kwargs)
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not one of {SOURCES}")
        if source == "folder" and not root:
            raise ConfigError("data.source=folder needs data.root=<folder with content/ and one folder per style>")
        if source == "embedded":
            unknown = sorted(set(styles or ()) - set(STYLE_FILTERS))
            if unknown or not styles:
                raise ConfigError(f"data.styles={list(styles or [])}: the embedded styles are {list(STYLE_FILTERS)}")
        if len(scale_range) != 2 or not 1.0 <= scale_range[0] <= scale_range[1]:
            raise ConfigError(f"data.scale_range={list(scale_range)} must be [low, high] with 1 <= low <= high")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in (0, 1)")
        self.styles = [str(s) for s in styles] if styles else []
        self.source = source
        self.root = None if root is None else Path(root).expanduser()
        self.data_dir = Path(data_dir).expanduser()
        self.render_size = int(render_size)
        self.image_size = int(image_size)
        self.load_size = load_size
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.val_names = None if val_names is None else [str(n) for n in val_names]
        self.val_fraction = val_fraction
        self.crops_per_image = crops_per_image
        self.val_crops_per_image = val_crops_per_image
        self.train_names: list[str] = []
        self.val_names_used: list[str] = []

    @property
    def embedded_dir(self) -> Path:
        return self.data_dir / f"style_embedded_{FILTERS_VERSION}_{self.render_size}"

    def resolve_root(self) -> Path:
        if self.source == "embedded":
            return render_embedded(self.embedded_dir, self.render_size)
        return self.root

    def prepare_data(self) -> None:
        self.resolve_root()

    def _split(self, names: list[str]) -> tuple[list[int], list[int]]:
        if self.val_names is not None:
            unknown = [n for n in self.val_names if n not in names]
            if unknown:
                raise ConfigError(f"data.val_names: no content image named {unknown[0]!r} (content images: {names})")
            val = sorted(names.index(n) for n in set(self.val_names))
        else:
            count = max(1, round(self.val_fraction * len(names)))
            val = sorted(np.random.default_rng(self.seed).permutation(len(names))[:count].tolist())
        train = [i for i in range(len(names)) if i not in val]
        if not train or not val:
            raise ConfigError(
                f"{len(names)} content images cannot be split into training and validation photos "
                f"({len(val)} held out); add images or change data.val_names / data.val_fraction"
            )
        return train, val

    def describe_train_split(self) -> str:
        photos = f"{len(self.train_names)} training photo{'s' if len(self.train_names) != 1 else ''}"
        return f"{len(self.train_dataset)} crops: {photos} x data.crops_per_image={self.crops_per_image}"

    def too_small_advice(self) -> str:
        return "raise data.crops_per_image or lower data.batch_size"

    def load_splits(self):
        root = self.resolve_root()
        names, stacks = load_samples(scan_folder(root, self.styles), self.load_size)
        for name, stack in zip(names, stacks):
            if min(stack.shape[-2:]) < self.image_size:
                raise ConfigError(
                    f"content image {name} is {stack.shape[-1]}x{stack.shape[-2]}, smaller than data.image_size="
                    f"{self.image_size}; lower image_size or raise data.load_size"
                )
        train, val = self._split(names)
        self.train_names = [names[i] for i in train]
        self.val_names_used = [names[i] for i in val]
        train_stacks = [stacks[i] for i in train]
        train_set = RandomCropPairs(train_stacks, self.image_size, self.crops_per_image, self.scale_range, self.hflip)
        val_set = FixedCropPairs([stacks[i] for i in val], self.image_size, self.val_crops_per_image)
        return train_set, val_set
