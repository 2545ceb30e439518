"""One-step generation's diagnostics: where the samples stand (LINEARIZER.md section 7) and linear probes (seed 002).

Validation logs the generated latents' moment gaps to the data latents (and the data-vs-data floor), the
latent-Gaussian ceiling (the data latents' own Gaussian decoded: the best any linear generator on this g can
do) and the recognisable rate; after training, linear probes on g_x's latents against raw pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_linearizer.applications.one_step.model import OneStepModel
from lit_linearizer.applications.one_step.transport import LatentFit
from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.images import to_three_channels, to_unit_range
from lit_linearizer.metrics.digit_diagnostics import DigitDiagnostics
from lit_linearizer.metrics.latent_moments import LatentMomentGap
from lit_linearizer.metrics.probe import linear_probe_accuracy

__all__ = ["MOMENT_GAP_RANK", "diagnostic_metrics", "linear_probes", "update_diagnostics"]

MOMENT_GAP_RANK = 64  # principal directions of the data latents in which the moment gaps are measured


@torch.no_grad()
def linear_probes(
    g_x: InvertibleModule, train_images: Tensor, train_labels: Tensor, val_images: Tensor, val_labels: Tensor, device
) -> dict[str, float]:
    """Test accuracy of logistic regressions on ``g_x(x)`` latents and on raw pixels (g is a bijection, so
    any gain is purely a change of coordinates)."""

    def latents(images: Tensor) -> Tensor:
        return torch.cat([g_x(chunk.to(device)).flatten(1).cpu() for chunk in images.split(500)])

    latent = linear_probe_accuracy(latents(train_images), train_labels, latents(val_images), val_labels)
    return {
        "probe_accuracy_latent": latent,
        "probe_accuracy_pixels": linear_probe_accuracy(train_images, train_labels, val_images, val_labels),
    }


def diagnostic_metrics(fit: LatentFit | None, digits: DigitDiagnostics | None, with_learned: bool) -> dict[str, Metric]:
    """This validation's diagnostics (out of the module tree), against the latest fit's data moments.

    ``latent``: the one-step samples' latents against the data latents' mean and covariance (in the top
    MOMENT_GAP_RANK principal directions); ``latent_floor``: held-out data latents, the sampling floor;
    ``latent_learned``: the trained A_t's samples (when the fit is what samples); ``recognisable`` and
    ``fid_mnist_classifier_latent_gaussian`` (the data latents' Gaussian decoded) with the digit classifier.
    """
    metrics: dict[str, Metric] = {}
    if fit is not None:
        k = min(MOMENT_GAP_RANK, fit.basis.shape[1])
        for key in ("latent", "latent_floor", *(("latent_learned",) if with_learned else ())):
            metrics[key] = LatentMomentGap(
                fit.basis[:, :k], fit.mean, torch.diag(fit.variances[:k]), fit.total_variance, key=key
            )
    if digits is not None:
        metrics["recognisable"] = digits.recognisable()
        if fit is not None:
            metrics["fid_mnist_classifier_latent_gaussian"] = digits.fid()
    return metrics


@torch.no_grad()
def update_diagnostics(
    metrics: dict[str, Metric],
    model: OneStepModel,
    fit: LatentFit | None,
    images: Tensor,
    noise: Tensor,
    ceiling_noise: Tensor,
    one_step: Tensor,
) -> None:
    """Update ``diagnostic_metrics`` with a validation batch: real ``images`` in [-1, 1], the evaluation
    ``noise`` and its one-step samples in [0, 1], standard normal ``ceiling_noise (B, N)``."""
    if "recognisable" in metrics:
        metrics["recognisable"].update(one_step)
    if fit is None:
        return
    metrics["latent"].update(model.latents(noise))
    metrics["latent_floor"].update(model.g_x(images).flatten(1))
    if "latent_learned" in metrics:
        metrics["latent_learned"].update(model.latents(noise, learned=True))
    if "fid_mnist_classifier_latent_gaussian" in metrics:
        ceiling = model.g_x.inverse(fit.gaussian(ceiling_noise).view(-1, *model.image_shape))
        fid = metrics["fid_mnist_classifier_latent_gaussian"]
        fid.update(to_three_channels(to_unit_range(images)), real=True)
        fid.update(to_three_channels(to_unit_range(ceiling)), real=False)
