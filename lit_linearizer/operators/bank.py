"""An operator bank: one operator per style or condition, indexable and combinable."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.operators.base import LatentOperator, LinearCombination

__all__ = ["OperatorBank"]


class OperatorBank(nn.Module):
    """Named operators of one shape. ``bank["sepia"]`` or ``bank[2]`` is a member.

    ``bank.combine({"sepia": 0.3, "sketch": 0.7})`` (or a list of weights, one per member)
    returns the operator ``sum_i w_i A_i``, itself a LatentOperator: interpolating styles
    means interpolating operators, not the indices that select them.
    """

    def __init__(self, operators: Sequence[LatentOperator], names: Sequence[str] | None = None):
        super().__init__()
        operators = list(operators)
        names = [str(i) for i in range(len(operators))] if names is None else [str(n) for n in names]
        if len(names) != len(operators) or len(set(names)) != len(names):
            raise ValueError(f"need one unique name per operator, got names {names} for {len(operators)} operators")
        shapes = {(op.out_features, op.in_features) for op in operators}
        if len(shapes) > 1:
            raise ValueError(f"all operators of a bank must have one shape, got {sorted(shapes)}")
        self.names = names
        self.operators = nn.ModuleList(operators)

    @classmethod
    def replicate(cls, factory: Callable[[], LatentOperator], names: Sequence[str]) -> "OperatorBank":
        """A bank with one freshly built operator per name."""
        return cls([factory() for _ in names], names)

    def __len__(self) -> int:
        return len(self.operators)

    def index(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self.names:
                raise KeyError(f"no operator named {key!r}; the bank has {self.names}")
            return self.names.index(key)
        if not -len(self) <= key < len(self):
            raise IndexError(f"operator index {key} out of range for a bank of {len(self)}")
        return key % len(self)

    def __getitem__(self, key: int | str) -> LatentOperator:
        return self.operators[self.index(key)]

    def combine(self, weights: Mapping[str, float] | Sequence[float]) -> LinearCombination:
        if isinstance(weights, Mapping):
            pairs = [(self[k], float(w)) for k, w in weights.items()]
        else:
            if len(weights) != len(self):
                raise ValueError(f"need {len(self)} weights, one per operator, got {len(weights)}")
            pairs = [(op, float(w)) for op, w in zip(self.operators, weights)]
        return LinearCombination([w for _, w in pairs], [op for op, _ in pairs])

    def interpolate(self, first: int | str, second: int | str, alpha: float) -> LinearCombination:
        """``alpha A_first + (1 - alpha) A_second``."""
        return LinearCombination([alpha, 1.0 - alpha], [self[first], self[second]])

    def apply_per_sample(self, z: Tensor, indices: Tensor, t=None) -> Tensor:
        """``A_{indices[b]} z[b]`` for a batch that mixes members."""
        out = torch.empty(z.shape[0], self.operators[0].out_features, dtype=z.dtype, device=z.device)
        for index in indices.unique().tolist():
            rows = indices == index
            out[rows] = self.operators[index](z[rows], t)
        return out
