"""WeightSpace: round trips, the nfn converter, batching and clear errors for unsupported networks."""

import pytest
import torch
from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat, state_dict_to_tensors
from torch import nn

from nfn_ext import WeightSpace, WeightSpaceSpec

from .helpers import make_cnn, make_mlp


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu"])
def test_module_round_trip_is_exact(kind: str, act: str) -> None:
    net = (make_mlp(act) if kind == "mlp" else make_cnn(act)).eval()
    ws = WeightSpace.from_module(net)
    assert ws.spec.activation == act
    assert ws.spec.group == ("sign" if act == "tanh" else "scale")
    rebuilt = ws.to_module().eval()
    for (k1, v1), (k2, v2) in zip(net.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(4, 5) if kind == "mlp" else torch.randn(4, 2, 8, 8)
    assert torch.equal(net(x), rebuilt(x))
    assert WeightSpace.from_module(rebuilt).spec == ws.spec


def test_layout_matches_nfn_and_converts_both_ways() -> None:
    net = make_cnn("relu")
    ws = WeightSpace.stack([WeightSpace.from_module(net), WeightSpace.from_module(make_cnn("relu"))])
    weights, biases = state_dict_to_tensors(net.state_dict())
    for ours, theirs in zip(ws[0].weights + ws[0].biases, weights + biases, strict=True):
        assert torch.equal(ours[:, 0], theirs)  # nfn: (B, ...) per network; ours adds the channel axis
    feats = ws.to_nfn()
    assert isinstance(feats, WeightSpaceFeatures)
    spec = network_spec_from_wsfeat(feats)
    assert spec.weight_spec[0].shape == (-1, 2, 3, 3) and spec.weight_spec[-1].shape == (3, -1)
    back = WeightSpace.from_nfn(feats, ws.spec)
    assert all(a is b for a, b in zip(back.weights + back.biases, ws.weights + ws.biases, strict=True))


def test_state_dicts_batching_and_indexing() -> None:
    nets = [make_mlp("tanh") for _ in range(3)]
    ws = WeightSpace.from_state_dicts([n.state_dict() for n in nets], WeightSpaceSpec.from_module(nets[0]))
    assert (ws.batch_size, ws.channels, ws.num_layers) == (3, 1, 3)
    assert ws.flatten().shape == (3, 1, sum(p.numel() for p in nets[0].parameters()))
    for i, net in enumerate(nets):
        assert all(
            torch.equal(a, b) for a, b in zip(ws.to_module(i).parameters(), net.parameters(), strict=True)
        )
    assert torch.equal(ws[1:].weights[0], ws.weights[0][1:])
    assert torch.equal((ws - ws[0] * 1.0).weights[0][0], torch.zeros_like(ws.weights[0][0]))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x))


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            nn.Sequential(nn.Linear(5, 7), nn.ReLU(), Residual(), nn.Linear(7, 3)),
            "unsupported layer Residual",
        ),
        (Residual(), "expected an nn.Sequential"),
        (
            nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)),
            "unsupported layer BatchNorm1d",
        ),
        (
            nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)),
            "mixed activations",
        ),
        (nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)), "expected an activation"),
        (nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 3)), "without bias"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3)), "AdaptiveAvgPool2d"),
        (nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(6, 3)), "expects 6 inputs"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)), "Flatten"),
        (nn.Sequential(nn.Linear(5, 7)), "at least 2 weight layers"),
        (nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)), "unsupported layer GELU"),
    ],
)
def test_unsupported_networks_raise(module: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightSpace.from_module(module)


def test_mismatched_shapes_raise() -> None:
    net = make_mlp("relu")
    ws = WeightSpace.from_module(net)
    with pytest.raises(ValueError, match="weight 1: expected shape"):
        WeightSpace([ws.weights[0], ws.weights[1][..., :-1], ws.weights[2]], ws.biases, ws.spec)
    with pytest.raises(ValueError, match="bias 0"):
        WeightSpace(ws.weights, [ws.biases[0].repeat(2, 1, 1), *ws.biases[1:]], ws.spec)
    with pytest.raises(ValueError, match="expected 6 weight/bias tensors"):
        WeightSpace.from_state_dict({"0.weight": ws.weights[0][0, 0]}, ws.spec)
    with pytest.raises(ValueError, match="same spec"):
        WeightSpace.stack([ws, WeightSpace.from_module(make_mlp("tanh"))])
    with pytest.raises(ValueError, match="single-channel"):
        ws.map(lambda t: t.repeat(1, 2, *[1] * (t.dim() - 2))).to_module()


def test_each_leaky_relu_keeps_its_own_slope() -> None:
    net = nn.Sequential(
        nn.Linear(4, 6), nn.LeakyReLU(0.1), nn.Linear(6, 5), nn.LeakyReLU(0.5), nn.Linear(5, 2)
    )
    rebuilt = WeightSpace.from_module(net).to_module()
    slopes = [m.negative_slope for m in rebuilt if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.1, 0.5]
    x = torch.randn(8, 4) * 3
    assert torch.equal(rebuilt(x), net(x))


def test_state_dict_is_read_by_key_not_by_order() -> None:
    net = nn.Sequential(*[m for i in range(6) for m in (nn.Linear(3 if i == 0 else 4, 4), nn.Tanh())][:-1])
    spec = WeightSpaceSpec.from_module(net)
    ordered = WeightSpace.from_module(net)
    shuffled = dict(sorted(net.state_dict().items()))  # safetensors' load_file order: 0, 10, 2, 4, ...
    assert list(shuffled)[:3] == ["0.bias", "0.weight", "10.bias"]
    for ws in (WeightSpace.from_state_dict(shuffled, spec), WeightSpace.from_state_dict(shuffled, net)):
        assert all(
            torch.equal(a, b)
            for a, b in zip(ws.weights + ws.biases, ordered.weights + ordered.biases, strict=True)
        )
    prefixed = {f"net.{k}": v for k, v in shuffled.items()}  # another model's sub-module
    ws = WeightSpace.from_state_dict(prefixed, spec)
    assert all(torch.equal(a, b) for a, b in zip(ws.weights, ordered.weights, strict=True))
    broken = {k: v for k, v in net.state_dict().items() if k != "2.bias"}
    with pytest.raises(ValueError, match="expected both 2.weight and 2.bias"):
        WeightSpace.from_state_dict(broken, spec)
    with pytest.raises(ValueError, match="expected 12 weight/bias tensors"):
        WeightSpace.from_state_dict({**net.state_dict(), "4.norm.bias": net[2].bias}, spec)


def test_safetensors_file_round_trip(tmp_path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    net = make_mlp("relu", (5, 7, 6, 6, 6, 6, 3))
    safetensors.save_file(net.state_dict(), tmp_path / "net.safetensors")
    ws = WeightSpace.from_state_dict(safetensors.load_file(tmp_path / "net.safetensors"), net)
    x = torch.randn(4, 5)
    assert torch.equal(ws.to_module()(x), net.eval()(x))


def test_to_module_is_in_eval_mode_so_dropout_round_trips_exactly() -> None:
    net = make_mlp("relu").eval()  # has Dropout(0.1)
    rebuilt = WeightSpace.from_module(net).to_module()
    assert not rebuilt.training
    x = torch.randn(64, 5)
    assert torch.equal(rebuilt(x), net(x))
    assert WeightSpace.from_module(net).to_module(train=True).training


def test_indexing_out_of_range_raises_and_negative_indices_work() -> None:
    ws = WeightSpace.from_modules([make_mlp("relu") for _ in range(2)])
    with pytest.raises(IndexError, match="out of range for a batch of 2"):
        ws[5]
    with pytest.raises(IndexError):
        ws[-3]
    assert torch.equal(ws[-1].weights[0], ws.weights[0][1:2])
    assert torch.equal(ws[-2].weights[0], ws.weights[0][0:1])
    assert [len(w) for w in ws] == [1, 1]  # iteration stops at the end of the batch


def test_float_and_double_like_tensors() -> None:
    ws = WeightSpace.from_module(make_mlp("tanh"))
    assert ws.double().dtype == torch.float64 and ws.double().float().dtype == torch.float32
    assert all(t.dtype == torch.float64 for t in ws.double().weights + ws.double().biases)
    assert ws.device == torch.device("cpu")


def test_nfn_layers_run_on_a_weight_space_through_to_nfn() -> None:
    from nfn.layers import HNPLinear

    ws = WeightSpace.from_modules([make_cnn("relu") for _ in range(2)])
    layer = HNPLinear(network_spec_from_wsfeat(ws.to_nfn()), 1, 3)
    out = WeightSpace.from_nfn(layer(ws.to_nfn()), ws.spec)
    assert (out.batch_size, out.channels) == (2, 3)


def test_nfn_ext_layers_and_models_take_nfn_features() -> None:
    from nfn.layers import NPLinear, TupleOp

    from nfn_ext import MAGEPLinear, MonomialEquivariantNFN, MonomialLinear, MonomialNFN

    ws = WeightSpace.from_modules([make_mlp("relu") for _ in range(2)])
    feats = ws.to_nfn()
    layer = MonomialLinear(ws.spec, 1, 2)
    out = layer(feats)
    assert isinstance(out, WeightSpaceFeatures)
    assert all(torch.equal(a, b) for a, b in zip(out.weights, layer(ws).weights, strict=True))
    assert isinstance(MAGEPLinear(ws.spec, 1, 2)(feats), WeightSpaceFeatures)
    assert isinstance(MonomialEquivariantNFN(ws.spec, (2,))(feats), WeightSpaceFeatures)
    # mixed in one nfn pipeline: nfn layer -> nfn_ext layer -> nfn activation
    pipeline = nn.Sequential(
        NPLinear(network_spec_from_wsfeat(feats), 1, 2), MonomialLinear(ws.spec, 2, 3), TupleOp(nn.ReLU())
    )
    assert pipeline(feats).weights[0].shape == (2, 3, 7, 5)
    model = MonomialNFN(ws.spec, (2,), 8)
    torch.testing.assert_close(model(feats), model(ws))
    with pytest.raises(TypeError, match="expected a WeightSpace or nfn WeightSpaceFeatures"):
        layer([torch.zeros(1)])
