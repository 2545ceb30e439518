"""Every experiment preset composes and runs one fast_dev_run step on CPU, shrunk."""

from __future__ import annotations

import math

import pytest
from hydra.utils import instantiate

from lit_linearizer.config import CONFIG_DIR
from lit_linearizer.tasks.train import train
from tests.conftest import FAST_OVERRIDES, TINY_ONE_STEP
from tests.test_celeba_data import write_fixture
from tests.test_idempotent import TINY_IGN
from tests.test_style_transfer import TINY_STYLE

ON_CPU = ["trainer=cpu", "trainer.precision=32-true", "trainer.fast_dev_run=true", "logger=none",
          "evaluate_after_fit=false", "data.num_workers=0"]
CELEBA = ["data.image_size=16", "data.batch_size=4", "data.pin_memory=false"]
SHRINK = {
    "mnist_one_step": [*TINY_ONE_STEP, "data.batch_size=8"],
    "mnist_one_step_paper": [*TINY_ONE_STEP, "data.batch_size=8", "data.pin_memory=false"],
    "mnist_one_step_refsize": [*TINY_ONE_STEP, "data.batch_size=8", "data.pin_memory=false"],
    "celeba_one_step": [*TINY_ONE_STEP, *CELEBA],
    "style_transfer": [t for t in TINY_STYLE if not t.startswith("experiment=")] + ["data.batch_size=4"],
    "mnist_ign": [t for t in TINY_IGN if not t.startswith("experiment=")] + ["data.batch_size=8"],
    "celeba_ign": [t for t in TINY_IGN if not t.startswith(("experiment=", "data.image_size"))]
    + [*CELEBA, "model.operator.rank=16"],
}


def test_every_preset_is_covered():
    presets = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert presets == set(SHRINK)


def test_reference_size_preset_has_the_reference_parameter_count(compose_cfg):
    # The reference's MNIST model (github assafshocher/Linearizer, one_step): 870,400 parameters in g and
    # 9,062,400 in its operator, counted from its code; ours within 1 % of the total (docs/benchmarks.md).
    model = instantiate(compose_cfg(["experiment=mnist_one_step_refsize"]).model, _recursive_=False)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(870_400 + 9_062_400, rel=0.01)


@pytest.mark.parametrize("preset", sorted(SHRINK))
def test_preset_runs_one_step(preset, compose_cfg, tmp_path):
    extra = []
    if preset.startswith("celeba"):
        extra.append(f"data.data_dir={write_fixture(tmp_path / 'celeba-fixture', n_train=8, n_val=4)}")
    cfg = compose_cfg([f"experiment={preset}", *ON_CPU, *SHRINK[preset], *extra])
    train(cfg)


@pytest.mark.parametrize("preset", ["mnist_one_step", "mnist_ign", "style_transfer"])
def test_bf16_mixed_training_keeps_evaluation_exact(preset, compose_cfg):
    # bf16 autocast covers the loss; evaluation (pseudo-inverse, collapse, metrics) runs in float32.
    # Before that split, the first validation step under bf16-mixed failed on a dtype mismatch.
    cfg = compose_cfg([f"experiment={preset}", *FAST_OVERRIDES, *SHRINK[preset], "trainer.precision=bf16-mixed"])
    metrics = train(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    if preset == "mnist_one_step":
        # float32 exactness of the collapse and the inversion, far beyond what bf16 could give.
        assert metrics["psnr_one_vs_multi"] > 80 and metrics["psnr_inversion"] > 60
