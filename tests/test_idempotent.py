"""The idempotent Linearizer (IGN): f(f(x)) = f(x) for any input, training, grids and the sample CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from datamodules.base import to_model_range
from datamodules.mnist import embedded_split
from lit_linearizer.applications.idempotent import sliced_wasserstein
from lit_linearizer.checkpoints import load_module
from lit_linearizer.errors import ConfigError, DataNotFoundError
from lit_linearizer.operators import ObliqueProjection
from lit_linearizer.tasks.sample import sample
from lit_linearizer.tasks.train import build_trainer, train
from tests.conftest import FAST_OVERRIDES, cli_env, compose_config

SIZE = 8
TINY_IGN = [
    "experiment=mnist_ign",
    f"data.image_size={SIZE}",
    "model.network.num_steps=2",
    "model.network.hidden_channels=8",
    "model.num_projections=16",
    "model.num_grid_samples=4",
    "model.metrics.domain_classifier=null",
]
PARAMETRISATIONS = {
    "diagonal": ["model/operator=diagonal_projection"],
    "orthogonal": ["model/operator=orthogonal_projection", "model.operator.rank=6"],
    "oblique": ["model/operator=oblique_projection", "model.operator.rank=6", "model.operator.init_shear=3.0"],
}
ALL_TERMS = [
    f"model.loss_weights.{k}=1.0" for k in ("expected_rank", "latent_match", "denoising", "idempotence", "tightness")
]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Real MNIST digits (the embedded validation split) at SIZE x SIZE, in [-1, 1]."""
    _, _, val_x, _ = embedded_split()
    return to_model_range(torch.from_numpy(val_x[::10]), SIZE)


def _perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator).to(p.dtype))


def build_model(compose_cfg, kind: str, dtype: torch.dtype, extra: list[str] = ()):
    """A tiny IGN whose g is far from the identity (couplings start at zero) and whose P is partial."""
    cfg = compose_cfg([*TINY_IGN, *PARAMETRISATIONS[kind], *extra])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False).to(dtype)
    model.train()
    model.network(torch.rand(16, 1, SIZE, SIZE, dtype=dtype) * 2 - 1)  # initialises ActNorm
    _perturb(model.network, 0.1)
    if kind == "diagonal":
        with torch.no_grad():
            model.operator.logits.copy_(3.0 * torch.randn(model.operator.in_features, dtype=dtype))
    return model.eval()


def inputs_of_every_kind(digits: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (8, 1, SIZE, SIZE)
    return {
        "gaussian": torch.randn(shape, generator=generator).to(dtype),
        "gaussian_far": 5.0 * torch.randn(shape, generator=generator).to(dtype),
        "uniform": (torch.rand(shape, generator=generator) * 2 - 1).to(dtype),
        "digits": digits[:8].to(dtype),
        "noisy_digits": (digits[8:16] + 0.5 * torch.randn(shape, generator=generator)).to(dtype),
    }


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-sample ``|a - b| / |b|``."""
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().detach())


def assert_idempotent_everywhere(model, digits, dtype) -> None:
    tol = TOLERANCE[dtype]
    P = model.operator.matrix().detach()
    assert (P @ P - P).abs().max() <= 10 * tol * max(1.0, float(P.abs().max()))
    with torch.no_grad():
        for name, x in inputs_of_every_kind(digits, dtype).items():
            fx = model.project(x)
            assert max_relative(model.project(fx), fx) <= tol, name
            assert max_relative(fx, x) > 1e-2, f"{name}: f is (close to) the identity, the check would be vacuous"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", sorted(PARAMETRISATIONS))
def test_f_is_idempotent_for_any_input_at_init_and_after_training(compose_cfg, digits, kind, dtype):
    model = build_model(compose_cfg, kind, dtype, ALL_TERMS)
    assert 0 < model.rank < SIZE * SIZE
    assert_idempotent_everywhere(model, digits, dtype)

    before = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for step in range(4):
        batch = {"image": digits[16 * step : 16 * step + 16].to(dtype), "index": torch.arange(16)}
        loss = model.model_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    moved = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("operator.") for k in moved) and any(k.startswith("network.") for k in moved)
    assert_idempotent_everywhere(model, digits, dtype)


def test_ign_terms_vanish_by_construction(compose_cfg, digits):
    """IGN's idempotence and tightness terms: zero value and zero gradient when f is a projector."""
    model = build_model(compose_cfg, "oblique", torch.float64, ALL_TERMS).train()
    terms = model.model_step({"image": digits[:16].double(), "index": torch.arange(16)})
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert abs(values["idempotence"]) <= 1e-24 and abs(values["tightness"]) <= 1e-24
    assert values["reconstruction"] > 1e-3
    params = [p for p in model.parameters() if p.requires_grad]
    ign = terms["idempotence"] + terms["tightness"]
    ign_grads = torch.autograd.grad(ign, params, allow_unused=True, retain_graph=True)
    rec_grads = torch.autograd.grad(terms["reconstruction"], params, allow_unused=True)
    ign = max(float(g.abs().max()) for g in ign_grads if g is not None)
    rec = max(float(g.abs().max()) for g in rec_grads if g is not None)
    assert ign <= 1e-10 * rec and rec > 1e-4


def test_frozen_copy_passes_gradients_to_its_input_only(compose_cfg, digits):
    model = build_model(compose_cfg, "orthogonal", torch.float64)
    x = digits[:4].double().requires_grad_(True)
    model._frozen_project(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    assert all(p.grad is None for p in model.parameters())
    model.project(x).square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())


def test_oblique_projection_algebra():
    torch.manual_seed(3)
    op = ObliqueProjection(20, 5, init_shear=4.0).double()
    P = op.matrix().detach()
    assert (P @ P - P).abs().max() <= 1e-13
    assert (P - P.T).abs().max() > 1e-2  # oblique: not symmetric, not its own pseudo-inverse
    assert abs(float(torch.trace(P)) - 5) <= 1e-12 and int(torch.linalg.matrix_rank(P)) == 5
    z = torch.randn(3, 20, dtype=torch.float64)
    assert torch.allclose(op.transpose(z), z @ P, atol=1e-13)
    pinv = op.pseudo_inverse()
    assert pinv.pinv_is_cheap and torch.allclose(pinv.matrix(), torch.linalg.pinv(P), atol=1e-12)
    assert not torch.allclose(pinv.matrix(), P, atol=1e-3)
    orthogonal = ObliqueProjection(20, 5).double()  # no shear: the orthogonal projection U U^T
    Q = orthogonal.matrix().detach()
    assert (Q - Q.T).abs().max() <= 1e-13
    with pytest.raises(ValueError, match="rank"):
        ObliqueProjection(4, 5)


def test_sliced_wasserstein_closed_form():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(32, 6, generator=generator, dtype=torch.float64)
    directions = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0)
    assert float(sliced_wasserstein(a, a[torch.randperm(32, generator=generator)], directions)) <= 1e-24
    shift = torch.randn(6, generator=generator, dtype=torch.float64)
    expected = float((shift @ directions).square().mean())  # a translation moves every sorted point alike
    assert float(sliced_wasserstein(a + shift, a, directions)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.network_mode=conditional", "network_mode"),
        ("+model.loss_weights.tightnes=1", "unknown model.loss_weights"),
        ("model.distance=l2", "distance"),
        ("model.operator._target_=lit_linearizer.operators.DiagonalOperator", "projection"),
    ],
)
def test_bad_configs_are_one_line_errors(compose_cfg, override, message):
    diagonal = ["model/operator=diagonal_projection", "~model.operator.init_keep_probability"]
    extra = diagonal if "DiagonalOperator" in override else []
    cfg = compose_cfg([*TINY_IGN, *extra, override])
    with pytest.raises(Exception, match=message) as raised:
        instantiate(cfg.model, _recursive_=False)
    assert isinstance(raised.value, ConfigError) or isinstance(raised.value.__cause__, ConfigError)


def test_short_training_lowers_the_reconstruction_loss(compose_cfg, digits):
    cfg = compose_cfg(
        [*TINY_IGN, *FAST_OVERRIDES, *PARAMETRISATIONS["oblique"], "model.operator.init_shear=0.0",
         "trainer.limit_train_batches=30", "model.ema_decay=null", "evaluate_after_fit=false",
         "trainer.check_val_every_n_epoch=10", "model.optimizer.lr=3e-3"]
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False)
    x = digits[:32]

    def reconstruction() -> float:
        model.eval()
        with torch.no_grad():
            return float((model.project(x) - x).square().mean())

    before = reconstruction()
    model.train()
    build_trainer(cfg).fit(model, datamodule=instantiate(cfg.data))
    after = reconstruction()
    assert after < 0.6 * before, (before, after)
    assert_idempotent_everywhere(model, digits, torch.float32)


# ---------------------------------------------------------------------------------------------
# a trained checkpoint: outputs, metrics, `linearizer sample`
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_dirs):
    tmp = tmp_path_factory.mktemp("ign")
    overrides = [*TINY_IGN, *FAST_OVERRIDES, "model/operator=oblique_projection", "model.operator.rank=6",
                 f"paths.data_dir={session_dirs['data']}", f"paths.cache_dir={session_dirs['cache']}"]
    cfg = compose_config(tmp, overrides)
    metrics = train(cfg)
    return tmp / "run", metrics


def test_training_run_writes_grids_and_metrics(trained):
    run, metrics = trained
    for name in ("noise", "data", "corrupted", "samples"):
        assert (run / "samples" / f"{name}.png").is_file(), name
    payload = json.loads((run / "metrics.json").read_text())
    assert payload["metrics"]["rank"] == 6
    assert payload["metrics"]["idempotence_error"] <= 1e-5 and payload["metrics"]["projection_error"] <= 1e-5
    assert {"psnr_reconstruction", "psnr_denoised", "psnr_noisy", "loss"} <= set(metrics)
    # Offline: skipped, not faked.
    assert "fid_inception" in payload["skipped_metrics"] and "fid_inception" not in metrics
    # The data grid holds triplets of rows (inputs, f, f(f)); f and f(f) rows are the same image.
    grid = torch.from_numpy(__import__("numpy").array(Image.open(run / "samples" / "data.png"))).float()
    cell = SIZE + 2
    rows = [grid[2 + i * cell : 2 + i * cell + SIZE] for i in range(3)]
    assert (rows[1] - rows[2]).abs().max() <= 1 and (rows[0] - rows[1]).abs().max() > 10


def _sample(tmp_path: Path, ckpt: Path, *options: str) -> Path:
    cfg = compose_config(tmp_path, [f"ckpt_path={ckpt}", "device=cpu", *options], config_name="sample")
    sample(cfg)
    return tmp_path / "run"


def test_sample_sources_write_grids(trained, tmp_path):
    run, _ = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    out = _sample(tmp_path / "noise", ckpt, "source=noise", "n=5")
    noise_grid = Image.open(out / "noise.png")
    assert noise_grid.size == (5 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2)  # one triplet of rows
    assert (out / "samples.png").is_file()
    out = _sample(tmp_path / "data", ckpt, "source=data", "n=20")  # data config from the checkpoint
    assert Image.open(out / "data.png").size == (16 * (SIZE + 2) + 2, 6 * (SIZE + 2) + 2)  # 2 triplets of 16
    assert (out / "corrupted.png").is_file()
    # Files of any size and mode are resized to the model's shape.
    Image.fromarray((torch.rand(40, 30, 3) * 255).byte().numpy(), "RGB").save(tmp_path / "photo.png")
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy(), "L").save(tmp_path / "digit.jpg")
    out = _sample(tmp_path / "file", ckpt, "source=file", f"input=[{tmp_path / 'photo.png'},{tmp_path / 'digit.jpg'}]")
    assert Image.open(out / "file.png").size == (2 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2)


def test_sample_bad_inputs_are_one_line_errors(trained, tmp_path):
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    with pytest.raises(DataNotFoundError, match="does not exist"):
        _sample(tmp_path / "a", ckpt, "source=file", f"input={tmp_path / 'missing.png'}")
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(DataNotFoundError, match="not a readable image"):
        _sample(tmp_path / "b", ckpt, "source=file", f"input={tmp_path / 'not_an_image.png'}")
    with pytest.raises(ConfigError, match="needs input"):
        _sample(tmp_path / "c", ckpt, "source=file")
    with pytest.raises(ConfigError, match="source="):
        _sample(tmp_path / "d", ckpt, "source=dream")


def test_checkpoint_round_trip_keeps_the_projector(trained, digits):
    module = load_module(trained[0] / "checkpoints" / "last.ckpt")
    assert isinstance(module.operator, ObliqueProjection) and module.rank == 6
    x = torch.randn(4, 1, SIZE, SIZE)
    fx = module.project(x)
    assert max_relative(module.project(fx), fx) <= 1e-5


def _cli(ckpt: Path, tmp_path: Path, session_dirs, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lit_linearizer", "sample", f"ckpt_path={ckpt}", "device=cpu", *options]
    return subprocess.run(command, env=cli_env(tmp_path, session_dirs), capture_output=True, text=True, timeout=300)


def test_cli_sample_from_data(trained, tmp_path, session_dirs):
    """`linearizer sample source=data` as a user runs it: the data config comes from the checkpoint."""
    out = tmp_path / "cli"
    ckpt = trained[0] / "checkpoints" / "last.ckpt"
    result = _cli(ckpt, tmp_path, session_dirs, "source=data", "n=8", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "data.png").is_file() and (out / "corrupted.png").is_file()
    assert f"wrote {out / 'data.png'}" in result.stdout


@pytest.mark.slow
def test_cli_sample_bad_file_is_one_line(trained, tmp_path, session_dirs):
    result = _cli(trained[0] / "checkpoints" / "last.ckpt", tmp_path, session_dirs, "source=file",
                  f"input={tmp_path / 'nope.png'}", f"hydra.run.dir={tmp_path / 'cli'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: input=") and "Traceback" not in result.stderr


def test_celeba_preset_runs_on_a_folder_of_images(compose_cfg, tmp_path):
    """The GPU preset, shrunk: a fast_dev_run on a few RGB files (layout=folder) on CPU."""
    folder = tmp_path / "faces"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = (torch.rand(24, 20, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels, "RGB").save(folder / f"{i:03d}.png")
    cfg = compose_cfg(
        ["experiment=celeba_ign", "trainer=cpu", "logger=none", "trainer.fast_dev_run=1", "evaluate_after_fit=false",
         "data.layout=folder", f"data.data_dir={folder}", "data.crop_size=null", "data.image_size=8",
         "data.batch_size=2",
         "data.num_workers=0", "data.pin_memory=false", "data.val_fraction=0.34", "model.network.num_steps=1",
         "model.network.hidden_channels=8", "model.operator.rank=4", "model.num_projections=8",
         "model.num_grid_samples=2"]
    )
    model = instantiate(cfg.model, _recursive_=False)
    assert isinstance(model.operator, ObliqueProjection) and model.image_shape == (3, 8, 8)
    build_trainer(cfg).fit(model, datamodule=instantiate(cfg.data))
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    fx = model.project(x)
    assert max_relative(model.project(fx), fx) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_moment_fitted_collapse_direction_keeps_f_idempotent_and_matches_moments(compose_cfg, digits, dtype):
    """Refitting V on the latents' moments: f stays exactly idempotent for every input; the noise coordinates get
    the data coordinates' mean and covariance (up to what `stay` trades for keeping the data's coordinates)."""
    from lit_linearizer.applications.idempotent.transport import coordinate_gaps

    model = build_model(compose_cfg, "oblique", dtype)
    images = digits.to(dtype)
    learned_v = model.operator.factors()[1].detach().double()
    for stay, bound in ((1e-4, 1e-3), (10.0, None)):
        data, noise = model.model.fit_projection(images, noise_seed=5, stay=stay)
        assert model.model.fitted_projection is not None and model.model.projection is model.model.fitted_projection
        assert_idempotent_everywhere(model, digits, dtype)
        fitted_v = model.model.projection.factors()[1].detach().double()
        fitted, learned = coordinate_gaps(fitted_v, data, noise), coordinate_gaps(learned_v, data, noise)
        assert fitted["cov"] < learned["cov"] and fitted["mean"] <= learned["mean"] + 1e-6
        if bound is not None:
            assert fitted["cov"] < bound and fitted["mean"] < bound
    # Training still goes through the trained P; a checkpoint keeps the fitted one.
    assert model.model.linearizer(fitted=False).A is model.operator
    state = model.model.fitted_state()
    x = inputs_of_every_kind(digits, dtype)["gaussian"]
    before = model.project(x)
    model.model.fitted_projection = None
    model.model.load_fitted_state(state)
    torch.testing.assert_close(model.project(x), before, rtol=0, atol=0)


def test_projections_without_a_free_collapse_direction_are_not_refitted(compose_cfg, digits):
    for kind in ("diagonal", "orthogonal"):
        model = build_model(compose_cfg, kind, torch.float64)
        assert model.model.fit_projection(digits.double(), noise_seed=5) is None
        assert model.model.projection is model.operator
