"""The idempotent Linearizer (LINEARIZER.md, section 5): ``f = g^-1 P g`` with ``P^2 = P``, a projector for every input.

``module.py`` trains it (``IdempotentLitModule``, ``conf/model/idempotent.yaml``); ``model.py`` projects,
generates and corrupts without Lightning (``IdempotentModel``, also ``module.model``); ``grids.py`` and
``cli.py`` (`linearizer sample source=noise|data|file`) use the model.
"""

from lit_linearizer.applications.idempotent.model import IdempotentModel
from lit_linearizer.applications.idempotent.module import IdempotentLitModule, sliced_wasserstein

__all__ = ["IdempotentLitModule", "IdempotentModel", "sliced_wasserstein"]
