"""Model zoo building/resuming/loading and the accuracy-prediction trainer, on tiny settings."""

import json
from pathlib import Path

import pytest
import torch

from nfn_ext import WeightSpaceSpec, random_group_element
from nfn_ext.train import MODELS, build_model, predict_accuracy
from nfn_ext.train import main as train_main
from nfn_ext.zoo import build_zoo, load_zoo, make_network, train_member
from nfn_ext.zoo import main as zoo_main


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("zoo"), "mlp", "relu", n=8, hidden=6, progress=False)


def test_zoo_members_are_real_trained_networks(tiny_zoo: Path) -> None:
    zoo = load_zoo(tiny_zoo)
    assert zoo.weights.spec.dims == (64, 6, 6, 10) and zoo.weights.batch_size == len(zoo.accuracy) == 8
    assert len({tuple(sorted(h.items())) for h in zoo.hparams}) > 1
    record = torch.load(tiny_zoo / "members" / "00003.pt", weights_only=True)
    from nfn_ext.zoo import digits_split

    _, _, x_test, y_test = digits_split(0)
    net = zoo.weights.to_module(3).eval()
    acc = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert abs(acc - record["test_accuracy"]) < 1e-6


def test_zoo_resumes_and_refuses_other_configs(tiny_zoo: Path) -> None:
    member = tiny_zoo / "members" / "00002.pt"
    before = member.stat().st_mtime_ns
    member_5 = tiny_zoo / "members" / "00005.pt"
    member_5.unlink()
    build_zoo(tiny_zoo, "mlp", "relu", n=8, hidden=6, progress=False)
    assert member.stat().st_mtime_ns == before and member_5.exists()
    with pytest.raises(ValueError, match="use another --out"):
        build_zoo(tiny_zoo, "mlp", "tanh", n=8, hidden=6, progress=False)


def test_train_member_is_deterministic_and_cnn_is_supported() -> None:
    config = {"arch": "cnn", "activation": "tanh", "hidden": 3, "seed": 1}
    a, b = train_member(config, 0), train_member(config, 0)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    spec = WeightSpaceSpec.from_module(make_network("cnn", "tanh", 3))
    assert spec.dims == (1, 3, 3, 3, 10) and spec.group == "sign"
    with pytest.raises(ValueError, match="expected arch"):
        make_network("rnn", "relu", 3)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_on_the_zoo(tiny_zoo: Path, model: str) -> None:
    result = predict_accuracy(
        tiny_zoo,
        model,
        epochs=1,
        batch_size=4,
        hidden_channels=(2,),
        head_hidden=8,
        test_fraction=0.5,
        augment_scales=[10.0, 1e4],
        progress=False,
    )
    assert result["params"] > 0 and result["n_test"] == 4
    assert set(result["tau_augmented"]) == {"10.0", "10000.0"}


def test_trained_predictor_is_invariant_on_zoo_networks(tiny_zoo: Path) -> None:
    zoo = load_zoo(tiny_zoo)
    model = build_model("monomial", zoo.weights.spec, (4,), 16)
    out = model(zoo.weights)
    moved = model(random_group_element(zoo.weights, scale_range=1e4).act(zoo.weights))
    assert ((moved - out).abs() / out.abs().clamp_min(1e-3)).max() < 1e-4
    with pytest.raises(ValueError, match="expected a model"):
        build_model("gnn", zoo.weights.spec)


def test_cli_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for main in (zoo_main, train_main):
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
    assert "predict-accuracy" in capsys.readouterr().out
    with pytest.raises(ValueError, match="expected a zoo directory"):
        load_zoo(tmp_path)


def test_parallel_build_matches_serial(tmp_path: Path) -> None:
    serial = load_zoo(build_zoo(tmp_path / "serial", "mlp", "tanh", n=3, hidden=4, seed=2, progress=False))
    parallel = load_zoo(
        build_zoo(tmp_path / "parallel", "mlp", "tanh", n=3, hidden=4, seed=2, workers=2, progress=False)
    )
    assert torch.equal(serial.accuracy, parallel.accuracy)
    for a, b in zip(serial.weights.weights, parallel.weights.weights, strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def tiny_tanh_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_zoo(tmp_path_factory.mktemp("zoo_tanh"), "mlp", "tanh", n=8, hidden=5, progress=False)


def test_sign_flip_augmentation_is_an_explicit_option(tiny_zoo: Path, tiny_tanh_zoo: Path) -> None:
    kwargs = {"epochs": 1, "batch_size": 4, "hidden_channels": (2,), "head_hidden": 8, "progress": False}
    result = predict_accuracy(tiny_tanh_zoo, "monomial", test_fraction=0.5, augment_sign=True, **kwargs)
    assert set(result["tau_augmented"]) == {"sign+perm"}
    assert predict_accuracy(tiny_tanh_zoo, "statnn", test_fraction=0.5, **kwargs)["tau_augmented"] == {}
    with pytest.raises(ValueError, match="use augment_sign=True"):
        predict_accuracy(tiny_tanh_zoo, "monomial", augment_scales=[10.0], **kwargs)
    with pytest.raises(ValueError, match="sign flips are not a symmetry of ReLU"):
        predict_accuracy(tiny_zoo, "monomial", augment_sign=True, **kwargs)


def test_cli_augment_sign_and_rank(tiny_tanh_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["predict-accuracy", "--zoo", str(tiny_tanh_zoo), "--epochs", "1", "--channels", "2"]
    train_main([*args, "--augment-sign", "--rank", "4", "--test-fraction", "0.5", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["model"] == "monomial:r4" and set(result["tau_augmented"]) == {"sign+perm"}
