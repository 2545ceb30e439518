"""Where pretrained metric weights come from, offline-safe.

Inception (FID) and the LPIPS backbones are loaded the way torchmetrics / torch-fidelity /
lpips load them: from torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), or from
a path the user configures (clusters without internet). We only *look* for the files; nothing
here downloads (``linearizer fetch-weights`` does, on a machine with internet). A metric whose
weights are missing is skipped with a one-line notice, never replaced by a fake value.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from lit_linearizer.downloads import socket_timeout
from lit_linearizer.errors import MetricWeightsError

__all__ = [
    "INCEPTION_URL",
    "LPIPS_BACKBONE_URLS",
    "download_all",
    "hub_checkpoint",
    "hub_serving",
    "inception_weights",
    "lpips_backbone_weights",
]

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
# torchvision backbones used by LPIPS, by LPIPS net type.
LPIPS_BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


def _filename(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def hub_checkpoint(url: str) -> Path | None:
    """The file torch.hub would load for ``url``, if it is already in the cache."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / _filename(url)
    return path if path.is_file() else None


def _configured(path: str | os.PathLike | None, what: str, key: str) -> Path | None:
    if path in (None, ""):
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetricWeightsError(f"{key}={path} does not exist; point it at the {what} file or unset it")
    return path


def inception_weights(configured: str | None = None) -> Path | None:
    """Path of the FID Inception weights (configured, else the hub cache), or None."""
    return _configured(configured, "FID Inception weights", "metrics.inception_weights") or hub_checkpoint(
        INCEPTION_URL
    )


def lpips_backbone_weights(net: str = "alex", configured: str | None = None) -> Path | None:
    """Path of the torchvision backbone LPIPS needs (configured, else the hub cache), or None."""
    if net not in LPIPS_BACKBONE_URLS:
        raise MetricWeightsError(f"unknown LPIPS net {net!r}; choose one of {sorted(LPIPS_BACKBONE_URLS)}")
    return _configured(configured, f"LPIPS {net} backbone", "metrics.lpips_backbone_weights") or hub_checkpoint(
        LPIPS_BACKBONE_URLS[net]
    )


@contextlib.contextmanager
def hub_serving(url: str, path: Path):
    """Make torch.hub find ``path`` as the cached download of ``url``, for the duration.

    Libraries such as torchvision load backbones only through the hub cache; a configured
    path that lives elsewhere is served from a temporary hub directory with a link to it.
    """
    if hub_checkpoint(url) == path:
        yield
        return
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="linearizer-hub-") as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        (Path(tmp) / "checkpoints" / _filename(url)).symlink_to(path.resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def download_all(nets: tuple[str, ...] = ("alex",), timeout: float = 30.0) -> list[Path]:
    """Download the Inception and LPIPS backbone weights into the hub cache (needs internet).

    ``download_url_to_file`` checks the SHA-256 prefix in the file name where there is one.
    """
    paths = []
    for url in [INCEPTION_URL, *(LPIPS_BACKBONE_URLS[n] for n in nets)]:
        target = Path(torch.hub.get_dir()) / "checkpoints" / _filename(url)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with socket_timeout(timeout):
                torch.hub.download_url_to_file(url, str(target), progress=True)
        paths.append(target)
    return paths
