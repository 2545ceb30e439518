"""lit-linearizer: train Linearizers, f(x) = g_y^-1(A g_x(x)), and use their linear algebra."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["InducedSpace", "Linearizer", "LinearizerSVD"]
__version__ = "0.1.0"

# Imported on first use: the `linearizer` command checks its config before it pays for importing torch.
_LAZY = {
    "InducedSpace": "lit_linearizer.induced_space",
    "Linearizer": "lit_linearizer.linearizer",
    "LinearizerSVD": "lit_linearizer.linearizer",
}

if TYPE_CHECKING:
    from lit_linearizer.induced_space import InducedSpace
    from lit_linearizer.linearizer import Linearizer, LinearizerSVD


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lit_linearizer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
