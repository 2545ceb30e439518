"""Linear probes (seed 002): how linearly separable are the classes in a representation?

A logistic regression on g_x(x) latents against one on raw pixels says what the induced
space does for the task: g is a bijection, so any gain is purely a change of coordinates.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

__all__ = ["linear_probe_accuracy"]


def linear_probe_accuracy(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor, max_iter: int = 300
) -> float:
    """Test accuracy of a standardised, L2-regularised logistic regression (scikit-learn)."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=0.1))
    x_train = train_features.detach().flatten(1).double().cpu().numpy()
    x_test = test_features.detach().flatten(1).double().cpu().numpy()
    probe.fit(x_train, train_labels.cpu().numpy())
    return float(np.mean(probe.predict(x_test) == test_labels.cpu().numpy()))
