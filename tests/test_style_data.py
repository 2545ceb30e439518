"""Style-transfer data: the filters, the embedded default, the folder layout and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.style import StyleDataModule, render_embedded, scan_folder
from datamodules.style_filters import STYLE_FILTERS, render
from lit_linearizer.errors import ConfigError, DataNotFoundError


def _photo(seed: int = 0, size=(20, 24)) -> np.ndarray:
    """A smooth random colour image with edges, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.Resampling.NEAREST))


@pytest.mark.parametrize("name", sorted(STYLE_FILTERS))
def test_filters_are_deterministic_nonlinear_and_in_range(name):
    image = _photo()
    first, second = render(name, image), render(name, image.copy())
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert np.array_equal(first, second)
    # Nonlinear: the filter of a mix of two images is not the mix of their filters.
    other = _photo(1)
    mix = ((image.astype(np.float64) + other) / 2).round().astype(np.uint8)
    mixed_outputs = (render(name, image).astype(np.float64) + render(name, other)) / 2
    assert np.abs(render(name, mix) - mixed_outputs).max() > 20
    assert not np.array_equal(first, image)


def test_filters_do_what_their_names_say():
    image = _photo().astype(np.float64) / 255.0
    sketch = STYLE_FILTERS["sketch"](image)
    assert np.allclose(sketch[..., 0] * 0.93, sketch[..., 2])  # one grey on tinted paper
    assert np.allclose(STYLE_FILTERS["solarise"](image), STYLE_FILTERS["solarise"](1.0 - image))  # a fold at mid-grey
    sepia = STYLE_FILTERS["sepia"](image)
    assert (sepia[..., 0] >= sepia[..., 1]).all() and (sepia[..., 1] >= sepia[..., 2]).all()  # warm tones only
    flat = np.full((12, 12, 3), 0.3)
    assert np.allclose(STYLE_FILTERS["painterly"](flat), 0.3)  # Kuwahara keeps flat regions
    posterised = STYLE_FILTERS["posterise"](flat)
    assert np.allclose(posterised, 1 / 3)  # 0.3 -> nearest of 4 levels, no edges


@pytest.fixture(scope="module")
def embedded_root(tmp_path_factory):
    """The embedded default at a 40-pixel short side, where StyleDataModule(render_size=40) looks for it."""
    data_dir = tmp_path_factory.mktemp("embedded")
    return render_embedded(StyleDataModule(data_dir=str(data_dir), render_size=40).embedded_dir, short_side=40)


def test_embedded_default_is_rendered_once_in_the_folder_layout(embedded_root):
    manifest = json.loads((embedded_root / "manifest.json").read_text())
    assert manifest["styles"] == list(STYLE_FILTERS) and len(manifest["photos"]) == 18
    contents = sorted(p.name for p in (embedded_root / "content").iterdir())
    assert len(contents) == 18 and "astronaut.png" in contents and "china.png" in contents
    for style in STYLE_FILTERS:
        assert sorted(p.name for p in (embedded_root / style).iterdir()) == contents
    # The targets are the filters applied to the stored contents.
    content = np.asarray(Image.open(embedded_root / "content" / "coffee.png"))
    assert min(content.shape[:2]) == 40
    assert np.array_equal(np.asarray(Image.open(embedded_root / "sepia" / "coffee.png")), render("sepia", content))
    # No staging folders left behind, and a second call does not render again.
    assert [p.name for p in embedded_root.parent.iterdir()] == [embedded_root.name]
    stamp = (embedded_root / "manifest.json").stat().st_mtime_ns
    assert render_embedded(embedded_root, short_side=40) == embedded_root
    assert (embedded_root / "manifest.json").stat().st_mtime_ns == stamp


def test_embedded_datamodule_batches(embedded_root):
    data = StyleDataModule(
        styles=["sepia", "sketch"], data_dir=str(embedded_root.parent), render_size=40, image_size=32,
        val_names=["chelsea", "camera"], crops_per_image=2, batch_size=4, image_shape=[3, 32, 32],
    )  # fmt: skip
    assert data.embedded_dir == embedded_root
    data.setup("fit")
    assert data.val_names_used == ["camera", "chelsea"] and len(data.train_names) == 16
    assert len(data.train_dataset) == 32 and len(data.val_dataset) == 10
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["target"].shape == (4, 2, 3, 32, 32)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    val = next(iter(data.val_dataloader()))
    assert torch.equal(val["index"], torch.arange(4))


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
    """content/{a,b,c}.png; 'invert' targets (255 - content) as .png, 'same' targets as .jpg-free .png."""
    root = tmp_path / "pairs"
    for i, name in enumerate("abc"):
        image = _photo(i, size=(24, 28))
        _write(root / "content" / f"{name}.png", image)
        _write(root / "invert" / f"{name}.png", 255 - image)
        _write(root / "same" / f"{name}.png", image)
    return root


def test_folder_crops_are_aligned_between_content_and_targets(folder):
    torch.manual_seed(0)
    data = StyleDataModule(
        styles=["invert", "same"], source="folder", root=str(folder), image_size=16,
        val_names=["c"], scale_range=[1.0, 1.5], crops_per_image=8, batch_size=16,
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    images, targets = batch["image"], batch["target"]
    # Same window, same flip, same rescaling: invert(x) = -x and same(x) = x in [-1, 1].
    assert torch.allclose(targets[:, 0], -images, atol=1e-5)
    assert torch.allclose(targets[:, 1], images, atol=1e-6)
    assert not torch.allclose(images[0], images[1])  # different random crops
    # Validation crops are fixed: centre then corners, the same on every setup.
    again = StyleDataModule(
        styles=["invert", "same"], source="folder", root=str(folder), image_size=16, val_names=["c"]
    )
    again.setup("validate")
    assert torch.equal(again.val_dataset.images, data.val_dataset.images)
    centre = torch.from_numpy(np.array(Image.open(folder / "content" / "c.png"))[4:20, 6:22]).permute(2, 0, 1)
    assert torch.allclose(data.val_dataset.images[0], centre.float() / 127.5 - 1, atol=1e-6)


def _one_line_error(error_type, match, func, *args):
    with pytest.raises(error_type, match=match) as info:
        func(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_folder_errors_name_the_file(folder, tmp_path):
    (folder / "invert" / "b.png").unlink()
    message = _one_line_error(DataNotFoundError, "missing target", scan_folder, folder, ["invert", "same"])
    assert str(folder / "invert" / "b.png") in message and str(folder / "content" / "b.png") in message

    _write(folder / "invert" / "b.png", _photo(5, size=(10, 10)))
    data = StyleDataModule(styles=["invert", "same"], source="folder", root=str(folder), image_size=8)
    message = _one_line_error(DataNotFoundError, "10x10", data.setup, "fit")
    assert str(folder / "invert" / "b.png") in message and "28x24" in message

    (folder / "empty").mkdir()
    message = _one_line_error(DataNotFoundError, "is empty", scan_folder, folder, ["same", "empty"])
    assert str(folder / "empty") in message
    message = _one_line_error(DataNotFoundError, "does not exist", scan_folder, folder, ["same", "nope"])
    assert "nope" in message and "['empty', 'invert', 'same']" in message
    _one_line_error(DataNotFoundError, "does not exist", scan_folder, tmp_path / "missing", ["same"])
    _one_line_error(ConfigError, "list the styles", scan_folder, folder, [])
    (folder / "content" / "bad.png").write_bytes(b"not an image")
    _write(folder / "same" / "bad.png", _photo(0))
    data = StyleDataModule(styles=["same"], source="folder", root=str(folder), image_size=8)
    _one_line_error(DataNotFoundError, "cannot read image .*bad.png", data.setup, "fit")


def test_config_errors():
    with pytest.raises(ConfigError, match="embedded styles"):
        StyleDataModule(styles=["van_gogh"])
    with pytest.raises(ConfigError, match="data.root"):
        StyleDataModule(source="folder")
    with pytest.raises(ConfigError, match="scale_range"):
        StyleDataModule(scale_range=[0.5, 1.0])
