"""Transformer-NFN layers: equivariance / invariance under the attention group, and counter-tests."""

import pytest
import torch
from torch import nn

from nfn_ext import TransformerNFN, TransformerWeightSpace, random_group_element
from nfn_ext.transformer_nfn import (
    TransformerInvariantPool,
    TransformerLinear,
    TransformerReLU,
    head_invariants,
)
from tests.nfn_ext.transformer_models import make


def _space(family: str = "small_vit", batch: int = 3, channels: int = 2) -> TransformerWeightSpace:
    base = TransformerWeightSpace.from_module(make(family)[0])
    gen = torch.Generator().manual_seed(0)
    return base.map(lambda t: torch.randn(batch, channels, *t.shape[2:], generator=gen, dtype=torch.float64))


def _rel_diff(a: TransformerWeightSpace, b: TransformerWeightSpace) -> float:
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(
        a.tensors.values(), b.tensors.values(), strict=True) if y.numel())  # fmt: skip


@pytest.mark.parametrize(("scale", "tol"), [(2.0, 1e-9), (1e2, 1e-9), (1e3, 1e-7)])
@pytest.mark.parametrize("family", ["small_vit", "bert", "torch_mha"])
def test_linear_layer_is_equivariant(family, scale, tol):
    """layer(g.ws) == g.layer(ws), including ill-conditioned M, N (condition numbers up to 1e6)."""
    ws = _space(family)
    layer = TransformerLinear(ws.spec, 2, 3).double()
    with torch.no_grad():
        for p in layer.bias.values():  # zero-initialised: exercise them
            p.normal_()
    g = random_group_element(ws, scale_range=scale, generator=torch.Generator().manual_seed(1))
    assert _rel_diff(layer(g.act(ws)), g.act(layer(ws))) < tol
    relu = TransformerReLU()
    assert _rel_diff(relu(g.act(ws)), g.act(relu(ws))) < 1e-12


def test_the_checker_catches_a_nonlinearity_on_attention_features():
    """ReLU on W_Q is not GL-equivariant: the same check must fail for it."""
    ws = _space()
    g = random_group_element(ws, generator=torch.Generator().manual_seed(1))

    def broken(x: TransformerWeightSpace) -> TransformerWeightSpace:
        return x.map(torch.relu)

    assert _rel_diff(broken(g.act(ws)), g.act(broken(ws))) > 1e-2


@pytest.mark.parametrize("scale", [2.0, 1e3])
def test_nfn_is_invariant(scale):
    ws = _space(channels=1, batch=4)
    model = TransformerNFN(ws.spec, hidden_channels=(3, 2)).double()
    g = random_group_element(ws, scale_range=scale, generator=torch.Generator().manual_seed(2))
    out, moved = model(ws), model(g.act(ws))
    assert out.shape == (4, 1)
    assert torch.allclose(moved, out, rtol=1e-7, atol=1e-9)


def test_nfn_is_invariant_on_real_models_and_distinguishes_them():
    models = [make("timm", seed=s)[0] for s in range(3)]
    ws = TransformerWeightSpace.from_modules(models)
    model = TransformerNFN(ws.spec).double()
    g = random_group_element(ws, scale_range=10.0, generator=torch.Generator().manual_seed(0))
    out = model(ws)
    assert torch.allclose(model(g.act(ws)), out, rtol=1e-7, atol=1e-9)
    assert (out - out.mean()).abs().max() > 1e-4  # not a constant function


def test_a_flat_mlp_on_the_weights_is_not_invariant():
    ws = _space(channels=1, batch=4)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(ws.spec.num_params, 32), nn.ReLU(), nn.Linear(32, 1)).double()
    g = random_group_element(ws, generator=torch.Generator().manual_seed(2))
    out, moved = mlp(ws.flatten()[:, 0]), mlp(g.act(ws).flatten()[:, 0])
    assert (out - moved).abs().max() > 1e-2 * out.abs().max()


def test_head_invariants_match_a_direct_evaluation():
    ws = _space(channels=1, batch=1)
    s, t = head_invariants(ws)
    for l in range(ws.spec.num_blocks):
        for h in range(ws.spec.num_heads):
            wq, wk = ws.wq[0, 0, l, h], ws.wk[0, 0, l, h]
            bq, bk = ws.bq[0, 0, l, h], ws.bk[0, 0, l, h]
            assert torch.allclose(s[0, 0, l, h, :-1, :-1], wq @ wk.T)
            assert torch.allclose(s[0, 0, l, h, -1, :-1], wk @ bq)
            assert torch.allclose(s[0, 0, l, h, -1, -1], bq @ bk)
            assert torch.allclose(t[0, 0, l, h, :-1], ws.wv[0, 0, l, h] @ ws.wo[0, 0, l, h])
            assert torch.allclose(t[0, 0, l, h, -1], ws.bv[0, 0, l, h] @ ws.wo[0, 0, l, h])


def test_summary_terms_match_a_direct_evaluation():
    """Only the summary terms and the biases on: the MLP features, b_O and b_B equal the formula evaluated
    block by block and head by head (every block's neuron means, b_O, b_B and head means of S_h, T_h)."""
    ws = _space(channels=1, batch=2)
    layer = TransformerLinear(ws.spec, 1, 1).double()
    with torch.no_grad():
        for name, p in layer.mix.items():
            p.fill_(1.0 if name.endswith(("_glob", "_att")) else 0.0)
        for p in layer.bias.values():
            p.normal_()
    out = layer(ws)
    L, H, fx = ws.spec.num_blocks, ws.spec.num_heads, layer.fixed
    for b in range(2):
        u, z = [], []
        for m in range(L):
            a = torch.cat([ws.wa[b, 0, m], ws.ba[b, 0, m][None]])
            u.append(torch.cat([a.mean(1), ws.wb[b, 0, m].mean(0), ws.bo[b, 0, m], ws.bb[b, 0, m]]))
            s, t = 0.0, 0.0
            for h in range(H):
                q = torch.cat([ws.wq[b, 0, m, h], ws.bq[b, 0, m, h][None]])
                k = torch.cat([ws.wk[b, 0, m, h], ws.bk[b, 0, m, h][None]])
                v = torch.cat([ws.wv[b, 0, m, h], ws.bv[b, 0, m, h][None]])
                s, t = s + q @ k.T / H, t + v @ ws.wo[b, 0, m, h] / H
            z.append(torch.cat([s.flatten(), t.flatten()]))
        for l in range(L):
            shared = {
                n: layer.bias[n][0, l] + sum(fx[f"{n}_glob"][l, :, m] @ u[m] + fx[f"{n}_att"][l, :, m] @ z[m]
                                             for m in range(L))
                for n in ("a", "b", "bo", "bb")
            }  # fmt: skip
            for j in range(ws.spec.d_mlp):
                assert torch.allclose(out.wa[b, 0, l, :, j], shared["a"][:-1])
                assert torch.allclose(out.ba[b, 0, l, j], shared["a"][-1])
                assert torch.allclose(out.wb[b, 0, l, j], shared["b"])
            assert torch.allclose(out.bo[b, 0, l], shared["bo"])
            assert torch.allclose(out.bb[b, 0, l], shared["bb"])
            assert out.wq[b, 0, l].abs().max() == 0 and out.wo[b, 0, l].abs().max() == 0


def test_attention_to_mlp_off_drops_exactly_those_terms():
    ws = _space(batch=2)
    on, off = TransformerLinear(ws.spec, 2, 3).double(), TransformerLinear(ws.spec, 2, 3, False).double()
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra and all(name.endswith("_att") for name in extra)
    on.load_state_dict(off.state_dict(), strict=False)
    with torch.no_grad():
        for name in ("a_att", "b_att", "bo_att", "bb_att"):
            on.mix[name].zero_()
    assert _rel_diff(on(ws), off(ws)) == 0
    on.reset_parameters()
    assert _rel_diff(on(ws), off(ws)) > 1e-3


def test_every_parameter_moves_in_training():
    """A few Adam steps on a regression target: every parameter tensor gets a nonzero gradient and moves, and
    every entry of every term of the equivariant layer moves (no dead term, no detached path). Entries behind
    a ReLU (the biases of ``b_O``, hidden units of the MLP head) may be dead for all 8 inputs, so only whole
    tensors are required to move there."""
    ws = _space(channels=1, batch=8)
    target = torch.randn(8, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.manual_seed(0)
    model = TransformerNFN(ws.spec, hidden_channels=(3,), head_hidden=16).double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(5):
        opt.zero_grad()
        (model(ws) - target).square().mean().backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and p.grad.abs().max() > 0, f"{name}: zero gradient"
        opt.step()
    terms = 0
    for name, p in model.named_parameters():
        moved = p.detach() != before[name]
        assert moved.any(), f"{name} did not move"
        if ".mix." in name or ".fixed." in name:
            terms += 1
            assert moved.all(), f"{name}: {(~moved).sum()} entries did not move"
    assert terms == len(model.layers[0].mix) + len(model.layers[0].fixed)


def test_pool_size_and_a_bare_attention_layer():
    ws = _space("torch_mha", channels=2)
    pool = TransformerInvariantPool(ws.spec, 2)
    feats = pool(ws)
    assert feats.shape == (3, pool.num_features)
    assert torch.isfinite(feats).all()
    assert torch.isfinite(TransformerNFN(ws.spec, in_channels=2).double()(ws)).all()


def test_every_parameter_learns_and_reset_parameters_reinitialises():
    ws = _space(channels=1, batch=4)
    model = TransformerNFN(ws.spec, hidden_channels=(3,)).double()
    model(ws).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    before = [p.detach().clone() for p in model.parameters()]
    model.reset_parameters()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert sum(changed) >= len(changed) - 8  # all but zero-initialised biases and LayerNorm


def test_wrong_input_is_refused():
    ws = _space(channels=2)
    with pytest.raises(ValueError, match="channels"):
        TransformerLinear(ws.spec, 3, 3).double()(ws)


@pytest.mark.parametrize("raw_features", [False, True])
def test_io_weights_enter_the_prediction_and_keep_it_invariant(raw_features):
    """The embedding/classifier weights (untouched by the group) change the output, and the output is still
    invariant when only the encoder blocks move; a model built for them refuses to run without them. Through
    the linear map, or (``raw_features``) through the QuantileNorm."""
    ws = _space(channels=1, batch=4)
    io = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = TransformerNFN(ws.spec, hidden_channels=(2,), io_features=6, raw_features=raw_features).double()
    g = random_group_element(ws, scale_range=1e3, generator=torch.Generator().manual_seed(2))
    out = model(ws, io)
    assert torch.allclose(model(g.act(ws), io), out, rtol=1e-7, atol=1e-9)
    assert (model(ws, io.flip(0)) - out).abs().max() > 1e-4
    if not raw_features:
        out.square().sum().backward()
        assert model.io.weight.grad.abs().min() > 0  # every io weight reaches the output
    with pytest.raises(ValueError, match="io weights"):
        model(ws)
    with pytest.raises(ValueError, match="io weights"):
        model(ws, io[:, :5])
