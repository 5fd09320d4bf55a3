"""Edge cases users hit: empty hop orders and graphs, non-equivariant aggregations, self-loops, stale paths,
message direction, and one path enumeration per CGEGNN forward."""

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.nn.aggr import MaxAggregation, MeanAggregation, SumAggregation
from torch_geometric.transforms import Compose, ToUndirected

import pyg_clifford.conv
import pyg_clifford.model
from pyg_clifford import CGEGNN, CGConv, CliffordAlgebra, KHopPaths, khop_paths
from pyg_clifford.testing import assert_equivariant
from pyg_clifford.transforms import check_paths


def algebra3() -> CliffordAlgebra:
    return CliffordAlgebra((1.0, 1.0, 1.0)).double()


def test_a_hop_order_without_paths_gives_a_zero_aggregate() -> None:
    """One bond has no non-backtracking 2-paths: the layer runs and equals a layer whose 2-hop aggregate is
    zero (its update MLP fed zeros in the 2-hop slot)."""
    algebra = algebra3()
    conv = CGConv(2, 4, algebra, hops=2).double()
    x = torch.randn(2, 2, 8, dtype=torch.float64)
    pos = torch.randn(2, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    assert khop_paths(edge_index, 2, 2)[0].shape == (3, 0)
    out = conv(x, edge_index, pos=pos)
    one_hop = conv.propagate(
        edge_index, inputs=conv._path_inputs(x, pos, edge_index.flip(0), None), order=1, size=(2, 2)
    )
    expected = conv.update_mlp(torch.cat([x, one_hop, torch.zeros_like(one_hop)], dim=1))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_an_empty_edge_index_gives_zero_aggregates(hops: int) -> None:
    algebra = algebra3()
    conv = CGConv(2, 3, algebra, hops=hops, hidden_channels=4).double()
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = conv(x, empty, pos=torch.randn(5, 3, dtype=torch.float64))
    zeros = torch.zeros(5, 4 * hops, 8, dtype=torch.float64)
    torch.testing.assert_close(out, conv.update_mlp(torch.cat([x, zeros], dim=1)))
    assert conv(x[:0], empty).shape == (0, 3, 8)  # and an empty graph


def test_shell_paths_on_complete_graphs_are_empty_and_the_model_runs() -> None:
    """Complete graphs have no shell-2 paths (every pair is at distance 1)."""
    edge_index = torch.stack(torch.nonzero(~torch.eye(5, dtype=torch.bool)).t().unbind())
    assert khop_paths(edge_index, 5, 2, mode="shell")[0].numel() == 0
    model = CGEGNN(1, 1, hidden_channels=4, num_layers=2, hops=2, path_mode="shell").double()
    pos, vel = torch.randn(2, 5, 3, dtype=torch.float64)
    charge = torch.randn(5, 1, dtype=torch.float64)
    pred, _, _ = model(pos, edge_index, vel, charge, charge[edge_index[0]] * charge[edge_index[1]])
    assert torch.isfinite(pred).all()


@pytest.mark.parametrize("aggr", ["max", "min", "std", "var", "softmax", "median", MaxAggregation()])
def test_aggregations_that_break_equivariance_are_rejected(aggr) -> None:
    with pytest.raises(ValueError, match="commutes with the Clifford-group action"):
        CGConv(2, 2, algebra3(), aggr=aggr)
    with pytest.raises(ValueError, match="commutes with the Clifford-group action"):
        CGEGNN(aggr=aggr)


@pytest.mark.parametrize("aggr", ["sum", "add", "mean", SumAggregation(), MeanAggregation()])
def test_accepted_aggregations_are_equivariant(aggr) -> None:
    algebra = algebra3()
    conv = CGConv(2, 3, algebra, hops=2, aggr=aggr).double()
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 0], [1, 0, 2, 1, 3, 2, 0, 3]])
    x = torch.randn(4, 2, 8, dtype=torch.float64)
    pos = torch.randn(4, 3, dtype=torch.float64)
    paths = khop_paths(edge_index, 4, 2)
    assert_equivariant(
        lambda x, pos: conv(x, edge_index, pos=pos, paths=paths),
        algebra,
        [x, pos],
        ["multivector", "position"],
        generator=torch.Generator().manual_seed(0),
        atol=1e-9,
        rtol=1e-9,
    )


def test_self_loops_are_dropped_from_path_enumeration() -> None:
    edge_index = torch.tensor([[0, 1, 1, 2, 0, 1], [1, 0, 2, 1, 0, 1]])  # a 3-path plus loops at 0 and 1
    with_loops = khop_paths(edge_index, 3, 3)
    without = khop_paths(edge_index[:, :4], 3, 3)
    for a, b in zip(with_loops, without, strict=True):
        torch.testing.assert_close(a, b)
        assert not (a[1:] == a[:-1]).any()  # no step i <- i


def test_khop_paths_must_be_the_last_transform() -> None:
    """KHopPaths last: every path step is an edge of the final graph. A transform that changes the graph
    after it leaves stale paths, which check_paths reports."""
    directed = Data(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]), num_nodes=4)
    good = Compose([ToUndirected(), KHopPaths(hops=3)])(directed.clone())
    check_paths(good.edge_index, [good.path2_index, good.path3_index], 4)
    assert good.path2_index.size(1) == 8  # both directions around the 4-cycle
    stale = Compose([KHopPaths(hops=2), ToUndirected()])(directed.clone())  # paths of the directed cycle only
    check_paths(stale.edge_index, [stale.path2_index], 4)  # still valid steps (a subgraph of the edges) ...
    assert stale.path2_index.size(1) < good.path2_index.size(1)  # ... but missing paths
    sub = good.subgraph(torch.tensor([0, 1, 2]))  # node 3 removed after KHopPaths
    with pytest.raises(ValueError, match="path2_index"):  # indices of removed nodes, or steps on no edge
        check_paths(sub.edge_index, [sub.path2_index], sub.num_nodes)
    dropped = good.clone()
    dropped.edge_index = dropped.edge_index[:, 1:]  # an edge removed after KHopPaths
    with pytest.raises(ValueError, match="stale"):
        check_paths(dropped.edge_index, [dropped.path2_index], 4)


def directed_chain() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0 -> 1 -> 2 (source row 0, target row 1): node 2 hears from 1, node 1 from 0, node 0 from no one."""
    edge_index = torch.tensor([[0, 1], [1, 2]])
    x = torch.randn(3, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pos = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return edge_index, x, pos


def test_messages_flow_from_source_to_target_on_a_directed_graph() -> None:
    r"""Direct evaluation of h'_i = psi([h_i, a1_i, a2_i]) with a1_i = phi_1([h_i - h_j, r_ij]) over edges
    j -> i, r_ij = x_i - x_j, and a2_i = phi_2([h_i - h_j, h_j - h_l, r1, r1 r2, r2]) over paths
    i <- j <- l. Swapping source and target anywhere changes the result."""
    algebra = algebra3()
    conv = CGConv(2, 3, algebra, hops=2, hidden_channels=4).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(0.3 * torch.randn_like(p))
    edge_index, x, pos = directed_chain()
    v = algebra.embed_vector

    def one(i: int, j: int) -> torch.Tensor:
        return conv.message_mlps[0](torch.cat([x[i] - x[j], v(pos[i] - pos[j])[None]])[None])[0]

    r1, r2 = v(pos[2] - pos[1]), v(pos[1] - pos[0])
    r12 = algebra.geometric_product(r1, r2)
    inputs2 = torch.cat([x[2] - x[1], x[1] - x[0], r1[None], r12[None], r2[None]])
    zero = torch.zeros(4, 8, dtype=torch.float64)
    aggregates = [
        torch.cat([zero, zero]),
        torch.cat([one(1, 0), zero]),
        torch.cat([one(2, 1), conv.message_mlps[1](inputs2[None])[0]]),
    ]
    expected = conv.update_mlp(torch.stack([torch.cat([x[i], aggregates[i]]) for i in range(3)]))
    torch.testing.assert_close(conv(x, edge_index, pos=pos), expected)
    assert not torch.allclose(conv(x, edge_index.flip(0), pos=pos), expected)


def test_cgegnn_enumerates_paths_once_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[2])
        return khop_paths(*args, **kwargs)

    monkeypatch.setattr(pyg_clifford.model, "khop_paths", counting)
    monkeypatch.setattr(pyg_clifford.conv, "khop_paths", counting)
    model = CGEGNN(1, 1, hidden_channels=4, num_layers=3, hops=3).double()
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    pos, vel = torch.randn(2, 4, 3, dtype=torch.float64)
    charge = torch.randn(4, 1, dtype=torch.float64)
    model(pos, edge_index, vel, charge, charge[edge_index[0]] * charge[edge_index[1]])
    assert calls == [3]
