"""Measure what exact region enumeration costs as a ReLU MLP gets wider: regions, seconds, size of
the shallow rewrite. Prints a markdown table (docs/relu_regions.md quotes one run).

    .venv/bin/python scripts/relu_regions_cost.py                       # the table in the docs
    .venv/bin/python scripts/relu_regions_cost.py --dims 2 --widths 8 16 32 64 --depths 2
"""

from __future__ import annotations

import argparse
import time

import torch

from lit_linearizer.analysis import ShallowReluNetwork, enumerate_regions, random_relu_mlp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--budget", type=float, default=120.0, help="skip wider nets once one takes longer (s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| input dim | depth | width | regions | enumeration (s) | regions / s | shallow: hyperplanes "
        "| 10k-point forward (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        for depth in args.depths:
            for width in args.widths:
                net = random_relu_mlp(d, width, depth, seed=0)
                start = time.perf_counter()
                table = enumerate_regions(net, -1.0, 1.0)
                elapsed = time.perf_counter() - start
                shallow = ShallowReluNetwork(table)
                x = torch.rand(10_000, d, dtype=torch.float64) * 2 - 1
                start = time.perf_counter()
                with torch.no_grad():
                    error = (shallow(x) - net(x)).abs().max().item()
                forward = time.perf_counter() - start
                assert error < 1e-12, error
                print(
                    f"| {d} | {depth} | {width} | {len(table):,} | {elapsed:.2f} | {len(table) / elapsed:,.0f} "
                    f"| {shallow.num_hyperplanes:,} | {forward:.2f} |",
                    flush=True,
                )
                if elapsed > args.budget:
                    break


if __name__ == "__main__":
    main()
