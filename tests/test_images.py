"""The image conversions every path shares: the same numbers as the formulas they replaced, bit for bit."""

from __future__ import annotations

import torch

from lit_linearizer.images import (
    evenly_spaced,
    from_unit_range,
    to_three_channels,
    to_unit_range,
    uint8_to_model_range,
    uint8_to_unit_range,
)


def test_uint8_to_model_range_is_the_formula_of_every_former_copy():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    expected = pixels.float().div(255.0).mul(2.0).sub(1.0)
    assert torch.equal(uint8_to_model_range(pixels), expected)
    assert torch.equal(uint8_to_model_range(pixels), pixels.float() / 255.0 * 2.0 - 1.0)
    assert uint8_to_model_range(pixels).dtype == torch.float32
    assert float(uint8_to_model_range(pixels).min()) == -1.0 and float(uint8_to_model_range(pixels).max()) == 1.0
    assert torch.equal(uint8_to_unit_range(pixels), pixels.float().div(255.0))


def test_unit_range_round_trip_and_clamp():
    x = torch.linspace(-1, 1, 101)
    assert torch.allclose(from_unit_range(to_unit_range(x)), x, atol=1e-7)
    assert torch.equal(to_unit_range(torch.tensor([-3.0, 3.0])), torch.tensor([0.0, 1.0]))  # clamped
    assert torch.equal(from_unit_range(torch.tensor([0.0, 1.0])), torch.tensor([-1.0, 1.0]))  # not clamped


def test_three_channels():
    grey = torch.rand(2, 1, 4, 4)
    rgb = to_three_channels(grey)
    assert rgb.shape == (2, 3, 4, 4) and all(torch.equal(rgb[:, c], grey[:, 0]) for c in range(3))
    colour = torch.rand(2, 3, 4, 4)
    assert to_three_channels(colour) is colour


class _Items(torch.utils.data.Dataset):
    def __init__(self, images):
        self.stored = images

    def __len__(self):
        return len(self.stored)

    def __getitem__(self, i):
        return {"image": self.stored[i]}


class _InMemory(_Items):
    @property
    def images(self):
        return self.stored


def test_evenly_spaced_picks_the_same_images_in_memory_or_item_by_item():
    images = torch.arange(10.0).view(10, 1, 1, 1)
    picked = evenly_spaced(_InMemory(images), 4)
    assert picked.flatten().tolist() == [0.0, 3.0, 6.0, 9.0]  # ends included, rounded in between
    assert torch.equal(evenly_spaced(_Items(images), 4), picked)
    assert len(evenly_spaced(_Items(images), 50)) == 10  # never more than the split
