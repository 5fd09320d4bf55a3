"""CGConv: O(n) equivariance for hops 1-3, path enumeration, batching, expressivity and input checks."""

import itertools
import math

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import erdos_renyi_graph

from pyg_clifford import CGConv, CliffordAlgebra, KHopPaths, khop_paths
from pyg_clifford.testing import random_orthogonal
from pyg_clifford.transforms import check_paths


def random_graph(num_nodes: int, p: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return erdos_renyi_graph(num_nodes, p, directed=False)


def brute_force_paths(edge_index: torch.Tensor, num_nodes: int, hops: int, mode: str) -> set[tuple[int, ...]]:
    """Reference enumeration with Python loops (tests only)."""
    edges = {tuple(e) for e in edge_index.t().tolist()}  # (source, target)
    incoming = {i: sorted(s for s, t in edges if t == i) for i in range(num_nodes)}
    dist = {}
    for i in range(num_nodes):  # BFS distances over incoming edges
        dist[(i, i)], frontier = 0, [i]
        for d in range(1, hops + 1):
            frontier = [s for node in frontier for s in incoming[node] if (i, s) not in dist]
            for s in frontier:
                dist.setdefault((i, s), d)
    paths = {(t, s) for s, t in edges}
    result = set()
    for k in range(2, hops + 1):
        paths = {p + (s,) for p in paths for s in incoming[p[-1]] if s != p[-2]}
        if mode == "shell":
            paths = {p for p in paths if dist.get((p[0], p[-1])) == k}
        result |= paths
    return result


@pytest.mark.parametrize("mode", ["walk", "shell"])
def test_paths_match_brute_force(mode: str) -> None:
    edge_index = random_graph(9, 0.35, seed=3)
    found = khop_paths(edge_index, 9, hops=3, mode=mode)
    assert [p.size(0) for p in found] == [3, 4]
    got = {tuple(col) for p in found for col in p.t().tolist()}
    assert sum(p.size(1) for p in found) == len(got)  # no duplicates
    assert got == brute_force_paths(edge_index, 9, 3, mode)


def make_inputs(algebra: CliffordAlgebra, num_nodes: int, channels: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    edge_index = random_graph(num_nodes, 0.4, seed)
    x = torch.randn(num_nodes, channels, algebra.num_blades, dtype=torch.float64, generator=generator)
    pos = torch.randn(num_nodes, algebra.dim, dtype=torch.float64, generator=generator)
    edge_mv = torch.randn(edge_index.size(1), 2, algebra.num_blades, dtype=torch.float64, generator=generator)
    return x, pos, edge_index, edge_mv, generator


@pytest.mark.parametrize("hops", [1, 2, 3])
@pytest.mark.parametrize("reflect", [False, True])
def test_cgconv_is_o3_equivariant_and_translation_invariant(hops: int, reflect: bool) -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    conv = CGConv(3, 4, algebra, hops=hops, edge_channels=2, hidden_channels=6).double()
    x, pos, edge_index, edge_mv, generator = make_inputs(algebra, 8, 3, seed=hops)
    paths = khop_paths(edge_index, 8, hops)
    assert all(p.size(1) > 0 for p in paths)
    out = conv(x, edge_index, pos=pos, edge_attr=edge_mv, paths=paths)
    rotation = random_orthogonal(3, generator, reflect)
    versor = algebra.versor_from_orthogonal(rotation)
    shift = torch.randn(3, dtype=torch.float64, generator=generator)
    moved = conv(
        algebra.versor_action(versor, x),
        edge_index,
        pos=pos @ rotation.T + shift,
        edge_attr=algebra.versor_action(versor, edge_mv),
        paths=paths,
    )
    torch.testing.assert_close(moved, algebra.versor_action(versor, out), atol=1e-5, rtol=1e-5)
    # positions do enter: moving one node changes the output
    pos_changed = pos.clone()
    pos_changed[0] += 0.5
    assert not torch.allclose(conv(x, edge_index, pos=pos_changed, edge_attr=edge_mv, paths=paths), out)


def test_cgconv_scalar_edge_attributes_and_on_the_fly_paths() -> None:
    algebra = CliffordAlgebra((1.0, 1.0)).double()
    conv = CGConv(2, 2, algebra, hops=2, edge_channels=1).double()
    x, pos, edge_index, _, _ = make_inputs(algebra, 6, 2, seed=5)
    edge_attr = torch.randn(edge_index.size(1), 1, dtype=torch.float64)
    given = conv(x, edge_index, pos=pos, edge_attr=edge_attr, paths=khop_paths(edge_index, 6, 2))
    torch.testing.assert_close(conv(x, edge_index, pos=pos, edge_attr=edge_attr), given)


def star(angles: list[tuple[float, float]]) -> torch.Tensor:
    """Unit arms from a centre at the origin, given (polar, azimuth) angles."""
    arms = [[math.sin(t) * math.cos(p), math.sin(t) * math.sin(p), math.cos(t)] for t, p in angles]
    return torch.tensor([[0.0, 0.0, 0.0], *arms], dtype=torch.float64)


def test_two_hop_messages_separate_graphs_that_one_hop_messages_cannot() -> None:
    """A square-planar and a tetrahedral 4-star: every arm has length 1 and the arm vectors sum to zero in
    both, so 1-hop messages (functions of one relative vector, then summed) agree at every node and layer;
    the 2-hop paths leaf <- centre <- leaf see the angles between arms (r1 r2 = -cos + bivector)."""
    planar = star([(math.pi / 2, k * math.pi / 2) for k in range(4)])
    tetra_polar = math.acos(-1 / 3)
    tetrahedral = star([(0.0, 0.0)] + [(tetra_polar, k * 2 * math.pi / 3) for k in range(3)])
    centre, leaves = torch.zeros(4, dtype=torch.long), torch.arange(1, 5)
    edge_index = torch.cat([torch.stack([centre, leaves]), torch.stack([leaves, centre])], dim=1)
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    x = algebra.embed_scalar(torch.ones(5, 1, dtype=torch.float64))

    def invariants(hops: int, pos: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        convs = [CGConv(1 if i == 0 else 4, 4, algebra, hops=hops).double() for i in range(2)]
        h = convs[1](convs[0](x, edge_index, pos=pos), edge_index, pos=pos)
        return torch.cat([h[..., 0], algebra.grade_quadratic_forms(h)[..., 1:].flatten(1)], dim=1)

    torch.testing.assert_close(invariants(1, planar), invariants(1, tetrahedral), atol=1e-10, rtol=0)
    gap = (invariants(2, planar) - invariants(2, tetrahedral)).abs().max()
    assert gap > 1e-3


def test_batched_paths_give_the_per_graph_outputs() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0)).double()
    conv = CGConv(2, 3, algebra, hops=3, edge_channels=1).double()
    transform = KHopPaths(hops=3)
    graphs = []
    for seed, n in enumerate([5, 7, 6]):
        x, pos, edge_index, _, _ = make_inputs(algebra, n, 2, seed=seed + 20)
        graphs.append(
            transform(Data(x=x, pos=pos, edge_index=edge_index, edge_attr=torch.rand(edge_index.size(1), 1)))
        )
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert batch.path3_index.size(1) == sum(g.path3_index.size(1) for g in graphs)

    def run(g: Data) -> torch.Tensor:
        return conv(g.x, g.edge_index, g.pos, g.edge_attr.double(), [g.path2_index, g.path3_index])

    torch.testing.assert_close(run(batch), torch.cat([run(g) for g in graphs]))


def test_bad_inputs_raise_value_errors() -> None:
    algebra = CliffordAlgebra((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="hops >= 1"):
        CGConv(2, 2, algebra, hops=0)
    with pytest.raises(ValueError, match="hops >= 1"):
        KHopPaths(hops=0)
    with pytest.raises(ValueError, match="mode in"):
        KHopPaths(hops=2, mode="tree")
    conv = CGConv(2, 2, algebra, hops=2)
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    with pytest.raises(ValueError, match=r"\[num_nodes, 2, 8\]"):
        conv(torch.randn(3, 2, 4), edge_index)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        conv(torch.randn(3, 2, 8), edge_index + 1)
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        conv(torch.randn(3, 2, 8), edge_index, pos=torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"path2_index of shape \[3, num_paths\]"):
        conv(torch.randn(3, 2, 8), edge_index, paths=[torch.zeros(2, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"path2_index entries in \[0, 3\)"):
        check_paths(edge_index, [torch.tensor([[0], [5], [1]])], 3)
    with pytest.raises(IndexError):  # forward does not read index values (no device sync); torch's own error
        conv(torch.randn(3, 2, 8), edge_index, paths=[torch.tensor([[0], [5], [1]])])
    with pytest.raises(ValueError, match=r"edge_index entries in \[0, 3\)"):
        KHopPaths(hops=2)(Data(edge_index=edge_index + 1, num_nodes=3))
    with pytest.raises(ValueError, match="edge_channels=0"):
        conv(torch.randn(3, 2, 8), edge_index, edge_attr=torch.randn(4, 1))
    with pytest.raises(ValueError, match=r"\[4, 1\]"):
        CGConv(2, 2, algebra, edge_channels=1)(torch.randn(3, 2, 8), edge_index, edge_attr=torch.randn(4, 3))


def test_path_count_grows_linearly_with_graph_size() -> None:
    """On a ring with chords (constant degree) the number of paths is proportional to the number of nodes."""
    counts = []
    for n in (50, 100, 200):
        ring = [(i, (i + d) % n) for i, d in itertools.product(range(n), (1, 2))]
        edge_index = torch.tensor(ring).t()
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        counts.append([p.size(1) / n for p in khop_paths(edge_index, n, 3)])
    assert counts[0] == counts[1] == counts[2]
