"""lit-linearizer: train Linearizers, f(x) = g_y^-1(A g_x(x)), and use their linear algebra."""

from lit_linearizer.induced_space import InducedSpace
from lit_linearizer.linearizer import Linearizer, LinearizerSVD

__all__ = ["InducedSpace", "Linearizer", "LinearizerSVD"]
__version__ = "0.1.0"
