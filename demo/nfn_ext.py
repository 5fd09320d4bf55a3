"""nfn_ext tour: weight spaces, the monomial group, equivariant layers, a small zoo, accuracy prediction."""

from __future__ import annotations

import tempfile
import time

import torch
from torch import nn

from nfn_ext.group import random_group_element
from nfn_ext.magep import MAGEPLinear
from nfn_ext.monomial import MonomialLinear
from nfn_ext.train import predict_accuracy
from nfn_ext.weight_space import WeightSpace
from nfn_ext.zoo import build_zoo, load_zoo


def _max_diff(a: WeightSpace, b: WeightSpace) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.weights + a.biases, b.weights + b.biases, strict=True)
    )


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(256, 1, 8, 8)
    for act in (nn.ReLU, nn.Tanh):
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            act(),
            nn.Conv2d(8, 8, 3, stride=2),
            act(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        ).eval()
        ws = WeightSpace.from_module(net)
        scale = 1e3 if ws.spec.group == "scale" else None
        g = random_group_element(ws, scale_range=scale)
        moved = g.act(ws)
        print(
            f"{ws}\n  group '{ws.spec.group}': weights moved by up to {_max_diff(moved, ws):.3g}, "
            f"outputs by {(moved.to_module()(x) - net(x)).abs().max():.2e}"
        )
        for layer_cls in (MonomialLinear, MAGEPLinear):
            layer = layer_cls(ws.spec, 1, 4).double()
            dws, dg = ws.map(torch.Tensor.double), random_group_element(ws.map(torch.Tensor.double), scale)
            err = _max_diff(layer(dg.act(dws)), dg.act(layer(dws)))
            print(
                f"  {layer_cls.__name__}: {sum(p.numel() for p in layer.parameters())} parameters, "
                f"equivariance error {err:.1e}"
            )
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        build_zoo(root, "mlp", "relu", n=60, hidden=8, progress=False)
        zoo = load_zoo(root)
        acc = zoo.accuracy
        print(
            f"\nzoo: {len(acc)} MLPs {zoo.weights.spec.dims} on 8x8 digits "
            f"in {time.perf_counter() - start:.0f}s, "
            f"test accuracy {acc.min():.2f}..{acc.max():.2f} (median {acc.median():.2f})"
        )
        for model in ("monomial", "np"):
            r = predict_accuracy(
                zoo,
                model,
                epochs=12,
                hidden_channels=(4, 4),
                head_hidden=32,
                augment_scales=[1e3],
                progress=False,
            )
            print(
                f"  {model:9s} params {r['params']:7,d}  Kendall tau clean {r['tau']:.3f}  "
                f"after random 1e3 scalings+permutations {r['tau_augmented']['1000.0']:.3f}"
            )


if __name__ == "__main__":
    main()
