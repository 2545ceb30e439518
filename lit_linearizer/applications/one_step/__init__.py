"""One-step generation (LINEARIZER.md, section 3): flow matching in latent space, T solver steps collapsed into B.

``module.py`` trains it (``OneStepLitModule``, ``conf/model/one_step.yaml``); ``model.py`` samples, inverts
and interpolates without Lightning (``OneStepModel``, also ``module.model``); ``grids.py``, ``diagnostics.py``
and ``cli.py`` (`linearizer sample`) use the model.
"""

from lit_linearizer.applications.one_step.model import OneStepModel
from lit_linearizer.applications.one_step.module import OneStepLitModule

__all__ = ["OneStepLitModule", "OneStepModel"]
