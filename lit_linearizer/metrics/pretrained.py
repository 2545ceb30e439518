"""Metrics and losses that need pretrained networks (LPIPS, Inception FID), and the registry that builds or skips them.

Each builder returns the real thing, built from real weights, or raises WeightsUnavailable
with a one-line reason. ``PretrainedMetrics`` turns that into a skip with a notice, or an error
with ``metrics.strict=true``. No builder ever downloads.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

from lit_linearizer.errors import ConfigError, MetricWeightsError
from lit_linearizer.images import save_pngs, to_three_channels
from lit_linearizer.metrics import weights
from lit_linearizer.metrics.digit_classifier import digit_fid

__all__ = [
    "PERCEPTUAL_CHOICES",
    "LPIPSLoss",
    "PretrainedMetrics",
    "WeightsUnavailable",
    "check_perceptual",
    "inception_fid",
    "lpips_metric",
    "to_three_channels",
]

log = logging.getLogger(__name__)

PERCEPTUAL_CHOICES = ("auto", "lpips", "mse")
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


def check_perceptual(mode: str) -> None:
    """``model.perceptual`` must be one of PERCEPTUAL_CHOICES (a one-line ConfigError otherwise)."""
    if mode not in PERCEPTUAL_CHOICES:
        raise ConfigError(f"model.perceptual={mode!r} is not one of {PERCEPTUAL_CHOICES}")


class PretrainedMetrics:
    """A run's metrics (and frozen losses) that need pretrained weights: built once if the weights exist, else skipped.

    A skip is recorded in ``skipped`` (name -> reason, written to metrics.json) with a one-line notice;
    with ``settings["strict"]`` it is a MetricWeightsError instead. ``info`` holds what the numbers are read
    against (the digit classifier's weights hash and file). Kept outside any module tree, so these networks
    never enter checkpoints, the EMA copy or the optimizer. ``export_images`` makes ``update_fids`` also write
    the images every FID sees, as PNG files (`linearizer eval ... export_images=true`).

    Args:
        settings: the run's ``model.metrics`` (read when a metric is built: ``strict``, ``lpips_net``,
            ``lpips_backbone_weights``).
        notice: where notices go (the LightningModule passes its rank-zero logger).
    """

    def __init__(self, settings: Mapping[str, Any], notice: Callable[[str], None] = log.warning):
        self.settings = settings
        self.notice = notice
        self.metrics: dict[str, Metric] = {}
        self.frozen: dict[str, nn.Module] = {}  # e.g. the LPIPS training loss
        self.skipped: dict[str, str] = {}
        self.info: dict[str, str] = {}
        self.perceptual_name = "mse"
        self.export_dir: Path | None = None
        self._exported = {"real": 0, "generated": 0}

    def add(self, name: str, build: Callable[[], Any], device: torch.device | str = "cpu") -> Any | None:
        """Build a metric (or loss) that needs pretrained weights, or skip it; built once (later calls return it)."""
        if name in self.metrics:
            return self.metrics[name]
        if name in self.skipped:
            return None
        try:
            metric = build()
        except WeightsUnavailable as missing:
            if self.settings.get("strict", False):
                raise MetricWeightsError(f"{name}: {missing} (metrics.strict=true)") from None
            self.skipped[name] = str(missing)
            self.notice(f"{name} skipped: {missing}")
            return None
        if isinstance(metric, Metric):
            self.metrics[name] = metric.to(device)
        return metric

    @property
    def perceptual_loss(self) -> nn.Module | None:
        """The frozen LPIPS training loss, or None (see ``setup_perceptual_loss``)."""
        return self.frozen.get("perceptual_loss")

    def setup_perceptual_loss(self, mode: str, device: torch.device | str = "cpu") -> None:
        """LPIPS as a training loss: ``lpips`` (required), ``auto`` (if its weights exist) or ``mse`` (none).

        The run says which it uses (``perceptual_name``, printed and written to metrics.json).
        """
        check_perceptual(mode)
        if mode != "mse" and self.perceptual_loss is None:
            net = self.settings.get("lpips_net", "alex")
            build = lambda: LPIPSLoss(net, self.settings.get("lpips_backbone_weights"))  # noqa: E731
            loss = build() if mode == "lpips" else self.add("lpips_loss", build)
            if loss is not None:
                self.frozen["perceptual_loss"] = loss.to(device)
                self.perceptual_name = f"lpips-{net}"
        self.notice(f"perceptual loss: {self.perceptual_name}")

    def add_digit_fid(self, splits, cache_dir, device, leader: bool = True, barrier=None) -> dict[str, float]:
        """Register ``fid_mnist_classifier`` (``digit_classifier.digit_fid``) on ``(train, val)`` splits.

        The splits have ``images`` in [-1, 1] and ``labels``; None skips the metric. Returns the values to
        log beside it (classifier accuracy, real-vs-real floor); {} when registered before or skipped.
        ``leader``/``barrier``: several processes, the classifier trains and is cached once.
        """
        name = "fid_mnist_classifier"
        if splits is None:
            self.skipped[name] = "no datamodule to train the digit classifier on"
        if splits is None or name in self.metrics:
            return {}
        train, val = splits
        metric, references = digit_fid(train.images, train.labels, val.images, val.labels, cache_dir, leader, barrier)
        self.notice(
            f"{name}: digit-classifier features (test accuracy {references['mnist_classifier_accuracy']:.3f}); "
            f"real-vs-real floor {references['fid_mnist_classifier_floor']:.3f}"
        )
        self.metrics[name] = metric.to(device)
        self.info[f"{name}_weights_sha256"] = metric.weights_sha256
        self.info[f"{name}_weights_file"] = metric.weights_file
        return references

    def export_images(self, directory: str | Path | None) -> None:
        """From now on ``update_fids`` also writes its images to ``<directory>/real`` and ``<directory>/generated``
        (PNG, numbered in the order they come; ``rank<r>_`` before the number on ranks other than 0); None stops."""
        self.export_dir = None if directory is None else Path(directory)
        self._exported = {"real": 0, "generated": 0}

    def update_fids(self, real: Tensor, generated: Tensor) -> None:
        """Feed every registered FID (names ``fid...``) real and generated images in [0, 1]."""
        for name, metric in self.metrics.items():
            if name.startswith("fid"):
                metric.update(to_three_channels(real), real=True)
                metric.update(to_three_channels(generated), real=False)
        if self.export_dir is not None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            prefix = f"rank{rank}_" if rank else ""
            for kind, images in (("real", real), ("generated", generated)):
                self._exported[kind] += save_pngs(images, self.export_dir / kind, self._exported[kind], prefix)

    def to(self, device: torch.device | str) -> PretrainedMetrics:
        for module in [*self.metrics.values(), *self.frozen.values()]:
            module.to(device)
        return self
