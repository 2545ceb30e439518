"""One-step generation with the closed-form operator of the trained g: collapse, inversion, moments, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from lit_linearizer.applications.one_step import cli as one_step_cli
from lit_linearizer.checkpoints import load_module, read_checkpoint, run_config
from lit_linearizer.randomness import per_sample_normal
from lit_linearizer.tasks.inputs import CommandInputs
from lit_linearizer.tasks.train import train
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP

NOISE_SEED = 3


@pytest.fixture
def random_model(compose_cfg):
    """A tiny one-step module on 8 x 8 images in float64, every parameter moved off its init."""
    cfg = compose_cfg(["experiment=mnist_one_step", *TINY_ONE_STEP, "data.image_size=8", "model.sampler.steps=64"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False).double()
    model.train()
    model.network(torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model.eval()


def training_images(n: int = 400) -> torch.Tensor:
    """Structured images: a few smooth patterns mixed with noise, not a Gaussian."""
    generator = torch.Generator().manual_seed(2)
    patterns = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    weights = torch.rand(n, 4, generator=generator, dtype=torch.float64) ** 3
    images = torch.einsum("nk,kchw->nchw", weights, patterns) + 0.1 * torch.randn(n, 1, 8, 8, generator=generator)
    return images.clamp(-1, 1)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("rank", [None, 12])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_fitted_one_step_equals_multi_step_and_inverts(random_model, rank, method):
    model = random_model.model
    fit = model.fit_transport(training_images(), noise_seed=NOISE_SEED, rank=rank)
    assert model.uses_transport and model.active_operator is fit.operator
    model.sampler_settings["method"] = method
    model.clear_cache()
    noise = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    one, multi = model.sample(noise), model.sample(noise, steps=64, method=method)
    assert relative(one, multi) <= 1e-10
    images = training_images()[:4]
    assert relative(model.sample(model.invert(images)), images) <= 1e-8
    # The latents of the samples are what the decoder receives.
    torch.testing.assert_close(model.g_x(one).flatten(1), model.latents(noise), rtol=1e-8, atol=1e-8)


def test_fitted_samples_have_the_data_latents_moments(random_model):
    """On the very noise draws the fit used, B carries the noise latents' moments onto the data latents'."""
    model, images = random_model.model, training_images()
    fit = model.fit_transport(images, noise_seed=NOISE_SEED)
    data = model.g_x(images).flatten(1)
    noise = per_sample_normal(torch.arange(len(images)), (1, 8, 8), NOISE_SEED, torch.float64)
    generated = model.latents(noise)
    torch.testing.assert_close(generated.mean(0), data.mean(0), rtol=1e-6, atol=1e-6)
    cov = lambda z: torch.cov(z.T, correction=0)  # noqa: E731
    assert relative(cov(generated), cov(data)) < 1e-5  # RK4, 64 steps (exact flow map: roundoff)
    torch.testing.assert_close(fit.mean, data.mean(0))
    # The trained A_t does not: its latents are far from the data's moments.
    assert relative(cov(model.latents(noise, learned=True)), cov(data)) > 0.1


def test_sampler_operator_learned_ignores_the_fit(random_model):
    model = random_model.model
    noise = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    before = model.sample(noise)
    model.fit_transport(training_images(), noise_seed=NOISE_SEED)
    model.sampler_settings["operator"] = "learned"
    model.clear_cache()
    torch.testing.assert_close(model.sample(noise), before, rtol=0, atol=0)


def test_training_fits_logs_diagnostics_and_checkpoints_the_fit(compose_cfg, tmp_path):
    cfg = compose_cfg(
        ["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "trainer.limit_train_batches=4",
         "trainer.check_val_every_n_epoch=1"]
    )
    metrics = train(cfg)
    # Diagnostics of the fitted sampler, the trained A_t, and the data-vs-data floor.
    for key in ("latent", "latent_learned", "latent_floor"):
        assert {f"{key}_mean_gap", f"{key}_cov_gap"} <= set(metrics), key
    # The fit matches the data mean: what is left is the sampling error of 32 samples, about 1 / sqrt(32).
    assert metrics["latent_mean_gap"] < 2.5 / 32**0.5
    assert metrics["psnr_one_vs_multi"] > 80 and metrics["psnr_inversion"] > 40
    run = tmp_path / "run"
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["latent_transport"]["step"] == checkpoint["global_step"]
    loaded = load_module(run / "checkpoints" / "last.ckpt")
    assert loaded.model.uses_transport
    noise = loaded.model.noise(4, seed=0)
    one, multi = loaded.sample(noise), loaded.sample(noise, steps=loaded.sampler_settings["steps"])
    assert relative(one, multi) < 1e-4  # float32
    assert json.loads((run / "metrics.json").read_text())["metrics"]["latent_cov_gap"] == pytest.approx(
        metrics["latent_cov_gap"]
    )


def test_sampling_refits_a_missing_or_stale_fit(compose_cfg, tmp_path):
    """No validation before the last checkpoint: it holds no fit; `linearizer sample` fits one on the training
    images of the checkpoint's data config, the same fit as the module's own (same seed, same images)."""
    cfg = compose_cfg(["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "evaluate_after_fit=false"])
    train(cfg)
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(path)
    assert "latent_transport" not in checkpoint
    loaded = load_module(path)
    assert not loaded.model.transport_current
    inputs = CommandInputs(run_config(checkpoint)["data"])
    grids = one_step_cli.sample(loaded.model, inputs, n=4, seed=0)
    assert loaded.model.transport_current and loaded.model.uses_transport
    assert grids["samples_one_step"].shape[0] == 1  # uint8 pixels in the model's channels
    # The same fit as the module's own on the same weights.
    images = inputs.training_images()
    reference = load_module(path).model.fit_transport(images)
    torch.testing.assert_close(loaded.model.transport.left, reference.operator.left)
