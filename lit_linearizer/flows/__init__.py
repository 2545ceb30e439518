"""Invertible networks g: blocks with forward, inverse and log|det J|, and networks built from them."""

from lit_linearizer.flows.actnorm import ActNorm
from lit_linearizer.flows.base import (
    ConditionedFlow,
    IdentityFlow,
    InvertibleModule,
    InvertibleSequential,
    ShiftedFlow,
)
from lit_linearizer.flows.conditioners import ConvConditioner, MLPConditioner, UNetConditioner
from lit_linearizer.flows.coupling import AffineCoupling
from lit_linearizer.flows.invertible_conv import InvertibleConv1x1
from lit_linearizer.flows.network import GlowNetwork, InvertibleNetwork, ResidualFlowNetwork
from lit_linearizer.flows.residual import ResidualFlowBlock
from lit_linearizer.flows.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "ConditionedFlow",
    "ConvConditioner",
    "GlowNetwork",
    "IdentityFlow",
    "InvertibleConv1x1",
    "InvertibleModule",
    "InvertibleNetwork",
    "InvertibleSequential",
    "MLPConditioner",
    "ResidualFlowBlock",
    "ResidualFlowNetwork",
    "ShiftedFlow",
    "Squeeze",
    "UNetConditioner",
]
