"""The closed-form transport fit under torch.distributed: each rank streams its share of the images and
noise, the moments are summed, and every rank ends with the single-process fit (real processes, gloo)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_linearizer.applications.one_step.transport import fit_latent_transport
from lit_linearizer.flows import ActNorm

SHAPE = (1, 4, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _networks() -> tuple[ActNorm, ActNorm]:
    """Two fixed elementwise-affine bijections (a data side and a noise side), float64."""
    generator = torch.Generator().manual_seed(0)
    networks = []
    for _ in range(2):
        layer = ActNorm(1).double().eval()
        with torch.no_grad():
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))
            layer.log_scale.copy_(0.3 * torch.randn(layer.log_scale.shape, generator=generator, dtype=torch.float64))
        layer.initialized.fill_(True)
        networks.append(layer)
    return networks[0], networks[1]


def _images(n: int = 90) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    patterns = torch.randn(3, *SHAPE, generator=generator, dtype=torch.float64)
    weights = torch.rand(n, 3, generator=generator, dtype=torch.float64) ** 2
    return torch.einsum("nk,kchw->nchw", weights, patterns) + 0.1 * torch.randn(n, *SHAPE, generator=generator,
                                                                                dtype=torch.float64)


def _fit(rank_setting: int | None, process=(0, 1), all_reduce=None) -> dict[str, torch.Tensor]:
    g_x, g_y = _networks()
    fit = fit_latent_transport(g_x, g_y, _images(), SHAPE, noise_seed=5, rank=rank_setting, batch_size=7,
                               process=process, all_reduce=all_reduce, dtype=torch.float64)
    return {**fit.operator.state_dict(), "mean": fit.mean, "variances": fit.variances}


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


RANK_SETTINGS = (None, 6)  # full moments, principal-subspace sketch


def _worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results[rank] = [_fit(setting, process=(rank, world_size), all_reduce=_summed) for setting in RANK_SETTINGS]
    finally:
        dist.destroy_process_group()


def test_sharded_fit_equals_the_single_process_fit():
    world_size = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world_size, _free_port(), results), nprocs=world_size, join=True)
        per_rank = [list(results[r]) for r in range(world_size)]
    for index, rank_setting in enumerate(RANK_SETTINGS):
        _check(rank_setting, [fits[index] for fits in per_rank], world_size)


def _check(rank_setting, fits: list[dict], world_size: int) -> None:
    single = _fit(rank_setting)
    # A rank alone sees half the data: its fit differs, so the equality below is the reduction's doing.
    alone = _fit(rank_setting, process=(0, world_size))
    assert any((alone[k] - single[k]).abs().max() > 1e-3 for k in single)
    for fit in fits:
        assert fit.keys() == single.keys()
        for key, expected in single.items():
            scale = expected.abs().max().clamp_min(1.0)
            assert (fit[key] - expected).abs().max() / scale < 1e-10, key
