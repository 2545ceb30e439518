"""Style transfer without Lightning: one shared g, one operator per style, and the algebra of styles at inference.

    f_s(x) = g^-1( A_s g(x) )

Every style is a linear operator in the same latent space, so styles combine with no retraining:
interpolation ``alpha A_1 + (1 - alpha) A_2`` (the *operators*), composition ``f_{A_2 A_1} = f_{A_2} o
f_{A_1}`` (exact: the inner ``g g^-1`` cancels) and any mixture ``sum_s w_s A_s``.

Example:
    >>> import torch
    >>> from lit_linearizer.flows import GlowNetwork
    >>> from lit_linearizer.operators import OperatorBank, style_operator
    >>> _ = torch.manual_seed(0)
    >>> g = GlowNetwork(in_shape=(3, 4, 4), num_steps=1, hidden_channels=4, conditional=False)
    >>> bank = OperatorBank.replicate(lambda: style_operator("depthwise", (3, 4, 4), kernel_size=3), ["a", "b"])
    >>> model = StyleTransferModel(g, bank, (3, 4, 4)).double().eval()
    >>> x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    >>> model.stylize_all(x).shape  # every style of every image
    torch.Size([2, 2, 3, 4, 4])
    >>> bool((model.interpolate_styles(x, "a", "b", steps=3)[0] - model.stylize(x, "a")).abs().max() == 0)
    True
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_linearizer.errors import ConfigError
from lit_linearizer.flows.base import InvertibleModule
from lit_linearizer.linearizer import Linearizer
from lit_linearizer.operators import IdentityOperator, LatentOperator, LinearCombination, OperatorBank, ProductOperator
from lit_linearizer.operators.style import operator_at_shape

__all__ = ["StyleTransferModel"]


class StyleTransferModel(nn.Module):
    """``f_s(x) = g^-1(A_s g(x))`` for every style s of an operator bank; style algebra at inference.

    Args:
        network: g, one unconditional invertible network shared by every style.
        bank: an OperatorBank, one operator per style (its names are the styles).
        image_shape: (C, H, W) of the training images; the convolutional operator families also style
            images of other (even) sizes.
    """

    def __init__(self, network: InvertibleModule, bank: OperatorBank, image_shape: Sequence[int]):
        super().__init__()
        self.network, self.bank = network, bank
        self.image_shape = tuple(int(s) for s in image_shape)

    @property
    def styles(self) -> list[str]:
        return list(self.bank.names)

    def _check_style(self, style: str | int) -> str | int:
        if isinstance(style, str) and style not in self.bank.names:
            raise ConfigError(f"unknown style {style!r}; this model knows {self.styles}")
        return style

    # -- operators ----------------------------------------------------------------------------------
    def style_operator(self, style: str | int) -> LatentOperator:
        """``A_s``."""
        return self.bank[self._check_style(style)]

    def interpolated_operator(self, first: str | int, second: str | int, alpha: float) -> LinearCombination:
        """``alpha A_first + (1 - alpha) A_second``: alpha = 1 is ``first``, alpha = 0 is ``second``."""
        return self.bank.interpolate(self._check_style(first), self._check_style(second), float(alpha))

    def mixed_operator(self, weights: Mapping[str, float]) -> LinearCombination:
        """``sum_s w_s A_s``; the key ``identity`` adds ``w I`` (``{"sepia": 0.5, "identity": 0.5}``: half strength)."""
        weights = dict(weights)
        identity = weights.pop("identity", None)
        operators = [self.style_operator(s) for s in weights]
        coefficients = [float(w) for w in weights.values()]
        if identity is not None:
            operators.append(IdentityOperator(self.bank[0].in_features))
            coefficients.append(float(identity))
        return LinearCombination(coefficients, operators)

    def composed_operator(self, styles: Sequence[str | int]) -> ProductOperator:
        """``A_{s_k} ... A_{s_1}`` for ``styles = [s_1, ..., s_k]`` (the first style is applied first)."""
        if not styles:
            raise ConfigError("compose at least one style")
        return ProductOperator([self.style_operator(s) for s in reversed(list(styles))])

    # -- images -------------------------------------------------------------------------------------
    def stylizer(self, operator: LatentOperator | str | int, image_shape: Sequence[int] | None = None) -> Linearizer:
        """The Linearizer ``g^-1(A g(.))`` for a style name or any operator built from the bank.

        ``image_shape``: apply it to images of another size (convolutional operator families).
        """
        if not isinstance(operator, LatentOperator):
            operator = self.style_operator(operator)
        shape = self.image_shape if image_shape is None else tuple(int(s) for s in image_shape)
        if shape != self.image_shape:
            if shape[0] != self.image_shape[0] or shape[1] % 2 or shape[2] % 2:
                raise ConfigError(f"images of shape {shape}: need {self.image_shape[0]} channels and even sides")
            operator = operator_at_shape(operator, shape)
        return Linearizer(self.network, operator, self.network, shape, shape)

    @torch.no_grad()
    def stylize(self, images: Tensor, style: LatentOperator | str | int) -> Tensor:
        """``f_A(images)`` for images ``(B, C, H, W)`` in [-1, 1]."""
        return self.stylizer(style, images.shape[1:])(images)

    @torch.no_grad()
    def interpolate_styles(self, images: Tensor, first: str | int, second: str | int, steps: int) -> Tensor:
        """``(steps, B, C, H, W)``: alpha from 1 (``first``) to 0 (``second``), operators interpolated."""
        if steps < 2:
            raise ConfigError(f"steps={steps}: an interpolation needs at least 2 frames")
        z = self.network(images).flatten(1)
        frames = []
        for i in range(steps):
            alpha = 1.0 - i / (steps - 1)  # exactly 1 and 0 at the ends
            operator = operator_at_shape(self.interpolated_operator(first, second, alpha), images.shape[1:])
            frames.append(self.network.inverse(operator(z).view_as(images)))
        return torch.stack(frames)

    @torch.no_grad()
    def compose_styles(self, images: Tensor, styles: Sequence[str | int]) -> Tensor:
        """``f_{A_k ... A_1}(images)``: all the styles in one pass through g and g^-1."""
        return self.stylize(images, self.composed_operator(styles))

    def stylize_all(self, images: Tensor) -> Tensor:
        """Every style of every image, ``(B, num_styles, C, H, W)``: one pass through g, one through g^-1."""
        z = self.network(images).flatten(1)
        latents = torch.cat([operator(z) for operator in self.bank.operators])
        outputs = self.network.inverse(latents.view(-1, *self.image_shape))
        return outputs.view(len(self.bank), images.shape[0], *self.image_shape).transpose(0, 1)
