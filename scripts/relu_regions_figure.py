"""Draw the activation regions of a 2-D toy ReLU network and its kinks along one segment
(docs/relu_regions.png), with the exact utilities of lit_linearizer.analysis.

    .venv/bin/python scripts/relu_regions_figure.py [--out docs/relu_regions.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from lit_linearizer.analysis import (  # noqa: E402
    ShallowReluNetwork,
    enumerate_regions,
    random_relu_mlp,
    segment_regions,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "relu_regions.png"
    )
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    net = random_relu_mlp(2, args.width, args.depth, seed=args.seed)
    table = enumerate_regions(net, -1.0, 1.0)
    shallow = ShallowReluNetwork(table)
    p, q = torch.tensor([-0.9, -0.6], dtype=torch.float64), torch.tensor([0.9, 0.7], dtype=torch.float64)
    line = segment_regions(net, p, q)

    fig, (ax_regions, ax_line) = plt.subplots(1, 2, figsize=(12, 5.4), gridspec_kw={"width_ratios": [1, 1.25]})
    colours = plt.get_cmap("tab20")(np.random.default_rng(0).permutation(len(table)) % 20)
    polygons = [r.polygon().numpy() for r in table.regions]
    ax_regions.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="black", linewidths=0.5))
    ax_regions.plot(*torch.stack([p, q]).T.numpy(), color="black", linewidth=2)
    t = line.breakpoints.numpy()[:, None]
    ax_regions.scatter(*(p.numpy() + t * (q - p).numpy()).T, s=14, color="white", edgecolors="black", zorder=3)
    ax_regions.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
    ax_regions.set_title(
        f"2-{args.width}x{args.depth}-1 ReLU MLP: {len(table)} activation regions on $[-1, 1]^2$\n"
        f"({table.num_affine_maps()} distinct affine maps; shallow rewrite: {shallow.num_hyperplanes} hyperplanes)",
        fontsize=10,
    )

    ts = torch.linspace(0, 1, 2001, dtype=torch.float64)
    xs = p + ts[:, None] * (q - p)
    with torch.no_grad():
        deep, flat = net(xs)[:, 0], shallow(xs)[:, 0]
    ax_line.plot(ts, deep, color="black", linewidth=2.5, label="deep network")
    ax_line.plot(ts, flat, color="tab:orange", linewidth=1, linestyle="--", label="shallow rewrite")
    for b in line.breakpoints.tolist():
        kink = any(abs(b - k) < 1e-12 for k in line.kinks.tolist())
        style = {"color": "tab:red", "linestyle": "-"} if kink else {"color": "dimgray", "linestyle": "--"}
        ax_line.axvline(b, linewidth=1.0, **style)
    ax_line.set(xlabel="t along the segment (left panel)", ylabel="f(p + t (q - p))")
    ax_line.set_title(
        f"{line.num_activation_regions} activation intervals, {line.num_linear_pieces} linear pieces "
        f"(red: kink; grey dashed: no kink)\n"
        f"max |shallow - deep| on 10,000 random points of the box: {_max_error(net, shallow):.1e}",
        fontsize=10,
    )
    ax_line.legend(loc="best", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: {len(table)} regions, {line.num_linear_pieces} pieces along the segment")


def _max_error(net, shallow) -> float:
    x = torch.rand(10_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        return float((shallow(x) - net(x)).abs().max())


if __name__ == "__main__":
    main()
