"""Analysis of networks as piecewise-linear functions: exact ReLU regions, their shallow rewrite."""

from lit_linearizer.analysis.linear_pieces import (
    LinearityReport,
    PathPieces,
    SegmentRegions,
    count_linear_pieces,
    linearizer_linearity,
    segment_regions,
    slice_regions,
)
from lit_linearizer.analysis.relu_regions import (
    RegionTable,
    ReluRegion,
    activation_pattern,
    enumerate_regions,
    random_relu_mlp,
    relu_layers,
    restrict,
)
from lit_linearizer.analysis.shallow import ShallowReluNetwork, shallow_network

__all__ = [
    "LinearityReport",
    "PathPieces",
    "RegionTable",
    "ReluRegion",
    "SegmentRegions",
    "ShallowReluNetwork",
    "activation_pattern",
    "count_linear_pieces",
    "enumerate_regions",
    "linearizer_linearity",
    "random_relu_mlp",
    "relu_layers",
    "restrict",
    "segment_regions",
    "shallow_network",
    "slice_regions",
]
