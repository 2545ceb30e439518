"""Deterministic nonlinear image filters: the embedded style-transfer data's stand-in "styles".

These are **not** learned styles. A real style-transfer dataset pairs content photos with the
outputs of trained style networks (e.g. fast-neural-style); none of those weights can be
fetched offline, so the embedded default renders its targets with hand-written filters
instead. They were chosen to be clearly nonlinear in pixels, deterministic (no randomness, no
data-dependent global statistics) and local, so that a translation-equivariant model trained on
random crops can in principle learn them:

| name | what it does | nonlinearity |
|---|---|---|
| ``posterise`` | Gaussian smoothing, 4 levels per channel, dark "ink" lines on strong edges | quantisation, edges |
| ``sepia`` | luminance through an S-shaped tone curve, then a brown-to-cream colour ramp | tone curve, colour map |
| ``sketch`` | pencil sketch: grey / (1 - blurred inverted grey) ("colour dodge"), darkened | division, clipping |
| ``painterly`` | Kuwahara filter (mean of the least-varying of 4 quadrants), more saturation | argmin over windows |
| ``solarise`` | Sabattier effect: each channel folded at mid-grey, ``1 - |2v - 1|`` | fold (not injective) |

Position-dependent effects (a vignette, say) are deliberately left out: the targets are
rendered once on whole photos, training sees random crops of them, and a crop does not know
where in the photo it came from, so such an effect could not be learned from crops.

Every filter maps a float64 ``(H, W, 3)`` array in [0, 1] to one of the same shape and range.
Their parameters are the keyword defaults below. ``FILTERS_VERSION`` (a hash of this file) names
the rendered cache, so any change to a filter or a parameter renders the data again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

FILTERS_VERSION = hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:10]

# ITU-R BT.601 luma weights.
_LUMA = np.array([0.299, 0.587, 0.114])


def luminance(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3) -> (H, W)`` luma."""
    return image @ _LUMA


def _smoothstep(low: float, high: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the spatial axes only (reflecting borders)."""
    sigmas = (sigma, sigma, 0.0) if image.ndim == 3 else (sigma, sigma)
    return ndimage.gaussian_filter(image, sigmas, mode="reflect")


def posterise(
    image: np.ndarray,
    levels: int = 4,
    smooth_sigma: float = 1.0,
    edge_sigma: float = 1.0,
    edge_threshold: float = 0.07,
    edge_softness: float = 0.03,
    ink: float = 0.08,
) -> np.ndarray:
    """Posterise with ink edges: smooth, quantise each channel to ``levels`` values, ink strong edges."""
    smooth = _blur(image, smooth_sigma)
    quantised = np.round(smooth * (levels - 1)) / (levels - 1)
    gradient = ndimage.gaussian_gradient_magnitude(luminance(smooth), edge_sigma, mode="reflect")
    edges = _smoothstep(edge_threshold - edge_softness, edge_threshold + edge_softness, gradient)[..., None]
    return quantised * (1.0 - edges) + ink * edges


# Colour ramp of the sepia tone: (position, RGB) stops from shadow to highlight.
_SEPIA_STOPS = np.array([0.0, 0.35, 0.7, 1.0])
_SEPIA_COLOURS = np.array([[0.10, 0.05, 0.02], [0.45, 0.30, 0.17], [0.80, 0.64, 0.45], [1.00, 0.96, 0.85]])


def sepia(image: np.ndarray, gamma: float = 0.9, contrast: float = 0.6) -> np.ndarray:
    """Sepia: luma -> gamma -> S-shaped tone curve (``contrast`` in [0, 1]) -> brown-to-cream ramp."""
    t = luminance(image) ** gamma
    s_curve = 0.5 - 0.5 * np.cos(np.pi * t)
    toned = (1.0 - contrast) * t + contrast * s_curve
    return np.stack([np.interp(toned, _SEPIA_STOPS, _SEPIA_COLOURS[:, c]) for c in range(3)], axis=-1)


_PAPER = np.array([1.0, 0.98, 0.93])


def sketch(image: np.ndarray, blur_sigma: float = 2.5, darkness: float = 2.0) -> np.ndarray:
    """Pencil sketch by colour dodge: ``grey / (1 - blur(1 - grey))``, raised to ``darkness``, on paper."""
    grey = luminance(image)
    blurred_inverse = _blur(1.0 - grey, blur_sigma)
    dodge = np.clip(grey / np.maximum(1.0 - blurred_inverse, 1e-3), 0.0, 1.0)
    return (dodge**darkness)[..., None] * _PAPER


def _box_means(padded: np.ndarray, size: int, height: int, width: int) -> dict[tuple[int, int], np.ndarray]:
    """Means of the ``size x size`` boxes whose top-left corners are offset by 0 or ``size - 1``."""
    # Integral image with a zero row/column in front: box sum = four look-ups.
    integral = np.pad(padded.cumsum(0).cumsum(1), [(1, 0), (1, 0)] + [(0, 0)] * (padded.ndim - 2))
    means = {}
    r = size - 1
    for dy in (0, r):
        for dx in (0, r):
            top, left = dy, dx  # box rows [top + i, top + i + size) in padded coordinates
            total = (
                integral[top + size : top + size + height, left + size : left + size + width]
                - integral[top : top + height, left + size : left + size + width]
                - integral[top + size : top + size + height, left : left + width]
                + integral[top : top + height, left : left + width]
            )
            means[(dy, dx)] = total / (size * size)
    return means


def painterly(image: np.ndarray, radius: int = 3, saturation: float = 1.35) -> np.ndarray:
    """Kuwahara filter: each pixel takes the mean colour of whichever of its four
    ``(radius + 1)``-square quadrants has the least luma variance; then more saturation."""
    height, width = image.shape[:2]
    size = radius + 1
    pad = [(radius, radius), (radius, radius)]
    padded = np.pad(image, pad + [(0, 0)], mode="reflect")
    luma = np.pad(luminance(image), pad, mode="reflect")
    colour_means = _box_means(padded, size, height, width)
    luma_means = _box_means(luma, size, height, width)
    luma_sq_means = _box_means(luma * luma, size, height, width)
    keys = list(colour_means)
    variances = np.stack([luma_sq_means[k] - luma_means[k] ** 2 for k in keys])
    choice = np.argmin(variances, axis=0)  # ties -> the first quadrant: deterministic
    stacked = np.stack([colour_means[k] for k in keys])
    out = np.take_along_axis(stacked, choice[None, ..., None].repeat(3, axis=-1), axis=0)[0]
    grey = luminance(out)[..., None]
    return np.clip(grey + saturation * (out - grey), 0.0, 1.0)


def solarise(image: np.ndarray) -> np.ndarray:
    """Sabattier effect: every channel folded at mid-grey, ``1 - |2v - 1|`` (dark and bright both go dark)."""
    return 1.0 - np.abs(2.0 * image - 1.0)


STYLE_FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "posterise": posterise,
    "sepia": sepia,
    "sketch": sketch,
    "painterly": painterly,
    "solarise": solarise,
}


def render(name: str, image_uint8: np.ndarray) -> np.ndarray:
    """Apply the filter ``name`` to a uint8 ``(H, W, 3)`` image; returns uint8 ``(H, W, 3)``."""
    if name not in STYLE_FILTERS:
        raise KeyError(f"no style filter named {name!r}; known: {sorted(STYLE_FILTERS)}")
    image = image_uint8.astype(np.float64) / 255.0
    out = STYLE_FILTERS[name](image)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
