"""MAGEP-NFN term by term: each polynomial term transforms like its slot and each part of the layer is
equivariant on its own, at scale 1e3 in float64; the products equal a direct evaluation."""

import pytest
import torch

from nfn_ext import MAGEPLinear, MonomialGroupElement, WeightSpace, random_group_element
from nfn_ext.magep import bw_term, weight_products, ww_term

from .helpers import make_cnn, make_mlp, max_abs, max_diff, random_space

CASES = [("mlp", "relu"), ("mlp", "tanh"), ("mlp2", "tanh"), ("cnn", "relu")]


def _space(kind: str, act: str, channels: int = 2) -> WeightSpace:
    net = {
        "mlp": lambda: make_mlp(act, (3, 4, 5, 4, 2)),
        "mlp2": lambda: make_mlp(act, (3, 4, 2)),
        "cnn": lambda: make_cnn(act),
    }[kind]()
    return random_space(net, batch=3, channels=channels)


def _group(ws: WeightSpace) -> MonomialGroupElement:
    return random_group_element(ws, scale_range=1e3 if ws.spec.group == "scale" else None)


def _matrices(g: MonomialGroupElement, dims: tuple[int, ...]) -> list[torch.Tensor]:
    """``G_l = D_l P_l`` as ``(B, n_l, n_l)`` matrices (identity for the input and output layers)."""
    B = g.batch_size
    mats = [torch.eye(dims[0], dtype=torch.float64).expand(B, -1, -1)]
    for perm, scale in zip(g.permutations, g.scales, strict=True):
        p = torch.nn.functional.one_hot(perm, perm.shape[1]).double()  # P[j, pi(j)] = 1
        mats.append(scale[:, :, None] * p)
    mats.append(torch.eye(dims[-1], dtype=torch.float64).expand(B, -1, -1))
    return mats


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize(("kind", "act"), CASES)
def test_polynomial_terms_transform_like_their_slot_at_scale_1e3(kind: str, act: str) -> None:
    ws = _space(kind, act)
    g = _group(ws)
    G = [m[:, None] for m in _matrices(g, ws.spec.dims)]  # (B, 1, n, n)
    L, C, n0, nL = ws.num_layers, ws.channels, ws.spec.dims[0], ws.spec.dims[-1]
    fw, bw, beta = weight_products(ws)
    fw2, bw2, beta2 = weight_products(g.act(ws))
    psi_ww = torch.randn(C, n0, nL, dtype=torch.float64)
    psi_bw = torch.randn(C, nL, dtype=torch.float64)
    for s in range(1, L + 1):
        b, b2 = ws.biases[s - 1], g.act(ws).biases[s - 1]
        # beta^(s) and W_(s,0) (rows move with g_s)
        assert _rel(beta2[s - 1], (G[s] @ beta[s - 1].unsqueeze(-1)).squeeze(-1)) < 1e-9
        assert _rel(fw2[s - 1], G[s] @ fw[s - 1]) < 1e-9
        for t in range(s + 1 if s < L else s):
            # [WW]_(s,t), [bW]_(s,t) -> G_s X G_t^{-1}; for t = s they have an invariant trace
            for term, term2 in [
                (ww_term(fw[s - 1], psi_ww, bw[t]), ww_term(fw2[s - 1], psi_ww, bw2[t])),
                (bw_term(b, psi_bw, bw[t]), bw_term(b2, psi_bw, bw2[t])),
            ]:
                assert _rel(term2, G[s] @ term @ torch.linalg.inv(G[t])) < 1e-9
                if t == s:
                    tr, tr2 = (
                        term.diagonal(dim1=-2, dim2=-1).sum(-1),
                        term2.diagonal(dim1=-2, dim2=-1).sum(-1),
                    )
                    assert _rel(tr2, tr) < 1e-9


def test_products_equal_a_direct_evaluation() -> None:
    ws = _space("mlp", "relu")
    fw, bw, beta = weight_products(ws)
    L, C = ws.num_layers, ws.channels
    psi = torch.randn(C, ws.spec.dims[0], ws.spec.dims[-1], dtype=torch.float64)
    psi_b = torch.randn(C, ws.spec.dims[-1], dtype=torch.float64)
    for i in range(ws.batch_size):
        for c in range(C):
            W = [w[i, c] for w in ws.weights]
            bias = [b[i, c] for b in ws.biases]
            for s in range(1, L + 1):
                W_s0 = torch.linalg.multi_dot(W[:s][::-1]) if s > 1 else W[0]
                torch.testing.assert_close(fw[s - 1][i, c], W_s0)
                direct_beta = (
                    sum(
                        (
                            torch.linalg.multi_dot(
                                [*W[t:s][::-1], torch.eye(len(bias[t - 1]), dtype=torch.float64)]
                            )
                            @ bias[t - 1]
                        )
                        for t in range(1, s)
                    )
                    + bias[s - 1]
                )
                torch.testing.assert_close(beta[s - 1][i, c], direct_beta)
                for t in range(s):
                    W_Lt = torch.linalg.multi_dot(
                        [*W[t:][::-1], torch.eye(W[t].shape[1], dtype=torch.float64)]
                    )
                    torch.testing.assert_close(bw[t][i, c], W_Lt)
                    torch.testing.assert_close(ww_term(fw[s - 1], psi, bw[t])[i, c], W_s0 @ psi[c] @ W_Lt)
                    torch.testing.assert_close(
                        bw_term(ws.biases[s - 1], psi_b, bw[t])[i, c],
                        torch.outer(bias[s - 1], psi_b[c] @ W_Lt),
                    )


def _parts(layer: MAGEPLinear) -> list[str]:
    names = ["mixing", "last_bias_products", "last_bias_traces"]
    return names + [f"hidden_bias_products.{i}" for i in range(len(layer.hidden_bias_products))]


@pytest.mark.parametrize(("kind", "act"), CASES)
def test_each_part_of_the_layer_is_equivariant_at_scale_1e3(kind: str, act: str) -> None:
    ws = _space(kind, act)
    g = _group(ws)
    base = MAGEPLinear(ws.spec, 2, 3).double()
    for part in _parts(base):
        layer = MAGEPLinear(ws.spec, 2, 3).double()
        layer.load_state_dict(base.state_dict())
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if not name.startswith(part + "."):
                    p.zero_()
        out = layer(ws)
        expected = g.act(out)
        assert max_abs(out) > 1e-6, part  # the part does something
        assert max_diff(layer(g.act(ws)), expected) <= 1e-9 * max(1.0, max_abs(expected)), part


def test_psi_is_one_per_pair_and_channel_and_the_traces_reach_the_last_bias() -> None:
    ws = _space("mlp", "relu")
    layer = MAGEPLinear(ws.spec, 2, 3).double()
    L, n0, nL = ws.num_layers, ws.spec.dims[0], ws.spec.dims[-1]
    assert layer.psi_ww_weight.shape == (L, 2, n0, nL) and layer.psi_bw_trace.shape == (L - 1, 2, nL)
    assert not torch.equal(layer.psi_ww_weight[0, 0], layer.psi_ww_weight[0, 1])  # per channel
    assert not torch.equal(layer.psi_ww_weight[0], layer.psi_ww_weight[1])  # per (s, t)
    before = layer(ws).biases[-1]
    with torch.no_grad():
        layer.last_bias_traces.weight.add_(1.0)
    assert (layer(ws).biases[-1] - before).abs().max() > 1e-6
