"""Modular style transfer (LINEARIZER.md, section 4): one shared g, one operator per style, styles as linear algebra.

``module.py`` trains it (``StyleTransferLitModule``, ``conf/model/style_transfer.yaml``); ``model.py`` styles
images and combines styles without Lightning (``StyleTransferModel``, also ``module.model``); ``grids.py``,
``diagnostics.py`` and ``cli.py`` (`linearizer style`, `linearizer sample`) use the model. The operator
families are in ``lit_linearizer/operators/style.py``.
"""

from lit_linearizer.applications.style_transfer.model import StyleTransferModel
from lit_linearizer.applications.style_transfer.module import StyleTransferLitModule

__all__ = ["StyleTransferLitModule", "StyleTransferModel"]
