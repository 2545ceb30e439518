"""Errors caused by what the user asked for (config, data, checkpoints, weights).

The CLI prints these as one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataNotFoundError",
    "MetricWeightsError",
    "TrainingDivergedError",
    "UserInputError",
]


class UserInputError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""


class ConfigError(UserInputError, ValueError):
    pass


class DataNotFoundError(UserInputError, FileNotFoundError):
    pass


class CheckpointError(UserInputError):
    pass


class MetricWeightsError(UserInputError):
    pass


class TrainingDivergedError(UserInputError, FloatingPointError):
    """The loss or the weights became NaN/inf: the message names the steps and what to change (learning rate, ...)."""
