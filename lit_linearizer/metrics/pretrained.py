"""Metrics and losses that need pretrained networks: LPIPS and Inception FID.

Each builder returns the real thing, built from real weights, or raises WeightsUnavailable
with a one-line reason. Callers decide whether that skips the metric (with a notice) or is
an error (``metrics.strict=true``). No builder ever downloads.
"""

from __future__ import annotations

import contextlib
import io

from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

from lit_linearizer.metrics import weights

OFFLINE_HINT = "run `linearizer fetch-weights` where there is internet, or set metrics.{key}=<path>"


class WeightsUnavailable(Exception):
    """The pretrained weights a metric needs are not on this machine."""


def _lpips_backbone(net: str, configured: str | None):
    path = weights.lpips_backbone_weights(net, configured)
    if path is None:
        raise WeightsUnavailable(
            f"no LPIPS {net} backbone weights in the torch hub cache "
            f"({weights.LPIPS_BACKBONE_URLS[net].rsplit('/', 1)[-1]}); "
            + OFFLINE_HINT.format(key="lpips_backbone_weights")
        )
    return path


def to_three_channels(images: Tensor) -> Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class LPIPSLoss(nn.Module):
    """Differentiable LPIPS (the ``lpips`` package) on images in [-1, 1]; frozen, mean over the batch."""

    def __init__(self, net: str = "alex", backbone_weights: str | None = None):
        super().__init__()
        import lpips

        path = _lpips_backbone(net, backbone_weights)
        with weights.hub_serving(weights.LPIPS_BACKBONE_URLS[net], path), contextlib.redirect_stdout(io.StringIO()):
            self.lpips = lpips.LPIPS(net=net, verbose=False)
        self.lpips.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # LPIPS has dropout layers: always evaluate

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.lpips(to_three_channels(prediction), to_three_channels(target)).mean()


def lpips_metric(net: str = "alex", backbone_weights: str | None = None) -> LearnedPerceptualImagePatchSimilarity:
    """torchmetrics LPIPS expecting images in [0, 1] (``normalize=True``)."""
    path = _lpips_backbone(net, backbone_weights)
    with weights.hub_serving(weights.LPIPS_BACKBONE_URLS[net], path):
        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
    return metric.requires_grad_(False)


def inception_fid(inception_weights: str | None = None) -> FrechetInceptionDistance:
    """torchmetrics FID (torch-fidelity's Inception-v3, 2048-d pool features) on images in [0, 1]."""
    path = weights.inception_weights(inception_weights)
    if path is None:
        raise WeightsUnavailable(
            f"no FID Inception weights in the torch hub cache ({weights.INCEPTION_URL.rsplit('/', 1)[-1]}); "
            + OFFLINE_HINT.format(key="inception_weights")
        )
    return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(path))
