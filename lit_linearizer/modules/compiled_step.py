"""``model.compile=true``: the application's ``model_step`` under ``torch.compile``, as one graph.

Two things in a training step cannot be traced into a graph, and both are moved out of it:

- ActNorm's data-dependent initialisation (a Python ``if`` on a tensor): the first step runs eagerly and
  initialises every ActNorm the step uses; compiled code leaves the check out (flows/actnorm.py).
- Drawing the training noise from the module's ``torch.Generator``: the eager first step records the
  draws (``NoiseStreams.recording``), and every later step makes the same draws before the compiled
  function runs (``NoiseStreams.draw_ahead``), so the noise is the same as without compile.

The step is compiled with ``fullgraph=True``. An application whose step still breaks the graph is
compiled again without it (with a notice that names the break), so ``model.compile=true`` never fails
where it worked before. The module's parameters and checkpoints do not change: the function is compiled,
not the modules.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["CompiledStep"]

_log = logging.getLogger(__name__)


class CompiledStep:
    """``module.model_step`` compiled (see the module docstring); call it with a training batch.

    Args:
        module: a LinearizerLitModule (anything with ``model_step`` and ``noise``, a NoiseStreams).
        mode: torch.compile's ``mode`` (``None``, ``"reduce-overhead"`` for CUDA graphs, ``"max-autotune"``).
        fullgraph: compile with ``fullgraph=True`` first (the default).
        notice: where the fallback notice goes (rank-zero logging in training).
        backend: torch.compile's ``backend`` (tests use ``"eager"``: the same graph capture, no code generation).
    """

    def __init__(
        self,
        module,
        mode: str | None = None,
        fullgraph: bool = True,
        notice: Callable[[str], None] | None = None,
        backend: str = "inductor",
    ):
        self.module = module
        self.mode = mode
        self.fullgraph = fullgraph
        self.notice = notice or _log.warning
        self.backend = backend
        self.compiled: Callable | None = None
        self.verified = False  # whether the compiled function has run once

    def _compile(self, fullgraph: bool) -> Callable:
        self.fullgraph = fullgraph
        return torch.compile(self.module.model_step, fullgraph=fullgraph, mode=self.mode, backend=self.backend)

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        noise = self.module.noise
        if self.compiled is None or (noise.generator is not None and noise.plan is None):
            # Eagerly: ActNorm initialises here, and the draws of the training noise are recorded.
            with noise.recording():
                losses = self.module.model_step(batch)
            if self.compiled is None:
                self.compiled = self._compile(self.fullgraph)
            return losses
        if noise.generator is not None:
            batch = noise.draw_ahead(batch)
        if self.verified or not self.fullgraph:
            return self.compiled(batch)
        try:
            losses = self.compiled(batch)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as error:  # while tracing, before running
            first_line = str(error).strip().splitlines()[0]
            self.notice(f"model_step does not compile as one graph ({first_line}); compiled with graph breaks")
            self.compiled = self._compile(False)
            losses = self.compiled(batch)
        self.verified = True
        return losses
