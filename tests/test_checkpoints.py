"""Checkpoints written before the applications moved (issue 16) load; unknown class paths are one-line errors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from lit_linearizer.applications.one_step import OneStepLitModule
from lit_linearizer.applications.style_transfer import StyleTransferLitModule
from lit_linearizer.checkpoints import MOVED, load_module, module_class
from lit_linearizer.errors import CheckpointError
from lit_linearizer.operators import DepthwiseConvOperator, SqueezedOperator
from tests.conftest import TINY_ONE_STEP
from tests.test_style_transfer import TINY_STYLE


def _old_style_checkpoint(module, path, module_class_path: str, targets: dict[str, str] | None = None):
    """A checkpoint as the code before the move wrote it: the old class path, old ``_target_``s."""
    hyper_parameters = dict(module.hparams)
    for old, new in (targets or {}).items():  # e.g. the style operator factory's path
        factory = hyper_parameters["operator"]["factory"]
        assert factory["_target_"] == new
        factory["_target_"] = old
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": hyper_parameters,
        "lit_linearizer": {"module_class": module_class_path, "version": "0.1.0", "run_config": None,
                           "wandb_run_id": None, "noise_generator": None},  # fmt: skip
    }
    torch.save(checkpoint, path)
    return path


def test_old_one_step_checkpoint_loads(compose_cfg, tmp_path):
    torch.manual_seed(0)
    cfg = compose_cfg(["experiment=mnist_one_step", *TINY_ONE_STEP, "data.image_size=8"])
    module = instantiate(cfg.model, _recursive_=False)
    path = _old_style_checkpoint(module, tmp_path / "old.ckpt", "lit_linearizer.modules.one_step.OneStepLitModule")
    loaded = load_module(path)
    assert isinstance(loaded, OneStepLitModule)
    assert loaded.state_dict().keys() == module.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loaded.sample(noise), module.eval().sample(noise))


def test_old_style_transfer_checkpoint_with_an_old_operator_factory_loads(compose_cfg, tmp_path):
    torch.manual_seed(0)
    module = instantiate(compose_cfg([*TINY_STYLE, "data.image_size=8"]).model, _recursive_=False)
    path = _old_style_checkpoint(
        module, tmp_path / "old.ckpt", "lit_linearizer.modules.style_transfer.StyleTransferLitModule",
        {"lit_linearizer.modules.style_transfer.style_operator": "lit_linearizer.operators.style_operator"},
    )
    loaded = load_module(path)
    assert isinstance(loaded, StyleTransferLitModule) and loaded.styles == module.styles
    assert isinstance(loaded.bank[0], SqueezedOperator) and isinstance(loaded.bank[0].inner, DepthwiseConvOperator)
    assert torch.equal(loaded.bank[0].inner.kernel, module.bank[0].inner.kernel)


def test_every_moved_path_resolves():
    for old, new in MOVED.items():
        resolved = module_class({"lit_linearizer": {"module_class": old}})
        assert resolved is module_class({"lit_linearizer": {"module_class": new}}), old


def test_unknown_class_is_a_one_line_error_naming_the_migration():
    pattern = r"lit_linearizer\.modules\.gone\.GoneLitModule.*checkpoints\.MOVED"
    with pytest.raises(CheckpointError, match=pattern) as error:
        module_class({"lit_linearizer": {"module_class": "lit_linearizer.modules.gone.GoneLitModule"}})
    assert "\n" not in str(error.value)
