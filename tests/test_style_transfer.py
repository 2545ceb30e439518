"""Style transfer: the operator algebra through the whole model (float64), training, outputs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from lit_linearizer.applications.style_transfer import StyleTransferLitModule
from lit_linearizer.checkpoints import load_module, read_checkpoint
from lit_linearizer.errors import ConfigError
from lit_linearizer.operators import DepthwiseConvOperator, LinearCombination, SqueezedOperator, style_operator
from lit_linearizer.tasks.train import train
from tests.conftest import FAST_OVERRIDES, cli_env, compose_config

STYLES = ["sepia", "sketch", "solarise"]
TINY_STYLE = [
    "experiment=style_transfer",
    f"data.styles=[{','.join(STYLES)}]",
    "data.render_size=24",
    "data.image_size=16",
    "data.crops_per_image=4",
    "model.network.num_steps=2",
    "model.network.hidden_channels=8",
    "model.operator.factory.kernel_size=3",
    "model.num_grid_images=2",
    "model.interpolation_steps=3",
]


def _perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _random_model(compose_cfg, overrides=()) -> StyleTransferLitModule:
    """A float64 model whose g and A_s are all moved off the identity."""
    cfg = compose_cfg([*TINY_STYLE, "data.image_size=8", *overrides])
    torch.manual_seed(0)
    try:
        model = instantiate(cfg.model, _recursive_=False).double()
    except InstantiationException as error:  # Hydra wraps the module's own ConfigError (twice when nested)
        while isinstance(error, InstantiationException):
            error = error.__cause__
        raise error from None
    model.train()
    model.network(torch.randn(8, 3, 8, 8, dtype=torch.float64))  # initialises ActNorm
    _perturb(model, 0.1)
    return model.eval()


@pytest.fixture
def random_model(compose_cfg):
    return _random_model(compose_cfg)


def _images(n: int = 4, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_interpolation_endpoints_reproduce_the_two_styles_exactly(random_model):
    x = _images()
    frames = random_model.interpolate_styles(x, "sepia", "sketch", steps=5)
    assert frames.shape == (5, *x.shape)
    assert torch.equal(frames[0], random_model.stylize(x, "sepia"))
    assert torch.equal(frames[-1], random_model.stylize(x, "sketch"))
    # ... which are f_s = g^-1(A_s g(x)) with the bank's own operators, and differ from each other.
    g, bank = random_model.network, random_model.bank
    assert torch.equal(frames[0], g.inverse(bank["sepia"](g(x).flatten(1)).view_as(x)))
    assert _relative(frames[0], frames[-1]) > 1e-2
    # The frames in between are not the pixel-space blend of the two ends (f is nonlinear in pixels).
    assert _relative(frames[2], (frames[0] + frames[-1]) / 2) > 1e-4


def test_interpolated_operator_is_the_linear_combination(random_model):
    a, b = random_model.style_operator("sepia"), random_model.style_operator("solarise")
    for alpha in (0.0, 0.3, 1.0, 1.7):
        mixed = random_model.interpolated_operator("sepia", "solarise", alpha)
        assert isinstance(mixed, LinearCombination)
        expected = alpha * a.matrix() + (1 - alpha) * b.matrix()
        assert torch.allclose(mixed.matrix(), expected, rtol=0, atol=1e-13)
    # Through the networks: f_{A(alpha)}(x) = g^-1(alpha A_1 g(x) + (1 - alpha) A_2 g(x)).
    x, g = _images(), random_model.network
    z = g(x).flatten(1)
    manual = g.inverse((0.3 * a(z) + 0.7 * b(z)).view_as(x))
    frames = random_model.interpolate_styles(x, "sepia", "solarise", steps=11)  # alpha = 1, 0.9, ..., 0
    assert _relative(frames[7], manual) < 1e-12
    mixed = random_model.interpolated_operator("sepia", "solarise", 0.3)
    assert _relative(random_model.stylize(x, mixed), manual) < 1e-12


def test_composition_is_the_product_of_operators(random_model):
    x = _images()
    composed = random_model.compose_styles(x, ["sepia", "sketch"])
    sequential = random_model.stylize(random_model.stylize(x, "sepia"), "sketch")
    assert _relative(composed, sequential) < 1e-10
    assert _relative(composed, random_model.stylize(x, "sketch")) > 1e-3  # the first style mattered
    three = random_model.compose_styles(x, STYLES)
    chained = x
    for s in STYLES:
        chained = random_model.stylize(chained, s)
    assert _relative(three, chained) < 1e-10
    # Mixtures with the identity: weight 1 on I is g^-1 g = id; a half-strength style is in between.
    assert _relative(random_model.stylize(x, random_model.mixed_operator({"sepia": 0.0, "identity": 1.0})), x) < 1e-10


@pytest.mark.parametrize(
    "family, squeeze", [("depthwise", False), ("conv", True), ("conv", False), ("dense", False), ("diagonal", False)]
)
def test_other_operator_families(compose_cfg, family, squeeze):
    factory = [f"model.operator.factory.family={family}", f"model.operator.factory.squeeze={squeeze}"]
    model = _random_model(compose_cfg, factory)
    x = _images(3)
    composed = model.compose_styles(x, ["sketch", "solarise"])
    assert _relative(composed, model.stylize(model.stylize(x, "sketch"), "solarise")) < 1e-10
    frames = model.interpolate_styles(x, "sketch", "solarise", steps=3)
    assert torch.equal(frames[0], model.stylize(x, "sketch")) and torch.equal(frames[-1], model.stylize(x, "solarise"))
    batch = {"image": x, "target": torch.rand(3, 3, 3, 8, 8, dtype=torch.float64), "index": torch.arange(3)}
    model.train()
    terms = model.model_step(batch)
    terms["loss"].backward()
    assert all(op.grad is not None and op.grad.abs().sum() > 0 for op in model.bank.parameters())


@pytest.mark.parametrize("family", ["depthwise", "conv"])
def test_squeezed_operator_is_a_conjugated_linear_map(family):
    torch.manual_seed(0)
    op = style_operator(family, (3, 6, 8), kernel_size=3, squeeze=True).double()
    _perturb(op, 0.3)
    assert isinstance(op, SqueezedOperator) and op.inner.latent_shape == (12, 3, 4)
    z, y = torch.randn(2, 144, dtype=torch.float64), torch.randn(2, 144, dtype=torch.float64)
    assert torch.allclose((op(z) * y).sum(1), (z * op.transpose(y)).sum(1), atol=1e-12)  # exact adjoint
    # S^T B S with S the squeeze permutation: the same matrix, entries moved.
    perm = torch.nn.functional.pixel_unshuffle(torch.arange(144.0).view(1, 3, 6, 8), 2).flatten().long()
    matrix = torch.zeros(144, 144, dtype=torch.float64)
    matrix[perm[:, None], perm[None, :]] = op.inner.matrix()
    assert torch.allclose(op.matrix(), matrix, atol=1e-14)


def test_convolutional_operators_style_images_of_any_size(random_model):
    big = _images(2, size=12)
    out = random_model.stylize(big, "sepia")
    assert out.shape == big.shape
    assert _relative(random_model.compose_styles(big, ["sepia", "sketch"]),
                     random_model.stylize(random_model.stylize(big, "sepia"), "sketch")) < 1e-10  # fmt: skip
    assert random_model.bank["sepia"].latent_shape == (3, 8, 8)  # the trained operator is untouched


def test_configuration_errors(compose_cfg, random_model):
    with pytest.raises(ConfigError, match="network_mode=shared"):
        _random_model(compose_cfg, ["model.network_mode=conditional"])
    with pytest.raises(ConfigError, match="dense style operator"):
        _random_model(compose_cfg, ["model.operator.factory.family=dense", "data.image_size=64"])
    with pytest.raises(ConfigError, match="unknown style 'van_gogh'"):
        random_model.stylize(_images(), "van_gogh")
    dense = _random_model(compose_cfg, ["model.operator.factory.family=dense"])
    with pytest.raises(ConfigError, match="tied to latents"):
        dense.stylize(_images(1, size=12), "sepia")


def test_training_lowers_the_validation_loss_and_writes_outputs(compose_cfg, tmp_path):
    cfg = compose_cfg(
        [*TINY_STYLE, *FAST_OVERRIDES, "trainer.max_epochs=3", "trainer.limit_train_batches=6", "data.batch_size=8",
         "model.ema_decay=0.5", "model.scheduler.warmup_steps=2"]  # fmt: skip
    )
    torch.manual_seed(0)
    untrained = instantiate(cfg.model, _recursive_=False)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(tmp_path / "before"))
    before = trainer.validate(untrained, datamodule=instantiate(cfg.data), verbose=False)[0]
    metrics = train(cfg)
    run = tmp_path / "run"
    assert metrics["loss"] < 0.8 * before["val/loss"]
    for s in STYLES:
        # Before training f_s is the identity: its PSNR is the content-vs-target baseline.
        assert before[f"val/psnr/{s}"] == pytest.approx(metrics[f"psnr_identity/{s}"], abs=0.05)
        assert 0 < metrics[f"ssim/{s}"] <= 1
    assert metrics["psnr_mean"] > before["val/psnr_mean"] + 0.5
    assert metrics["psnr_mean"] == pytest.approx(np.mean([metrics[f"psnr/{s}"] for s in STYLES]))
    payload = json.loads((run / "metrics.json").read_text())
    assert {f"lpips/{s}" for s in STYLES} <= set(payload["skipped_metrics"])  # offline: skipped, never faked
    assert not any(k.startswith("lpips") for k in metrics)
    for name in ["styles", "interpolation", "composition", *(f"style_{s}" for s in STYLES)]:
        assert (run / "samples" / f"{name}.png").is_file(), name
    # The interpolation grid: 3 pairs x 2 images rows of [content + 3 frames] 16-pixel tiles.
    grid = Image.open(run / "samples" / "interpolation.png")
    assert grid.size == (2 + 4 * 18, 2 + 6 * 18)
    assert metrics["algebra/composition_max_abs_error"] < 1e-3
    assert metrics["algebra/interpolation_endpoint_max_abs_error"] == 0.0
    loaded = load_module(run / "checkpoints" / "last.ckpt")
    assert isinstance(loaded, StyleTransferLitModule) and loaded.styles == STYLES
    sepia = loaded.bank["sepia"]
    assert isinstance(sepia, SqueezedOperator) and isinstance(sepia.inner, DepthwiseConvOperator)
    stored = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]["operator.operators.0.inner.kernel"]
    assert torch.equal(sepia.inner.kernel, stored)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, session_dirs):
    """A tiny trained checkpoint (in-process) and a photo, shared by the CLI tests."""
    tmp = tmp_path_factory.mktemp("style_cli")
    cfg = compose_config(
        tmp, [*TINY_STYLE, *FAST_OVERRIDES, "trainer.limit_train_batches=2", "data.batch_size=4",
              f"data.data_dir={session_dirs['data']}", "evaluate_after_fit=false"]  # fmt: skip
    )
    try:
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    photo = tmp / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(photo)
    return tmp, tmp / "run" / "checkpoints" / "last.ckpt", photo


def _style_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lit_linearizer", "style", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_cli_style_writes_strip_and_composition(checkpoint, session_dirs):
    tmp, ckpt, photo = checkpoint
    out = tmp / "style_out"
    args = [f"ckpt_path={ckpt}", f"input={photo}", "styles=[sketch,sepia]", "steps=5", "device=cpu",
            f"hydra.run.dir={out}"]  # fmt: skip
    result = _style_cli(args, cli_env(tmp, session_dirs))
    assert result.returncode == 0, result.stderr[-3000:]
    strip = Image.open(out / "interpolation_sketch_sepia.png")
    assert strip.size == (2 + 6 * 18, 2 + 18)  # photo + 5 frames of 16 x 16
    assert Image.open(out / "composition_sketch_sepia.png").size == (2 + 5 * 18, 2 + 18)
    assert Image.open(out / "styles.png").size == (2 + 4 * 18, 2 + 18)  # photo + 3 styles
    error = float(result.stdout.split("f_sepia(f_sketch(x))| = ")[1].split()[0])
    assert error < 1e-3
    # The strip's ends are the two styles: the stylised photo in styles.png (sketch is the 2nd style).
    styles = np.asarray(Image.open(out / "styles.png"))
    strip = np.asarray(strip)
    tile = lambda grid, i: grid[2:18, 2 + 18 * i : 18 + 18 * i]  # noqa: E731
    assert np.array_equal(tile(strip, 1), tile(styles, 2)) and np.array_equal(tile(strip, 5), tile(styles, 1))


def test_cli_bad_input_is_one_line_with_status_2(checkpoint, capsys):
    from lit_linearizer.cli import main

    tmp, ckpt, photo = checkpoint
    for args, message in [
        ([f"input={photo}", "styles=[sketch,van_gogh]"],
         "error: unknown style 'van_gogh'; the checkpoint's styles are"),  # fmt: skip
        ([f"input={tmp / 'missing.jpg'}"], f"error: input image {tmp / 'missing.jpg'} does not exist"),
        ([f"input={photo}", "styles=[sepia]"], "error: styles=['sepia']: give exactly two styles"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["style", f"ckpt_path={ckpt}", "device=cpu", f"hydra.run.dir={tmp / 'bad'}", *args])
        assert exit_info.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(message), lines


@pytest.mark.slow
def test_cli_train_then_style(tmp_path, session_dirs):
    """The whole user path through the CLI: train the preset (tiny), then style a photo."""
    env = cli_env(tmp_path, session_dirs)
    args = [*TINY_STYLE, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0", "logger=csv", "data.batch_size=4",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    command = [sys.executable, "-m", "lit_linearizer", "train", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "psnr/sepia" in result.stdout and "lpips/sepia" in result.stdout and "skipped:" in result.stdout
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "styled"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    result = _style_cli([f"ckpt_path={ckpt}", f"input={photo}", f"hydra.run.dir={out}"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "interpolation_sepia_sketch.png").is_file() and (out / "composition_sepia_sketch.png").is_file()


def test_style_command_options():
    """`linearizer style`: the first two styles by default, exactly two known ones otherwise, 2+ frames."""
    from lit_linearizer.applications.style_transfer.cli import check_style_options

    assert check_style_options(None, STYLES, 9) == (STYLES[:2], 9)
    assert check_style_options(["solarise", "sepia"], STYLES, "3") == (["solarise", "sepia"], 3)
    for requested, known, steps, message in [
        (None, ["sepia"], 9, "only the style"),
        ("sepia", STYLES, 9, "exactly two styles"),
        (["sepia", "van_gogh"], STYLES, 9, "unknown style 'van_gogh'"),
        (None, STYLES, 1, "at least 2 frames"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_style_options(requested, known, steps)
