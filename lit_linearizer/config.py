"""Hydra/OmegaConf plumbing: where the configs live, custom resolvers, and override checks."""

from __future__ import annotations

import math
import netrc
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["CONFIG_DIR", "launch_dir", "register_resolvers", "to_plain", "wandb_offline"]

# conf/ sits next to the package in a clone (the platform is used from a clone, `pip install -e .`).
CONFIG_DIR = Path(os.environ.get("LINEARIZER_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))


def wandb_offline() -> bool:
    """True when W&B should log offline: WANDB_MODE unset and no API key configured.

    If WANDB_MODE is set (online, offline, disabled) W&B itself follows it. With no mode and
    no key, an online run would fail after a few seconds; offline runs can be synced later
    with `wandb sync`.
    """
    if os.environ.get("WANDB_MODE"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


def to_plain(value):
    """OmegaConf containers -> plain dicts/lists (resolved), so checkpoints load with ``weights_only=True``."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def launch_dir() -> str:
    """Hydra's ``runtime.cwd`` (where the command was started) once Hydra has set its config, else the current
    directory: a sweep launcher (submitit) resolves ``hydra.sweep.dir`` before Hydra sets it."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.cwd
    return os.getcwd()


def register_resolvers() -> None:
    """``${numel:[1,32,32]}`` -> 1024, ``${wandb_offline:}`` and ``${cwd:}`` (``launch_dir``). Safe to call more
    than once. ``cwd`` is cached, so a sweep's jobs see the launcher's value (Hydra copies the cache to them)."""
    if not OmegaConf.has_resolver("numel"):
        OmegaConf.register_new_resolver("numel", lambda shape: int(math.prod(shape)))
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", launch_dir, use_cache=True)


register_resolvers()
