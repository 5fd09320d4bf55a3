"""The transformer tau benchmark's ensemble protocol (``--ensemble K``) on a zoo of random SmallViTs."""

import math

import pytest
import torch

from benchmarks import nfn_ext_transformer_tau as bench
from nfn_ext.transformer_space import TransformerWeightSpace
from nfn_ext.transformer_zoo import SmallViT, io_weights

TINY = ["--channels", "2", "--attention-to-mlp", "off", "--head-hidden", "8", "--epochs", "2"]
NFN = [*TINY, "--snapshots", "1", "2"]
GBT = ["--gbt-depths", "2", "--gbt-stages", "5", "10"]


@pytest.fixture(scope="module")
def data():
    """40 random SmallViTs (no training) with random accuracies: training inputs and a validation split."""
    torch.manual_seed(0)
    models = [SmallViT(d_model=4, num_heads=2, d_mlp=4) for _ in range(40)]
    x = (TransformerWeightSpace.from_modules(models), torch.cat([io_weights(m) for m in models]))
    y = torch.rand(40)
    train, val = torch.arange(30), torch.arange(30, 40)
    return (x[0][train], x[1][train]), y[train], ((x[0][val], x[1][val]), y[val])


def _fit(data, model: str, argv: list[str], seed: int):
    args = bench.parse_args(argv)
    x, y, val = data
    ((_, options),) = bench.settings(model, x[0].spec, x[1].shape[1], args).items()
    return bench.fit_predictors(model, options, seed, x, y, val, args)


@pytest.mark.parametrize(
    "model, argv",
    [("transformer_nfn", NFN), ("statnn_gbt", [*GBT, "--gbt-subsamples", "0.7"])],
)
def test_ensemble_is_the_mean_of_its_members(data, model, argv):
    """``--ensemble 2`` at seed 3 predicts the mean of the fits with seeds 3 and 1003 (``--ensemble 1``)."""
    x, _, val = data
    _, first, curve_first = _fit(data, model, argv, 3)
    _, second, curve_second = _fit(data, model, argv, 1003)
    _, both, curve = _fit(data, model, [*argv, "--ensemble", "2"], 3)
    assert set(both) == set(first) and len(both) == 2  # best epoch and 2-snapshot, or 5 and 10 trees
    for suffix, (predict, _) in both.items():
        a, b = first[suffix][0](x).double(), second[suffix][0](x).double()
        assert not torch.allclose(a, b)  # the members differ
        torch.testing.assert_close(predict(x), (a + b) / 2)
        torch.testing.assert_close(
            predict(val[0]), (first[suffix][0](val[0]) + second[suffix][0](val[0])) / 2
        )
    expected = [(p + q) / 2 for p, q in zip(curve_first, curve_second, strict=True)]
    assert curve == pytest.approx(expected)


def test_gradient_boosting_subsample_is_a_setting(data):
    """``--gbt-subsamples`` is crossed with the grid and reaches the regressor (1.0 keeps the old names)."""
    args = bench.parse_args([*GBT, "--gbt-subsamples", "1", "0.5"])
    grid = bench.settings("statnn_gbt", data[0][0].spec, data[0][1].shape[1], args)
    assert {name: o["subsample"] for name, o in grid.items()} == {"depth2": 1.0, "depth2-sub0.5": 0.5}
    full = _fit(data, "statnn_gbt", GBT, 0)[1]
    x = data[0]
    again = _fit(data, "statnn_gbt", GBT, 1000)[1]
    torch.testing.assert_close(full["-t10"][0](x), again["-t10"][0](x))  # no subsample: seed-free


def test_pair_concordance_against_a_double_loop():
    """Per kind of pair (both, one or none of the two at least ``above``; tied accuracies skipped): the mean
    of sign(p_i - p_j) sign(y_i - y_j); the kinds partition the pairs, and a perfect predictor scores 1."""
    gen = torch.Generator().manual_seed(0)
    y = torch.cat([torch.rand(12, generator=gen), torch.full((4,), 0.1)])  # four tied accuracies
    pred = y + 0.3 * torch.randn(16, generator=gen)
    pred[3] = pred[5]  # a tie in the prediction counts 0
    got = bench.pair_concordance(pred, y, 0.5)
    sums: dict[str, list[float]] = {"trained-trained": [], "trained-chance": [], "chance-chance": []}
    for i in range(16):
        for j in range(i + 1, 16):
            if y[i] == y[j]:
                continue
            kind = ["chance-chance", "trained-chance", "trained-trained"][int(y[i] >= 0.5) + int(y[j] >= 0.5)]
            sums[kind].append(float(torch.sign(pred[i] - pred[j]) * torch.sign(y[i] - y[j])))
    assert got == pytest.approx({k: sum(v) / len(v) for k, v in sums.items()})
    assert sum(bench._pair_counts(y, 0.5).values()) == 16 * 15 // 2 - 6
    assert bench.pair_concordance(2 * y, y, 0.5) == pytest.approx(dict.fromkeys(sums, 1.0))
    nobody_trained = bench.pair_concordance(pred, y, 2.0)  # an unreachable threshold: one kind only
    assert math.isnan(nobody_trained["trained-trained"]) and math.isnan(nobody_trained["trained-chance"])
    assert nobody_trained["chance-chance"] == pytest.approx(sum(sum(v) for v in sums.values()) / 114)


def test_on_off_options_refuse_other_words(capsys):
    assert bench.parse_args(["--io", "off", "--raw-spectral", "on", "off"]).raw_spectral == [True, False]
    with pytest.raises(SystemExit):
        bench.parse_args(["--io", "maybe"])
    assert "expected 'on' or 'off', got 'maybe'" in capsys.readouterr().err
