"""Feature normalisation of Transformer-NFN: QuantileNorm against a direct evaluation, and invariance of
the models that use it (fitted on training models) under the attention group, ill-conditioned elements
included."""

import numpy as np
import pytest
import torch

from nfn_ext import TransformerNFN, TransformerWeightSpace, random_group_element
from nfn_ext.transformer_nfn import PiecewiseLinearEncoding, QuantileNorm, TransformerInvariantPool
from nfn_ext.transformer_predictor import fit
from tests.nfn_ext.transformer_models import make


def _space(batch: int = 6, seed: int = 0) -> TransformerWeightSpace:
    """Random weights of the SmallViT shape whose scales spread over two orders of magnitude per model."""
    base = TransformerWeightSpace.from_module(make("small_vit")[0])
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1, batch, dtype=torch.float64)

    def draw(t: torch.Tensor) -> torch.Tensor:
        x = torch.randn(batch, 1, *t.shape[2:], generator=gen, dtype=torch.float64)
        return x * scale.view(-1, *[1] * (x.ndim - 1))

    return base.map(draw)


def test_quantile_norm_matches_a_piecewise_linear_interpolation():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(500, 3, generator=gen, dtype=torch.float64).exp() * torch.tensor([1.0, 1e3, 1e-3])
    norm = QuantileNorm(3, num_knots=16).double().fit(train)
    levels = (np.arange(16) + 0.5) / 16
    from scipy.stats import norm as gaussian

    scores = gaussian.ppf(levels)
    for f in range(3):
        assert np.allclose(norm.knots[f].numpy(), np.quantile(train[:, f].numpy(), levels))
    x = torch.cat([train[:50], train[:2] * 1e3, train[:2] * -1.0])  # inside, above and below the range
    out = norm(x)
    for f in range(3):
        direct = np.interp(x[:, f].numpy(), norm.knots[f].numpy(), scores)  # clips like QuantileNorm
        assert np.allclose(out[:, f].numpy(), direct, atol=1e-12)
    assert out.min() == pytest.approx(scores[0]) and out.max() == pytest.approx(scores[-1])
    # monotone per feature, so the ranks of each feature are kept
    order = x[:, 1].argsort()
    assert (out[order, 1].diff() >= 0).all()


def test_unfitted_quantile_norm_is_the_identity_in_its_range_and_refuses_other_shapes():
    norm = QuantileNorm(2, num_knots=64).double()
    x = torch.linspace(-2.0, 2.0, 11, dtype=torch.float64)[:, None].expand(-1, 2)
    assert torch.allclose(norm(x), x, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        norm.fit(torch.zeros(5, 3))


@pytest.mark.parametrize(
    "feature_norm, spectral, bins",
    [("layer", False, 0), ("batch", False, 0), ("layer", True, 0), ("layer", True, 8)],
)
@pytest.mark.parametrize("scale", [2.0, 1e3])
def test_nfn_with_fitted_raw_features_is_invariant(feature_norm, spectral, bins, scale):
    """raw_features (QuantileNorm fitted on other models, with or without the singular values and the
    piecewise-linear encoding) and either feature norm: the output is invariant, including condition numbers
    up to 1e6, in eval mode and (BatchNorm: batch statistics) in train mode."""
    ws, io = _space(), torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fitted_on = _space(batch=20, seed=2)
    model = TransformerNFN(
        ws.spec, hidden_channels=(2,), io_features=5, feature_norm=feature_norm, raw_features=True,
        raw_spectral=spectral, raw_bins=bins,
    ).double()  # fmt: skip
    model.fit_feature_norm(fitted_on, torch.randn(20, 5, generator=torch.Generator().manual_seed(3)))
    g = random_group_element(ws, scale_range=scale, generator=torch.Generator().manual_seed(4))
    moved = g.act(ws)
    for train_mode in (False, True):
        model.train(train_mode)
        out = model(ws, io)
        assert torch.allclose(model(moved, io), out, rtol=1e-6, atol=1e-8)
        assert (out - out.mean()).abs().max() > 1e-4  # not a constant function


def test_raw_features_are_the_quantile_normalised_pool_of_the_input():
    """The head reads [norm(learned pool), QuantileNorm([pool(ws), io])]: the raw branch against a direct
    evaluation, and fitting the QuantileNorm changes the prediction."""
    ws, io = _space(), torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = TransformerNFN(ws.spec, hidden_channels=(2,), io_features=5, raw_features=True).double().eval()
    direct = torch.cat([TransformerInvariantPool(ws.spec, 1)(ws), io], dim=-1)
    assert torch.equal(model.raw(ws, io), direct)
    before = model(ws, io)
    model.fit_feature_norm(ws, io)
    assert torch.allclose(model.raw_norm(model.raw(ws, io)), model.raw_norm.fit(direct)(direct))
    assert (model(ws, io) - before).abs().max() > 1e-4
    assert model.io is None  # io goes through the QuantileNorm instead of the linear map


def test_batch_norm_model_trains_with_a_final_batch_of_one_and_every_parameter_learns():
    ws = _space(batch=9)
    acc = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    torch.manual_seed(0)
    model = TransformerNFN(ws.spec, hidden_channels=(2,), head_hidden=8, feature_norm="batch",
                           raw_features=True).double()  # fmt: skip
    model.fit_feature_norm(ws)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, ws, acc, epochs=2, batch_size=4, progress=False)  # 9 = 4 + 4 + 1: the last batch is skipped
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not move"


def test_fit_fits_the_feature_norm_on_its_training_models_first():
    ws = _space(batch=9)
    io = torch.randn(9, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = TransformerNFN(ws.spec, hidden_channels=(2,), head_hidden=8, io_features=5).double()
    fit(model, (ws, io), torch.linspace(0.1, 0.9, 9, dtype=torch.float64), epochs=0, progress=False)
    expected = QuantileNorm(model.raw_norm.knots.shape[0]).double().fit(model.raw(ws, io))
    assert torch.equal(model.raw_norm.knots, expected.knots)


def test_layer_norm_model_trains_on_batches_of_one():
    """Only a BatchNorm skips a batch of one model; a LayerNorm head learns from each."""
    ws = _space(batch=3)
    torch.manual_seed(0)
    model = TransformerNFN(ws.spec, hidden_channels=(2,), head_hidden=8).double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, ws, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), epochs=1, batch_size=1, progress=False)
    assert not torch.equal(model.head[-1].weight.detach(), before["head.4.weight"])


def test_bad_feature_options_are_refused():
    ws = _space()
    with pytest.raises(ValueError, match="feature_norm"):
        TransformerNFN(ws.spec, feature_norm="group")
    with pytest.raises(ValueError, match="raw_features"):
        TransformerNFN(ws.spec, raw_features=False).raw(ws)
    for options in ({"raw_spectral": True}, {"raw_bins": 8}):
        with pytest.raises(ValueError, match="need raw_features=True"):
            TransformerNFN(ws.spec, raw_features=False, **options)
    with pytest.raises(ValueError, match="raw_bins >= 0"):
        TransformerNFN(ws.spec, raw_bins=-1)
    with pytest.raises(ValueError, match="bins >= 1"):
        PiecewiseLinearEncoding(0, 2.5)


@pytest.mark.parametrize("io", [False, True])
def test_accuracy_predictor_fits_the_quantile_norm_and_keeps_it(tiny_zoo, tmp_path, io):
    """fit() sets the QuantileNorm's knots from the training models; the score stays invariant and survives
    save/load (the knots are saved)."""
    from nfn_ext import AccuracyPredictor
    from nfn_ext.transformer_zoo import SmallViT

    torch.manual_seed(0)
    predictor = AccuracyPredictor.fit(tiny_zoo, epochs=1, progress=False, io=io, raw_features=True)
    norm = predictor.nfn.raw_norm
    assert not torch.allclose(norm.knots, norm.scores.expand_as(norm.knots))
    models = [SmallViT(), SmallViT()]
    pred = predictor.predict(models)
    ws = TransformerWeightSpace.from_modules(models)
    g = random_group_element(ws, scale_range=1e2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(predictor.predict([g.act(ws).to_module(index=0)]), pred[:1], atol=1e-5)
    path = tmp_path / "predictor.pt"
    predictor.save(path)
    loaded = AccuracyPredictor.load(path)
    assert torch.equal(loaded.nfn.raw_norm.knots, norm.knots)
    assert torch.equal(loaded.predict(models), pred)


def _singular_values(ws: TransformerWeightSpace, b: int, block: int) -> np.ndarray:
    """The spectral features of one model's block, by numpy, one head at a time."""
    spec = ws.spec

    def get(name: str, *index: int) -> np.ndarray:
        return getattr(ws, name)[(b, 0, block, *index)].numpy()

    def svd(x: np.ndarray) -> np.ndarray:
        return np.linalg.svd(x, compute_uv=False)

    s_h, t_h = [], []
    for h in range(spec.num_heads):
        q, k = np.vstack([get("wq", h), get("bq", h)[None]]), np.vstack([get("wk", h), get("bk", h)[None]])
        v = np.vstack([get("wv", h), get("bv", h)[None]])
        s_h.append(svd(q @ k.T)[: spec.d_qk])
        t_h.append(svd(v @ get("wo", h))[: spec.d_v])
    out = [np.mean(s_h, 0), np.max(s_h, 0), np.mean(t_h, 0), np.max(t_h, 0)]
    if spec.d_mlp:
        out += [svd(np.vstack([get("wa"), get("ba")[None]])), svd(get("wb"))]
    return np.concatenate(out)


@pytest.mark.parametrize("family", ["small_vit", "torch_mha"])
def test_spectral_pool_features_match_numpy_singular_values(family):
    """``spectral=True`` appends, per block: the D_k largest singular values of each S_h and the D_v largest
    of each T_h, mean and max over heads, then all of [W_A; b_A] and W_B (none without an MLP); the rest of
    the pool is unchanged."""
    ws = TransformerWeightSpace.from_module(make(family)[0]).map(
        lambda t: torch.randn(3, 1, *t.shape[2:], generator=torch.Generator().manual_seed(t.numel()))
    )
    spec = ws.spec
    plain, spectral = TransformerInvariantPool(spec, 1), TransformerInvariantPool(spec, 1, spectral=True)
    L, n_plain = spec.num_blocks, plain.num_features // spec.num_blocks
    n_extra = spectral.num_features // L - n_plain
    feats = spectral(ws).view(3, L, -1)
    assert feats.shape[-1] == n_plain + n_extra
    assert torch.equal(feats[..., :n_plain].flatten(1), plain(ws))
    for b in range(3):
        for block in range(L):
            direct = _singular_values(ws, b, block)
            assert len(direct) == n_extra
            expected = np.sign(direct) * np.log1p(np.abs(direct))
            assert np.allclose(feats[b, block, n_plain:].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_piecewise_linear_encoding_matches_its_formula_and_feeds_the_head():
    """enc_t(z) = clip((z - e_{t-1}) / (e_t - e_{t-1}), 0, 1) with equal-probability normal edges; the
    encodings add back up to the clipped score; TransformerNFN(raw_bins=T) feeds the head the encoded
    QuantileNorm output (F T numbers)."""
    from scipy.stats import norm as gaussian

    enc = PiecewiseLinearEncoding(4, 2.5).double()
    edges = np.array([-2.5, gaussian.ppf(0.25), 0.0, gaussian.ppf(0.75), 2.5])
    assert np.allclose(enc.edges.numpy(), edges)
    z = torch.tensor([[-3.0, -1.0, 0.1, 0.7, 2.4, 9.0]], dtype=torch.float64)
    out = enc(z).view(6, 4).numpy()
    for i, value in enumerate(z[0].tolist()):
        direct = [min(max((value - edges[t - 1]) / (edges[t] - edges[t - 1]), 0), 1) for t in range(1, 5)]
        assert np.allclose(out[i], direct)
    assert np.allclose(edges[0] + (out * np.diff(edges)).sum(1), np.clip(z[0].numpy(), -2.5, 2.5))
    ws, io = _space(), torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = TransformerNFN(ws.spec, hidden_channels=(2,), io_features=5, raw_bins=8).double().eval()
    model.fit_feature_norm(ws, io)
    first = model.head[0]
    assert first.in_features == model.norm.normalized_shape[0] + 8 * model.raw_norm.knots.shape[0]
    seen = []
    handle = first.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    model(ws, io)
    handle.remove()
    expected = model.raw_encoding(model.raw_norm(model.raw(ws, io)))
    assert torch.equal(seen[0][:, -expected.shape[1] :], expected)
