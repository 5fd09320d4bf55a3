"""nfn_ext tour: weight spaces, the monomial group, equivariant layers, a small zoo, accuracy prediction."""

from __future__ import annotations

import tempfile
import time

import timm
import torch
from torch import nn

from nfn_ext import TransformerNFN, TransformerWeightSpace
from nfn_ext.group import random_group_element
from nfn_ext.magep import MAGEPLinear
from nfn_ext.monomial import MonomialLinear
from nfn_ext.train import predict_accuracy
from nfn_ext.weight_space import WeightSpace
from nfn_ext.zoo import build_zoo, load_zoo

from .checks import expect


def _max_diff(a: WeightSpace, b: WeightSpace) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.weights + a.biases, b.weights + b.biases, strict=True)
    )


def transformer_tour() -> None:
    """The attention group on a timm ViT: weights move, the function and Transformer-NFN's output do not."""
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10)
    vit = vit.double().eval()
    ws = TransformerWeightSpace.from_module(vit)
    g = random_group_element(ws, scale_range=1e3)
    moved = g.act(ws)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        change = (moved.to_module()(x) - vit(x)).abs().max().item() / vit(x).abs().max().item()
        nfn = TransformerNFN(ws.spec).double()
        score, moved_score = nfn(ws), nfn(moved)
    print(f"\n{ws} read from a timm ViT")
    print(f"  random attention-group element (GL maps up to 1e3): relative output change {change:.1e}")
    print(f"  TransformerNFN output: {score.item():.12f} before, {moved_score.item():.12f} after")
    expect(change < 1e-8, "the attention group preserves the ViT's function")
    expect(torch.allclose(score, moved_score, rtol=1e-6, atol=1e-9), "TransformerNFN is invariant")


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
        output_change = (moved.to_module()(x) - net(x)).abs().max().item()
        print(
            f"{ws}\n  group '{ws.spec.group}': weights moved by up to {_max_diff(moved, ws):.3g}, "
            f"outputs by {output_change:.2e}"
        )
        expect(output_change < 1e-3 * net(x).abs().max().item(), "the group action preserves the function")
        for layer_cls in (MonomialLinear, MAGEPLinear):
            layer = layer_cls(ws.spec, 1, 4).double()
            dws, dg = ws.map(torch.Tensor.double), random_group_element(ws.map(torch.Tensor.double), scale)
            err = _max_diff(layer(dg.act(dws)), dg.act(layer(dws)))
            print(
                f"  {layer_cls.__name__}: {sum(p.numel() for p in layer.parameters())} parameters, "
                f"equivariance error {err:.1e}"
            )
            expect(err < 1e-6, f"{layer_cls.__name__} is equivariant")
    transformer_tour()
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
            if model == "monomial":
                expect(abs(r["tau_augmented"]["1000.0"] - r["tau"]) < 1e-6, "Monomial-NFN keeps its tau")


if __name__ == "__main__":
    main()
