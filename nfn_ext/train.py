"""Predict a network's test accuracy from its weights: ``python -m nfn_ext.train predict-accuracy``.

Trains one of ``monomial``, ``magep``, ``np``, ``hnp``, ``statnn``, ``mlp`` on a zoo
(``python -m nfn_ext.zoo``) with binary cross-entropy on the accuracy, and reports Kendall's tau on a
held-out split, clean and with the test networks moved by random group elements: ``--augment-scale S ...``
(ReLU zoos: log-uniform scalings in ``[1/s, s]`` with permutations) or ``--augment-sign`` (tanh zoos: sign
flips with permutations). ``--rank R`` sets the rank of the factorised maps of the Monomial/MAGEP layers
(``0``: the complete dense layers; default: the model's own, factorised rank 8 for Monomial-NFN and dense
for MAGEP-NFN).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau
from torch import Tensor, nn
from tqdm.auto import tqdm

from .baselines import FlatMLP, NFNBaseline, StatNN
from .group import random_group_element
from .magep import MAGEPNFN
from .monomial import MonomialNFN
from .weight_space import WeightSpace, WeightSpaceSpec
from .zoo import Zoo, load_zoo

MODELS = ("monomial", "magep", "np", "hnp", "statnn", "mlp")


def build_model(
    name: str,
    spec: WeightSpaceSpec,
    hidden_channels: Sequence[int] = (8, 8),
    head_hidden: int = 64,
    rank: int | None = None,
) -> nn.Module:
    """One of :data:`MODELS` for networks of architecture ``spec`` (one output logit).

    ``rank`` of the Monomial/MAGEP layers: ``None`` keeps the model's default (``MonomialNFN``: factorised,
    :data:`~nfn_ext.monomial.DEFAULT_RANK`; ``MAGEPNFN``: the authors' dense maps), ``0`` the complete dense
    maps, ``r > 0`` factorised rank-``r`` maps."""
    kwargs = {} if rank is None else {"rank": rank or None}
    if name == "monomial":
        return MonomialNFN(spec, hidden_channels, head_hidden, **kwargs)
    if name == "magep":
        return MAGEPNFN(spec, hidden_channels, head_hidden, **kwargs)
    if name in ("np", "hnp"):
        return NFNBaseline(spec, name, hidden_channels, head_hidden)
    if name == "statnn":
        return StatNN(spec, head_hidden)
    if name == "mlp":
        return FlatMLP(spec, head_hidden)
    raise ValueError(f"expected a model in {MODELS}, got {name!r}")


def model_label(name: str, rank: int | None) -> str:
    """``monomial``, ``monomial:full`` (rank 0) or ``monomial:r8``; ``name`` for models without layers."""
    if rank is None or name not in ("monomial", "magep"):
        return name
    return f"{name}:full" if rank == 0 else f"{name}:r{rank}"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def _predict(model: nn.Module, ws: WeightSpace, batch_size: int) -> Tensor:
    model.eval()
    return torch.cat([model(ws[i : i + batch_size]).squeeze(-1) for i in range(0, len(ws), batch_size)])


def _tau(pred: Tensor, target: Tensor) -> float:
    return float(kendalltau(pred.numpy(), target.numpy()).statistic)


def predict_accuracy(
    zoo: Zoo | str | Path,
    model: str = "monomial",
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    hidden_channels: Sequence[int] = (8, 8),
    head_hidden: int = 64,
    test_fraction: float = 0.2,
    augment_scales: Sequence[float] = (),
    seed: int = 0,
    progress: bool = True,
    augment_sign: bool = False,
    rank: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` to predict test accuracy on a zoo; returns parameter count and Kendall's tau.

    Args:
        augment_scales: ReLU zoos: also score the test networks moved by permutations and log-uniform
            scalings in ``[1/s, s]``, one entry per ``s``.
        augment_sign: tanh zoos: also score them moved by permutations and sign flips.
        rank: of the Monomial/MAGEP layers, as in :func:`build_model` (``None``: model default, ``0``:
            complete dense maps).

    Returns:
        ``{"model", "params", "n_train", "n_test", "tau", "tau_augmented": {label: tau}}`` where the
        labels are the scales (ReLU zoos) or ``"sign+perm"`` (tanh zoos).

    Raises:
        ValueError: for scalings on a tanh zoo or sign flips on a ReLU zoo (not symmetries of them).
    """
    zoo = load_zoo(zoo) if isinstance(zoo, str | Path) else zoo
    group = zoo.weights.spec.group
    if group == "sign" and augment_scales:
        raise ValueError(
            "scalings are not a symmetry of tanh networks; "
            "use augment_sign=True (--augment-sign) for sign flips"
        )
    if group == "scale" and augment_sign:
        raise ValueError(
            "sign flips are not a symmetry of ReLU networks; "
            "use augment_scales (--augment-scale) for scalings"
        )
    torch.manual_seed(seed)
    perm = torch.randperm(len(zoo.accuracy), generator=torch.Generator().manual_seed(seed))
    n_test = max(2, int(test_fraction * len(perm)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    train_ws, train_y = zoo.weights[train_idx], zoo.accuracy[train_idx]
    test_ws, test_y = zoo.weights[test_idx], zoo.accuracy[test_idx]
    net = build_model(model, zoo.weights.spec, hidden_channels, head_hidden, rank)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    bar = tqdm(range(epochs), desc=f"{model}", disable=not progress)
    for _ in bar:
        net.train()
        for batch in torch.randperm(len(train_y)).split(batch_size):
            opt.zero_grad()
            logits = net(train_ws[batch]).squeeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, train_y[batch])
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    result: dict[str, Any] = {
        "model": model_label(model, rank),
        "params": count_parameters(net),
        "n_train": len(train_y),
        "n_test": n_test,
        "tau": _tau(_predict(net, test_ws, batch_size), test_y),
        "tau_augmented": {},
    }
    gen = torch.Generator().manual_seed(seed + 1)
    labels: list[Any] = ["sign+perm"] if augment_sign else list(augment_scales)
    for label in labels:
        scale = None if label == "sign+perm" else float(label)
        moved = random_group_element(test_ws, scale_range=scale, generator=gen).act(test_ws)
        result["tau_augmented"][str(label)] = _tau(_predict(net, moved, batch_size), test_y)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nfn_ext.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pa = sub.add_parser(
        "predict-accuracy", help="train an accuracy predictor on a zoo and report Kendall's tau"
    )
    pa.add_argument("--zoo", required=True, help="zoo directory from `python -m nfn_ext.zoo build`")
    pa.add_argument("--model", choices=MODELS, default="monomial")
    pa.add_argument("--epochs", type=int, default=30)
    pa.add_argument("--batch-size", type=int, default=32)
    pa.add_argument("--lr", type=float, default=1e-3)
    pa.add_argument(
        "--channels", type=int, nargs="+", default=[8, 8], help="hidden channels (equivariant models)"
    )
    pa.add_argument("--head-hidden", type=int, default=64)
    pa.add_argument("--test-fraction", type=float, default=0.2)
    pa.add_argument(
        "--augment-scale",
        type=float,
        nargs="*",
        default=[],
        help="ReLU zoos: also score test networks moved by permutations and scalings up to these factors",
    )
    pa.add_argument(
        "--augment-sign",
        action="store_true",
        help="tanh zoos: also score test networks moved by permutations and sign flips",
    )
    pa.add_argument(
        "--rank",
        type=int,
        default=None,
        help="rank of the factorised maps on wide fixed input/output widths of the monomial/magep layers; "
        "0 for the complete dense layers (default: the model's default, 8 for monomial, dense for magep)",
    )
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = predict_accuracy(
        args.zoo,
        args.model,
        args.epochs,
        args.batch_size,
        args.lr,
        args.channels,
        args.head_hidden,
        args.test_fraction,
        args.augment_scale,
        args.seed,
        augment_sign=args.augment_sign,
        rank=args.rank,
    )
    aug = ", ".join(f"tau@{k}={v:.3f}" for k, v in result["tau_augmented"].items())
    print(
        f"{result['model']}: params={result['params']} train={result['n_train']} test={result['n_test']} "
        f"tau={result['tau']:.3f}" + (f", {aug}" if aug else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
