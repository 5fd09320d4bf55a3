"""Random networks and weight spaces shared by the nfn_ext tests."""

import torch
from torch import nn

from nfn_ext import WeightSpace

ACTS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh}


def make_mlp(act: str, widths: tuple[int, ...] = (5, 7, 6, 3)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [ACTS[act](), nn.Dropout(0.1)]
    return nn.Sequential(*layers)


def make_cnn(act: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        ACTS[act](),
        nn.Conv2d(4, 5, 3, stride=2),
        ACTS[act](),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )


def random_space(
    net: nn.Module, batch: int = 3, channels: int = 1, dtype: torch.dtype = torch.float64
) -> WeightSpace:
    """A batch of ``batch`` perturbed copies of ``net`` with ``channels`` distinct random channels."""
    base = WeightSpace.from_module(net)
    return base.map(lambda t: torch.randn(batch, channels, *t.shape[2:], dtype=dtype))


def max_diff(a: WeightSpace, b: WeightSpace) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.weights + a.biases, b.weights + b.biases, strict=True)
    )


def max_abs(a: WeightSpace) -> float:
    return max(x.abs().max().item() for x in a.weights + a.biases)
