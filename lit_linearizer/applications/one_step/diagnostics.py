"""One-step generation's reports computed once after training: linear probes on g_x's latents (seed 002).

Sample-quality diagnostics (latent moments against the data's, closed-form operator fits,
LINEARIZER.md section 7) belong here too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.metrics.probe import linear_probe_accuracy

__all__ = ["linear_probes"]


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
