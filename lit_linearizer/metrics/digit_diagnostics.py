"""Digit-classifier diagnostics beside the FID: recognisable samples, and the baselines a generator must beat.

- ``recognisable_rate``: the share of samples the digit classifier labels with confidence >= 0.9, with
  the classes they cover (metrics/recognisable.py); on the real validation digits it is the reference
  ``recognisable_rate_real`` (about 0.9).
- ``fid_mnist_classifier_pixel_gaussian``: the FID of a Gaussian fitted to the training digits in pixel
  space (mean and full covariance, no network at all), computed once per dataset and cached: the first
  baseline a user would try, which a generator must beat.
- fresh FIDs in the same feature space for other image sources (e.g. a latent-Gaussian ceiling).

Example:
    >>> import torch
    >>> from lit_linearizer.metrics.digit_classifier import DigitClassifier
    >>> diagnostics = DigitDiagnostics(DigitClassifier().eval())
    >>> metric = diagnostics.recognisable()
    >>> metric.update(torch.rand(4, 1, 32, 32))  # images in [0, 1]
    >>> sorted(metric.compute())
    ['recognisable_classes', 'recognisable_rate']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from lit_linearizer.images import from_unit_range, to_unit_range
from lit_linearizer.metrics.digit_classifier import IMAGE_SIZE, DigitClassifier, DigitFeatures, _to_classifier_input
from lit_linearizer.metrics.recognisable import RecognisableRate

__all__ = ["DigitDiagnostics", "pixel_gaussian_samples"]

BASELINE_VERSION = "pixel-gaussian-v1"
CONFIDENCE = 0.9


@torch.no_grad()
def pixel_gaussian_samples(train_images: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` samples in [-1, 1] of the Gaussian (mean, full covariance) of the training images, in float64."""
    flat = train_images.flatten(1).double()
    mean, covariance = flat.mean(0), torch.cov(flat.T, correction=0)
    eye = torch.eye(covariance.shape[0], dtype=torch.float64)
    factor = torch.linalg.cholesky(covariance + 1e-6 * covariance.diagonal().mean() * eye)
    noise = torch.randn(n, flat.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (mean + noise @ factor.T).clamp(-1.0, 1.0).float().view(n, *train_images.shape[1:])


class DigitDiagnostics:
    """Metrics and references built on one trained digit classifier (kept frozen, never saved with a model)."""

    def __init__(self, classifier: DigitClassifier):
        self.classifier = classifier.eval().requires_grad_(False)

    def _logits(self, images: Tensor) -> Tensor:
        """Images in [0, 1], any size -> logits (the classifier takes 32 x 32 in [-1, 1])."""
        return self.classifier(_to_classifier_input(from_unit_range(images.float())))

    def to(self, device: torch.device | str) -> DigitDiagnostics:
        self.classifier.to(device)
        return self

    def recognisable(self) -> RecognisableRate:
        """An empty ``recognisable_rate`` metric (images in [0, 1])."""
        return RecognisableRate(self._logits, threshold=CONFIDENCE, num_classes=10)

    def fid(self) -> FrechetInceptionDistance:
        """An empty FID in the classifier's feature space (images in [0, 1]), like ``fid_mnist_classifier``."""
        size = (1, IMAGE_SIZE, IMAGE_SIZE)
        return FrechetInceptionDistance(feature=DigitFeatures(self.classifier), normalize=True, input_img_size=size)

    @torch.no_grad()
    def references(self, train_images: Tensor, val_images: Tensor, cache_dir: str | Path) -> dict[str, float]:
        """``recognisable_rate_real`` of the validation digits and ``fid_mnist_classifier_pixel_gaussian``
        (as many pixel-Gaussian samples as validation digits), the latter cached per dataset."""
        real = self.recognisable()
        for chunk in val_images.split(500):
            real.update(to_unit_range(chunk))
        references = {"recognisable_rate_real": float(real.compute()["recognisable_rate"])}
        digest = hashlib.sha256(BASELINE_VERSION.encode())
        for images in (train_images, val_images):
            digest.update(str(tuple(images.shape)).encode())
            digest.update(images.float().contiguous().cpu().numpy().tobytes())
        path = Path(cache_dir) / f"digit_baselines_{digest.hexdigest()[:16]}.json"
        if path.is_file():
            references.update(json.loads(path.read_text()))
            return references
        fid = self.fid()
        fid.update(to_unit_range(val_images.cpu()), real=True)
        fid.update(to_unit_range(pixel_gaussian_samples(train_images.cpu(), len(val_images))), real=False)
        baseline = {"fid_mnist_classifier_pixel_gaussian": float(fid.compute())}
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(baseline))
        temporary.replace(path)
        references.update(baseline)
        return references
