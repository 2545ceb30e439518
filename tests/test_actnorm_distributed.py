"""ActNorm's data-dependent init under torch.distributed: every rank ends with the same parameters."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_linearizer.flows import ActNorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_data(rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rank)
    # Deliberately different statistics on each rank.
    return torch.randn(8, 3, 4, 4, generator=generator, dtype=torch.float64) * (1 + rank) + 3 * rank


def _worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        layer = ActNorm(3).double().train()
        layer(_rank_data(rank))
        results[rank] = torch.cat([layer.bias.detach(), layer.log_scale.detach()])
    finally:
        dist.destroy_process_group()


def test_actnorm_initialises_from_the_global_batch_on_every_rank():
    world_size = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world_size, _free_port(), results), nprocs=world_size, join=True)
        rank0, rank1 = results[0], results[1]
    assert torch.equal(rank0, rank1)
    # ... and the statistics are those of the two ranks' data together.
    reference = ActNorm(3).double().train()
    reference(torch.cat([_rank_data(r) for r in range(world_size)]))
    expected = torch.cat([reference.bias.detach(), reference.log_scale.detach()])
    assert torch.allclose(rank0, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(rank0[:3], -_rank_data(0).mean(dim=(0, 2, 3)))  # not rank 0's alone
