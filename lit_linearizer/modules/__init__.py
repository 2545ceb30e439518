"""LightningModules: the shared base and one module per application."""

from lit_linearizer.modules.base import LinearizerLitModule
from lit_linearizer.modules.idempotent import IdempotentLitModule
from lit_linearizer.modules.one_step import OneStepLitModule
from lit_linearizer.modules.style_transfer import StyleTransferLitModule

__all__ = ["IdempotentLitModule", "LinearizerLitModule", "OneStepLitModule", "StyleTransferLitModule"]
