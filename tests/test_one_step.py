"""The one-step module: exact collapse through the whole model, inversion, training, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate

from lit_linearizer.checkpoints import load_module, read_checkpoint
from lit_linearizer.tasks.train import train
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP


def _perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


@pytest.fixture
def random_model(compose_cfg):
    cfg = compose_cfg(["experiment=mnist_one_step", *TINY_ONE_STEP, "data.image_size=8"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False).double()
    # A training-mode pass initialises ActNorm, then every parameter is moved off its init.
    model.train()
    model.network(torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    _perturb(model, 0.05)
    return model.eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("factored", [True, False])
def test_one_step_equals_multi_step_through_the_networks(random_model, method, factored):
    random_model.sampler_settings.update(method=method, factored=factored)
    random_model.model.clear_cache()
    noise = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    one = random_model.sample(noise, steps=1)
    multi = random_model.sample(noise, steps=random_model.sampler_settings["steps"], method=method)
    assert _relative(one, multi) <= 1e-10


def test_inversion_round_trip(random_model):
    images = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    noise = random_model.invert(images)
    assert noise.shape == images.shape
    assert _relative(random_model.sample(noise), images) <= 1e-8
    # And the pseudo-inverse of the one-step generator is a right inverse on its range.
    generator = random_model.generator()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert _relative(generator.pinv(generator(x)), x) <= 1e-8


def test_interpolation_endpoints_are_the_images(random_model):
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    path = random_model.interpolate(images[0], images[1], num=5)
    assert path.shape == (5, 1, 8, 8)
    assert _relative(path[0], images[0]) <= 1e-8 and _relative(path[-1], images[1]) <= 1e-8


def test_loss_terms_and_gradients(random_model):
    random_model.train()
    batch = {"image": torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1, "index": torch.arange(6)}
    terms = random_model.model_step(batch)
    names = {"loss", "flow_matching", "noise_reconstruction", "data_reconstruction", "prediction", "likelihood"}
    assert set(terms) == names
    expected = sum(random_model.loss_weights[k] * terms[k] for k in terms if k != "loss")
    assert torch.allclose(terms["loss"], expected)
    terms["loss"].backward()
    assert random_model.operator.left_basis.grad.abs().sum() > 0
    grads = [p.grad for p in random_model.network.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_evaluation_noise_depends_on_sample_not_batch(random_model):
    images = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    full = random_model.normal({"image": images, "index": torch.arange(6)}, (1, 8, 8), stream=4)
    part = random_model.normal({"image": images[3:], "index": torch.arange(3, 6)}, (1, 8, 8), stream=4)
    assert torch.equal(full[3:], part)


def test_training_run_writes_outputs(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "trainer.limit_train_batches=4"])
    metrics = train(cfg)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for name in ("one_step", "8_step", "inversion", "interpolation"):
        assert (run / "samples" / f"{name}.png").is_file(), name
    payload = json.loads((run / "metrics.json").read_text())
    assert payload["metrics"] == pytest.approx(metrics)
    # The collapse is exact: 1-step and 8-step samples agree far beyond image precision.
    assert metrics["psnr_one_vs_multi"] > 80
    assert metrics["psnr_inversion"] > 60
    assert {"probe_accuracy_latent", "probe_accuracy_pixels", "loss"} <= set(metrics)
    # Offline, LPIPS and Inception FID are skipped, with the reason, never faked.
    assert "lpips_inversion" in payload["skipped_metrics"] and "lpips_inversion" not in metrics
    assert "fid_inception" in payload["skipped_metrics"]
    assert payload["perceptual_loss"] == "mse"

    # Checkpoints hold the EMA weights as the state dict and the raw weights beside them.
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert "current_model_state" in checkpoint
    ema = checkpoint["state_dict"]["operator.left_basis"]
    raw = checkpoint["current_model_state"]["operator.left_basis"]
    assert not torch.equal(ema, raw)
    loaded = load_module(run / "checkpoints" / "last.ckpt")
    assert torch.equal(loaded.operator.left_basis, ema)
    assert bool(loaded.network.blocks[1].initialized)  # ActNorm stays initialised after loading


def test_short_training_lowers_the_loss(compose_cfg):
    cfg = compose_cfg(
        ["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "trainer.limit_train_batches=25",
         "model.ema_decay=null", "trainer.max_epochs=2", "evaluate_after_fit=false"]
    )
    torch.manual_seed(0)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False)
    from lit_linearizer.tasks.train import build_trainer

    trainer = build_trainer(cfg)
    before = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]
    trainer.fit(model, datamodule=datamodule)
    after = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]
    assert after < 0.8 * before


def test_likelihood_term_is_the_gaussian_nll_per_dimension(compose_cfg):
    # At init every coupling is the identity and ActNorm has not been fitted (eval mode), so
    # g_x is the LU 1x1 convolution: orthogonal at init, log|det| = 0, ||g_x(x)|| = ||x||.
    cfg = compose_cfg(
        ["experiment=mnist_one_step", *TINY_ONE_STEP, "data.image_size=8", "model.loss_weights.likelihood=1"]
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False).double().eval()
    batch = {"image": torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1, "index": torch.arange(4)}
    terms = model.model_step(batch)
    # The term sees uniformly dequantised pixels (+-1/255), drawn per sample in evaluation.
    x = batch["image"] + (model.uniform(batch, stream=5, shape=(1, 8, 8)) - 0.5) * (2.0 / 255.0)
    expected = 0.5 * (x * x).mean() + 0.5 * math.log(2 * math.pi)
    # (the 1x1 convolutions are orthogonal to float32 precision: they are initialised in float32)
    assert float(terms["likelihood"]) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.slow
def test_compiled_training_checkpoint_loads_without_compile(compose_cfg, tmp_path):
    # model.compile=true compiles the step function, not the modules: parameter names stay plain,
    # so the checkpoint loads into an uncompiled module with every tensor intact.
    cfg = compose_cfg(["experiment=mnist_one_step", *FAST_OVERRIDES, *TINY_ONE_STEP, "trainer.precision=32-true",
                       "model.compile=true", "evaluate_after_fit=false"])
    train(cfg)
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    loaded = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert loaded._compiled_model_step is None
    loaded_state = loaded.state_dict()
    assert all(torch.equal(loaded_state[key].cpu(), value.cpu()) for key, value in checkpoint["state_dict"].items()
               if key in loaded_state)
    assert set(loaded_state) <= set(checkpoint["state_dict"])
    images = torch.rand(2, *loaded.image_shape) * 2 - 1
    assert torch.allclose(loaded.g_x.inverse(loaded.g_x(images)), images, atol=1e-4)
