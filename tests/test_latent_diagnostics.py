"""Sample-quality diagnostics: latent moment gaps on Gaussians with known moments, the recognisable rate."""

from __future__ import annotations

import math

import pytest
import torch

from lit_linearizer.metrics.digit_classifier import DigitClassifier
from lit_linearizer.metrics.digit_diagnostics import DigitDiagnostics, pixel_gaussian_samples
from lit_linearizer.metrics.latent_moments import LatentMomentGap
from lit_linearizer.metrics.recognisable import RecognisableRate

pytestmark = pytest.mark.usefixtures("float64_default")
N, K = 12, 5


def reference(seed: int = 0):
    """A Gaussian with known moments: mean, covariance = Q diag(v) Q^T + 0.1 (I - Q Q^T)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(N, N, generator=generator)).Q
    variances = torch.tensor([9.0, 4, 3, 2, 1] + [0.1] * (N - K))
    mean = torch.randn(N, generator=generator)
    return mean, basis, variances


def samples(n, mean, basis, variances, seed):
    noise = torch.randn(n, N, generator=torch.Generator().manual_seed(seed))
    return mean + (noise * variances.sqrt()) @ basis.T


def metric(mean, basis, variances, key="latent"):
    return LatentMomentGap(basis[:, :K], mean, torch.diag(variances[:K]), float(variances.sum()), key=key)


def test_samples_of_the_reference_gaussian_have_gaps_of_sampling_size():
    mean, basis, variances = reference()
    n = 20000
    gap = metric(mean, basis, variances)
    for chunk in samples(n, mean, basis, variances, seed=1).split(999):
        gap.update(chunk)
    values = gap.compute()
    assert values["latent_mean_gap"] < 3 / math.sqrt(n)
    assert values["latent_cov_gap"] < 5 * math.sqrt(2 / n) * K  # Frobenius error of a K x K sample covariance


@pytest.mark.parametrize("scale, shift", [(2.0, 0.0), (1.0, 0.5), (0.5, -1.0)])
def test_known_scale_and_shift_give_the_known_gaps(scale, shift):
    """Generated = mean + scale (z - mean) + shift * direction: cov gap |scale^2 - 1|, mean gap |shift| / sqrt(tr S)."""
    mean, basis, variances = reference()
    data = samples(4000, mean, basis, variances, seed=2)
    # Reference moments *of these very samples*, so the only gap is the one we put in.
    ref = LatentMomentGap.from_latents(data, rank=K)
    direction = torch.randn(N, generator=torch.Generator().manual_seed(3))
    direction = direction / direction.norm()
    generated = data.mean(0) + scale * (data - data.mean(0)) + shift * direction
    ref.update(generated)
    values = ref.compute()
    total = float(torch.cov(data.T, correction=0).trace())
    assert values["latent_cov_gap"] == pytest.approx(abs(scale**2 - 1), rel=1e-6, abs=1e-6)
    assert values["latent_mean_gap"] == pytest.approx(abs(shift) / math.sqrt(total), rel=1e-6, abs=1e-9)


def test_recognisable_rate_counts_confident_classes():
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 9.0, 0], [1.0, 1.1, 0.9]])
    metric = RecognisableRate(lambda x: x, threshold=0.9, num_classes=3)
    metric.update(logits[:2])
    metric.update(logits[2:])
    values = metric.compute()
    assert values["recognisable_rate"] == pytest.approx(0.75)
    assert values["recognisable_classes"] == 2
    assert metric.histogram().tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="threshold"):
        RecognisableRate(lambda x: x, threshold=1.5)


def test_pixel_gaussian_baseline_is_cached_per_dataset(tmp_path):
    generator = torch.Generator().manual_seed(0)
    train = torch.rand(300, 1, 32, 32, generator=generator, dtype=torch.float32) * 2 - 1
    val = torch.rand(100, 1, 32, 32, generator=generator, dtype=torch.float32) * 2 - 1
    sampled = pixel_gaussian_samples(train, 2000)
    flat = train.flatten(1).double()
    assert sampled.shape == (2000, 1, 32, 32) and sampled.abs().max() <= 1
    assert float((sampled.flatten(1).double().mean(0) - flat.mean(0)).abs().max()) < 0.1
    torch.manual_seed(0)
    diagnostics = DigitDiagnostics(DigitClassifier().float())  # as trained: float32
    first = diagnostics.references(train, val, tmp_path)
    assert set(first) == {"recognisable_rate_real", "fid_mnist_classifier_pixel_gaussian"}
    assert first["fid_mnist_classifier_pixel_gaussian"] > 0
    assert len(list(tmp_path.glob("digit_baselines_*.json"))) == 1
    assert diagnostics.references(train, val, tmp_path) == first  # read back, not recomputed
