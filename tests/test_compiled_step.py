"""``model.compile=true``: the training step compiles as one graph (``fullgraph=True``) on CPU, with the
same losses and noise as the eager step. Graph breaks are found while TorchDynamo captures the graph, before
any backend runs: the ``eager`` backend captures as inductor would, without generating code, so a break
fails here in seconds (scripts/bench.py compiles with inductor)."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate

from lit_linearizer.modules.compiled_step import CompiledStep
from tests.conftest import TINY_ONE_STEP


def _tiny_one_step(compose_cfg):
    cfg = compose_cfg(["experiment=mnist_one_step", *TINY_ONE_STEP])
    torch.manual_seed(0)
    return instantiate(cfg.model, _recursive_=False)


def _batch(model, size: int = 4) -> dict:
    images = torch.rand(size, *model.image_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return {"image": images, "index": torch.arange(size)}


def _refuse(message: str) -> None:
    raise AssertionError(message)


def test_training_step_compiles_as_one_graph_with_eager_losses(compose_cfg):
    torch._dynamo.reset()
    model = _tiny_one_step(compose_cfg)
    eager = copy.deepcopy(model)
    for module in (model, eager):
        module.train()
        module.noise.start(torch.device("cpu"), 0)
    batch = _batch(model)
    # A graph break raises (fullgraph=True) and the fallback would call the notice: both fail the test.
    step = CompiledStep(model, backend="eager", notice=_refuse)
    for _ in range(3):  # eager (initialises ActNorm, records the noise), then compiled twice
        compiled_losses = step(batch)
        eager_losses = eager.model_step(batch)
        for name, value in eager_losses.items():
            assert torch.allclose(compiled_losses[name], value, rtol=1e-5, atol=1e-6), name
    assert step.compiled is not None and step.fullgraph and step.verified
    compiled_losses["loss"].backward()
    assert all(p.grad is not None for p in model.operator.parameters())
    # The generator advanced exactly as in the eager run: the same noise from here on.
    assert torch.equal(model.noise.generator.get_state(), eager.noise.generator.get_state())


@pytest.mark.slow  # compiles twice (~45 s on a loaded 2-core machine)
def test_graph_break_falls_back_with_a_notice(compose_cfg):
    torch._dynamo.reset()
    model = _tiny_one_step(compose_cfg)
    model.train()
    model.noise.start(torch.device("cpu"), 0)
    original = model.model_step

    def breaking_step(batch):
        losses = original(batch)
        if bool(losses["loss"] > -1):  # data-dependent Python control flow: a graph break
            return losses
        return losses

    model.model_step = breaking_step
    notices: list[str] = []
    step = CompiledStep(model, backend="eager", notice=notices.append)
    step(_batch(model))
    losses = step(_batch(model))
    assert torch.isfinite(losses["loss"])
    assert not step.fullgraph and len(notices) == 1 and "does not compile as one graph" in notices[0]


def test_fullgraph_compile_raises_on_a_graph_break():
    # The guard the first test relies on: torch.compile(fullgraph=True) refuses a break rather than splitting.
    def step(x):
        if bool(x.sum() > 0):
            return x * 2
        return x

    with pytest.raises((torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)):
        torch.compile(step, fullgraph=True, backend="eager")(torch.ones(3))
