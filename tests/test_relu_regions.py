"""Exact activation regions of ReLU MLPs and the seed's shallow rewrite, in float64: the shallow
network equals the deep one to 1e-12 on random points and at region boundaries; the regions tile
the box; region counts along lines match an independent per-neuron breakpoint search."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

from lit_linearizer.analysis import (
    ShallowReluNetwork,
    activation_pattern,
    count_linear_pieces,
    enumerate_regions,
    linear_pieces,
    linearizer_linearity,
    relu_regions,
    segment_regions,
    shallow,
    slice_regions,
)

pytestmark = pytest.mark.usefixtures("float64_default")

TOL = 1e-12
LOW, HIGH = -1.0, 1.0

# (input dim, width, depth, outputs): inputs 1-3, widths up to 16, depths up to 4.
CONFIGS = [(1, 16, 4, 1), (2, 16, 4, 3), (2, 8, 3, 2), (3, 8, 4, 1), (3, 16, 2, 2), (3, 4, 4, 3)]
SLOW_CONFIGS = [(3, 16, 3, 1), (3, 16, 4, 2)]


def random_mlp(d: int, width: int, depth: int, out: int = 1, seed: int = 0) -> nn.Sequential:
    """He-initialised weights and N(0, 0.5^2) biases: many regions in the box (PyTorch's default
    init gives deep nets only a few)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [d] + [width] * depth + [out]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) * (2 / fan_in) ** 0.5)
            linear.bias.copy_(torch.randn(fan_out, generator=generator) * 0.5)
        layers += [linear] + ([nn.ReLU()] if i < depth else [])
    return nn.Sequential(*layers).double()


def uniform_points(n: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return LOW + (HIGH - LOW) * torch.rand(n, d, generator=generator, dtype=torch.float64)


def boundary_points(table, seed: int, n: int = 2_000) -> torch.Tensor:
    """Points on facets shared by regions (convex combinations of a facet's vertices), nudged by
    1e-16..1e-6 in random directions, and region vertices: where the selection is hardest."""
    rng = np.random.default_rng(seed)
    facets = [(region, row) for region in table.regions for row in region.halfspaces.numpy()]
    points = []
    for i in rng.choice(len(facets), size=min(n, len(facets)), replace=False):
        region, row = facets[i]
        vertices = region.vertices.numpy()
        a, c = row[:-1], row[-1]
        on = vertices[np.abs(vertices @ a + c) <= 1e-9 * (np.abs(a).sum() + abs(c))]
        for scale in (0.0, 10.0 ** rng.uniform(-16, -6)):
            base = rng.dirichlet(np.ones(len(on))) @ on
            points.append(base + scale * rng.standard_normal(base.size))
    vertices = np.concatenate([r.vertices.numpy() for r in table.regions])
    points = np.concatenate([np.array(points), vertices[rng.permutation(len(vertices))[:n]]])
    return torch.from_numpy(np.clip(points, LOW, HIGH))


@pytest.fixture(scope="module")
def tables():
    cache = {}

    def get(config):
        if config not in cache:
            d, width, depth, out = config
            net = random_mlp(d, width, depth, out, seed=sum(config))
            cache[config] = (net, enumerate_regions(net, LOW, HIGH))
        return cache[config]

    return get


def _check_shallow_equals_deep(net, table, d, seed):
    model = ShallowReluNetwork(table)
    x = uniform_points(10_000, d, seed)
    with torch.no_grad():
        random_error = (model(x) - net(x)).abs().max().item()
        edges = boundary_points(table, seed)
        boundary_error = (model(edges) - net(edges)).abs().max().item()
    assert random_error <= TOL, f"{len(table)} regions: max |shallow - deep| = {random_error:.2e} on random points"
    assert boundary_error <= TOL, f"{len(table)} regions: max |shallow - deep| = {boundary_error:.2e} at boundaries"
    return random_error, boundary_error


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "d{}-w{}-L{}-o{}".format(*c))
def test_shallow_equals_deep(tables, config):
    net, table = tables(config)
    _check_shallow_equals_deep(net, table, config[0], seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("config", SLOW_CONFIGS, ids=lambda c: "d{}-w{}-L{}-o{}".format(*c))
def test_shallow_equals_deep_large(config):
    d, width, depth, out = config
    net = random_mlp(d, width, depth, out, seed=sum(config))
    _check_shallow_equals_deep(net, enumerate_regions(net, LOW, HIGH), d, seed=2)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "d{}-w{}-L{}-o{}".format(*c))
def test_regions_tile_the_box_with_their_own_patterns_and_maps(tables, config):
    net, table = tables(config)
    d = config[0]
    volumes = np.array([r.volume() for r in table.regions])
    assert volumes.min() > 0
    assert volumes.sum() == pytest.approx((HIGH - LOW) ** d, rel=1e-9)
    patterns = table.patterns
    assert len({bytes(p) for p in patterns.numpy().astype(np.uint8)}) == len(table)
    interior = torch.stack([r.interior_point for r in table.regions])
    assert torch.equal(activation_pattern(net, interior), patterns)
    for region in table.regions:
        with torch.no_grad():
            at_vertices = net(region.vertices)
        assert (region.vertices @ region.weight.T + region.bias - at_vertices).abs().max() <= TOL
    # no region is missed: every sampled point's pattern is in the table
    x = uniform_points(20_000, d, seed=3)
    assert bool((table.index_of(activation_pattern(net, x)) >= 0).all())


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: "d{}-w{}-L{}-o{}".format(*c))
def test_selection_picks_exactly_one_region_inside_each(tables, config):
    """The seed's construction: v = S relu(G x + g) vanishes at region k's points and nowhere else."""
    _, table = tables(config)
    model = ShallowReluNetwork(table)
    interior = torch.stack([r.interior_point for r in table.regions])
    v = model.violations(interior)
    assert torch.equal(v.diagonal(), torch.zeros(len(table)))
    off = v + torch.diag(torch.full((len(table),), float("inf")))
    assert bool((off > 0).all())
    assert torch.equal(model.region_index(interior), torch.arange(len(table)))
    S = model.selection_matrix(dense=True)
    assert S.shape == (len(table), model.num_hyperplanes) and set(S.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(S.sum(1), torch.tensor([float(r.halfspaces.shape[0]) for r in table.regions]))
    assert model.region_maps["weight"].shape == (len(table), config[3], config[0])


# ------------------------------------------------------------------------------------------------
# region counts along lines, against an independent breakpoint search
# ------------------------------------------------------------------------------------------------
def independent_breakpoints(net: nn.Sequential, p: torch.Tensor, q: torch.Tensor) -> tuple[list[float], int]:
    """Breakpoints of ``t -> net(p + t (q - p))`` on [0, 1], found neuron by neuron.

    Layer by layer: between consecutive breakpoints of the earlier layers, every pre-activation of
    this layer is affine in t, so each neuron crosses zero at most once there, where its values at
    the interval's ends (a plain forward pass) change sign, at the linear interpolate. The kinks
    are the breakpoints where the slope (autograd, at the interval midpoints) changes.
    Returns the breakpoints and the number of kinks.
    """
    modules = list(net)
    ts = [0.0, 1.0]
    for index, module in enumerate(modules):
        if not isinstance(module, nn.ReLU):
            continue
        t = torch.tensor(ts, dtype=torch.float64)
        with torch.no_grad():
            pre = nn.Sequential(*modules[:index])(p + t[:, None] * (q - p))
        new = []
        for i in range(len(ts) - 1):
            a, b = pre[i], pre[i + 1]
            crossing = (a * b) < 0
            new += (t[i] + (t[i + 1] - t[i]) * a[crossing] / (a[crossing] - b[crossing])).tolist()
        ts = sorted(ts + new)
    t = torch.tensor(ts, dtype=torch.float64)
    mids = (t[1:] + t[:-1]) / 2
    # each row of the batch is its own input, so one jvp gives every interval's d f / d t
    slopes = torch.autograd.functional.jvp(lambda s: net(p + s * (q - p)), mids[:, None], torch.ones(len(mids), 1))[1]
    jumps = (slopes[1:] - slopes[:-1]).abs().amax(1)
    kinks = int((jumps > 1e-9 * slopes.abs().max()).sum())
    return ts[1:-1], kinks


@pytest.mark.parametrize("config", CONFIGS + [(3, 16, 4, 2)], ids=lambda c: "d{}-w{}-L{}-o{}".format(*c))
def test_segment_regions_match_an_independent_count(config):
    d, width, depth, out = config
    net = random_mlp(d, width, depth, out, seed=10 + sum(config))
    generator = torch.Generator().manual_seed(sum(config))
    counts = []
    for _ in range(3):
        p, q = 1.5 * torch.randn(2, d, generator=generator, dtype=torch.float64)
        found = segment_regions(net, p, q)
        reference, kinks = independent_breakpoints(net, p, q)
        assert found.num_activation_regions == len(reference) + 1
        assert torch.allclose(found.breakpoints, torch.tensor(reference, dtype=torch.float64), rtol=0, atol=1e-9)
        assert found.num_linear_pieces == kinks + 1
        counts.append(found.num_activation_regions)
    assert max(counts) > 2  # the lines do cross boundaries


def test_a_neuron_with_no_live_path_changes_the_pattern_but_does_not_bend():
    net = random_mlp(2, 8, 2, 1, seed=7)
    with torch.no_grad():
        net[2].weight[:, :4] = 0.0  # first-layer neurons 0-3 reach nothing
    p, q = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    found = segment_regions(net, p, q)
    reference, kinks = independent_breakpoints(net, p, q)
    assert found.num_activation_regions == len(reference) + 1 > found.num_linear_pieces == kinks + 1
    first_layer = -(net[0].bias[:4] + net[0].weight[:4] @ p) / (net[0].weight[:4] @ (q - p))
    dead = first_layer[(first_layer > 0) & (first_layer < 1)]
    assert dead.numel() > 0
    assert all((found.breakpoints - t).abs().min() < 1e-12 for t in dead)
    assert all((found.kinks - t).abs().min() > 1e-9 for t in dead)


def test_numerical_count_agrees_with_the_exact_one_on_relu_nets():
    net = random_mlp(2, 8, 2, 1, seed=4)
    p, q = torch.tensor([-1.0, -0.7]), torch.tensor([1.0, 0.9])
    exact = segment_regions(net, p, q)
    numeric = count_linear_pieces(net, p, q, num=4096)
    gaps = torch.diff(torch.cat([torch.zeros(1), exact.kinks, torch.ones(1)]))
    assert gaps.min() > 4 / 4096  # the regime where the grid count is exact
    assert numeric.num_pieces == exact.num_linear_pieces > 3
    assert torch.allclose(numeric.kinks, exact.kinks, atol=1 / 4096)
    assert numeric.curved_fraction < 0.01


def test_slice_of_a_higher_dimensional_net():
    net = random_mlp(6, 12, 3, 2, seed=5)
    generator = torch.Generator().manual_seed(0)
    origin, u, v = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    table = slice_regions(net, origin, u, v, low=-1.0, high=1.0)
    assert sum(r.volume() for r in table.regions) == pytest.approx(4.0, rel=1e-9)
    st = uniform_points(2_000, 2, seed=6)
    with torch.no_grad():
        deep = net(origin + st[:, :1] * u + st[:, 1:] * v)
        shallow_values = ShallowReluNetwork(table)(st)
    assert (shallow_values - deep).abs().max() <= TOL
    assert len(table) >= table.num_affine_maps() > 10


def test_a_linearizer_is_one_region_in_its_induced_spaces():
    from lit_linearizer import Linearizer
    from lit_linearizer.flows import GlowNetwork
    from lit_linearizer.operators import DenseOperator

    torch.manual_seed(0)
    g = GlowNetwork(in_shape=(1, 4, 4), num_steps=2, hidden_channels=8, conditional=False)
    torch.nn.utils.vector_to_parameters(0.1 * torch.randn(sum(p.numel() for p in g.parameters())), g.parameters())
    f = Linearizer(g, DenseOperator(16, init="random")).eval()
    x1, x2 = torch.randn(2, 1, 4, 4)
    report = linearizer_linearity(f, x1, x2, num=128)
    assert report.induced_pieces.num_pieces == 1 and report.induced_pieces.curved_fraction == 0
    assert report.induced_defect < 1e-10 and report.induced_additivity < 1e-10
    assert report.pixel_pieces.curved_fraction > 0.9 and report.pixel_pieces.num_pieces > 100
    assert report.pixel_defect > 1e-4 and report.pixel_additivity > 1e-3


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", [nn.Tanh(), nn.LeakyReLU(), nn.GELU(), nn.Sigmoid()])
def test_a_non_relu_activation_is_a_one_line_error(activation):
    net = nn.Sequential(nn.Linear(2, 4), activation, nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match=f"layer 1 is {type(activation).__name__}: .*nn.Linear and nn.ReLU") as info:
        enumerate_regions(net)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="nn.Sequential"):
        enumerate_regions(nn.Linear(2, 1))


def test_an_input_outside_the_box_is_a_one_line_error():
    model = ShallowReluNetwork(enumerate_regions(random_mlp(2, 4, 2, 1, seed=0), -1.0, 1.0))
    inside = torch.tensor([[1.0, -1.0], [0.3, 0.2]])
    model(inside)
    with pytest.raises(ValueError, match="outside the box") as info:
        model(torch.tensor([[0.0, 0.0], [1.01, 0.0]]))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(B, 2\)"):
        model(torch.zeros(3))


def test_input_dimension_above_three_is_refused():
    with pytest.raises(ValueError, match="input dimension 1-3, got 4"):
        enumerate_regions(random_mlp(4, 4, 1, 1))


@pytest.mark.parametrize("module", [relu_regions, shallow, linear_pieces])
def test_docstring_examples_run(module):
    assert module.__all__
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------
# docs and scripts
# ------------------------------------------------------------------------------------------------
def _script(name):
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_page_example_runs_and_links_its_figure():
    import re

    from tests.conftest import REPO_ROOT

    page = (REPO_ROOT / "docs" / "relu_regions.md").read_text()
    assert "(relu_regions.png)" in page and (REPO_ROOT / "docs" / "relu_regions.png").stat().st_size > 10_000
    assert "docs/relu_regions.md" in (REPO_ROOT / "README.md").read_text()
    exec(compile(re.search(r"```python\n(.*?)```", page, re.S).group(1), "relu_regions.md", "exec"), {})


def test_figure_and_cost_scripts_run(tmp_path, capsys):
    _script("relu_regions_figure").main(["--width", "4", "--depth", "2", "--out", str(tmp_path / "regions.png")])
    assert (tmp_path / "regions.png").stat().st_size > 10_000
    _script("relu_regions_cost").main(["--dims", "2", "--widths", "4", "--depths", "2"])
    assert "| 2 | 2 | 4 |" in capsys.readouterr().out
