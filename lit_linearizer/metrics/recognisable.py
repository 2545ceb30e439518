"""The share of samples a classifier recognises with confidence, and which classes they are.

FID says how far generated images are from the data as a whole; this says how many of them are
individually recognisable, and whether every class is there (a generator that draws only
ones can have a fair FID on a class-agnostic feature net and still be useless). On real
validation digits the digit classifier recognises about 90 % at confidence 0.9.

Example:
    >>> import torch
    >>> classifier = torch.nn.Linear(4, 3)
    >>> with torch.no_grad():
    ...     _ = classifier.weight.copy_(10 * torch.eye(3, 4)); _ = classifier.bias.zero_()
    >>> metric = RecognisableRate(classifier, threshold=0.9, num_classes=3)
    >>> metric.update(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.1, 0.1, 0, 0]]))
    >>> {k: v.tolist() for k, v in metric.compute().items()}
    {'recognisable_rate': 0.6666666865348816, 'recognisable_classes': 2.0}
    >>> metric.histogram().tolist()
    [1.0, 1.0, 0.0]
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["RecognisableRate"]


class RecognisableRate(Metric):
    """``recognisable_rate``: the share of inputs whose top class probability is >= ``threshold``;
    ``recognisable_classes``: how many classes those inputs cover; ``histogram()``: their counts per class.

    Args:
        classifier: a callable ``inputs -> logits (B, C)`` (kept out of the metric's state and
            parameters: it is frozen and not this metric's to save).
        threshold: the confidence that counts as recognised.
        num_classes: C, the classifier's number of classes.
    """

    full_state_update = False

    def __init__(self, classifier: Callable[[Tensor], Tensor], threshold: float = 0.9, num_classes: int = 10, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.__dict__["classifier"] = classifier  # not a submodule
        self.threshold = float(threshold)
        self.add_state("seen", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(num_classes), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, inputs: Tensor) -> None:
        probabilities = self.classifier(inputs).float().softmax(dim=1)
        confidence, label = probabilities.max(dim=1)
        recognised = label[confidence >= self.threshold]
        self.seen += inputs.shape[0]
        self.counts += torch.bincount(recognised, minlength=self.counts.numel()).to(self.counts)

    def compute(self) -> dict[str, Tensor]:
        return {
            "recognisable_rate": self.counts.sum() / self.seen.clamp_min(1),
            "recognisable_classes": (self.counts > 0).sum().float(),
        }

    def histogram(self) -> Tensor:
        """Recognised inputs per class (synchronised like the other states after ``compute``)."""
        return self.counts.clone()
