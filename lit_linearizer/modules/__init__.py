"""The LightningModule base every application builds on (the applications: ``lit_linearizer/applications/``)."""

from lit_linearizer.modules.base import LinearizerLitModule

__all__ = ["LinearizerLitModule"]
