"""Shared fixtures: an isolated environment per test, the embedded MNIST files, fast configs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lit_linearizer.config import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent

# Overrides that shrink any preset into a seconds-long CPU run.
FAST_OVERRIDES = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "logger=none",
    "data.batch_size=16",
]
TINY_ONE_STEP = [
    "model.network.num_steps=1",
    "model.network.hidden_channels=8",
    "model.operator.hidden=16",
    "model.operator.basis_size=16",
    "model.operator.rank=4",
    "model.sampler.steps=8",
    "model.num_grid_samples=4",
    "model.metrics.domain_classifier=null",
]


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory) -> dict[str, Path]:
    """Data and cache directories shared by the whole session (the embedded IDX files, classifier)."""
    base = tmp_path_factory.mktemp("session")
    return {"data": base / "data", "cache": base / "cache"}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, session_dirs):
    """Every cache in a temp dir, W&B offline, no network: nothing leaks into $HOME."""
    for name, sub in {
        "WANDB_DIR": "wandb",
        "WANDB_CACHE_DIR": "wandb-cache",
        "WANDB_CONFIG_DIR": "wandb-config",
        "TORCH_HOME": "torch",
        "XDG_CACHE_HOME": "xdg",
        "MPLCONFIGDIR": "mpl",
    }.items():
        monkeypatch.setenv(name, str(tmp_path / "env" / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("LINEARIZER_CACHE_DIR", str(session_dirs["cache"]))
    monkeypatch.setenv("LINEARIZER_DATA_DIR", str(session_dirs["data"]))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # re-read TORCH_HOME
    yield


@pytest.fixture
def float64_default():
    """float64 by default; one intra-op thread (these tensors are tiny, and on a shared 2-core
    machine OpenMP's thread pool makes small ops up to 100x slower under contention)."""
    previous_dtype, previous_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(previous_dtype)
    torch.set_num_threads(previous_threads)


@pytest.fixture
def no_network(monkeypatch):
    """Make any outgoing connection fail at once, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def compose_config(tmp_path: Path, overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose a config the way `linearizer` does, with outputs under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(overrides: list[str], config_name: str = "config") -> DictConfig:
        return compose_config(tmp_path, overrides, config_name)

    yield _compose
    GlobalHydra.instance().clear()


def cli_env(tmp_path: Path, session_dirs: dict[str, Path]) -> dict[str, str]:
    """Environment for running the `linearizer` CLI in a subprocess."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        LINEARIZER_DATA_DIR=str(session_dirs["data"]),
        LINEARIZER_CACHE_DIR=str(session_dirs["cache"]),
        LINEARIZER_LOG_DIR=str(tmp_path / "outputs"),
        PYTHONUNBUFFERED="1",
    )
    return env
