"""A local model zoo on scikit-learn's 8x8 digits, in the spirit of the Small CNN Zoo.

``python -m nfn_ext.zoo build --arch mlp --activation relu --n 200 --out zoo/`` trains ``n`` small networks
with hyperparameters drawn from grids (optimizer, learning rate, init scale, L2, dropout, train fraction,
epochs) and stores each one's weights and test accuracy as ``zoo/members/NNNNN.pt``. Finished members are
skipped, so an interrupted build resumes; ``--workers N`` spreads members over processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .weight_space import ACTIVATIONS, WeightSpace, WeightSpaceSpec

GRID: dict[str, list[Any]] = {
    "optimizer": ["sgd", "adam", "rmsprop"],
    "lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "init_scale": [0.1, 0.3, 1.0, 3.0],
    "l2": [0.0, 1e-4, 1e-3, 1e-2],
    "dropout": [0.0, 0.1, 0.3, 0.5],
    "train_fraction": [0.1, 0.25, 0.5, 1.0],
    "epochs": [2, 5, 10, 20],
}
TEST_FRACTION = 0.3
FLUSH = 1e-20


def make_network(arch: str, activation: str, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """The zoo's architectures for 8x8 digits (10 classes).

    ``mlp``: flatten -> 64 -> hidden -> hidden -> 10. ``cnn``: three 3x3 convolutions with ``hidden`` channels
    (strides 1, 2, 2) -> global average pool -> linear, like the Small CNN Zoo.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]
    if arch == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            act(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            act(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )
    if arch == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, hidden, 3, padding=1),
            act(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            act(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            act(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, 10),
        )
    raise ValueError(f"expected arch 'mlp' or 'cnn', got {arch!r}")


@lru_cache(maxsize=1)
def digits_split(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as ``(N, 1, 8, 8)`` in ``[0, 1]`` with labels; a fixed 70/30 train/test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(TEST_FRACTION * len(y))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def member_setup(
        config: dict[str, Any], index: int, grid: dict[str, list[Any]],
) -> tuple[dict[str, Any], Tensor, Tensor, Tensor, Tensor]:
    """Start of training member ``index`` of a zoo: its hyperparameters drawn from ``grid`` and torch's global
    seed, both fixed by the zoo seed and ``index`` (so a resumed build trains the same member), and the digits
    split with the training set cut to ``train_fraction`` (at least 32 images):
    ``(hparams, x_train, y_train, x_test, y_test)``."""
    member_seed = config["seed"] * 1_000_003 + index
    rng = random.Random(member_seed)
    hp = {key: rng.choice(values) for key, values in grid.items()}
    torch.manual_seed(member_seed)
    x_train, y_train, x_test, y_test = digits_split(config["seed"])
    n = max(32, int(hp["train_fraction"] * len(y_train)))
    return hp, x_train[:n], y_train[:n], x_test, y_test


def classification_accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` whose argmax logit equals ``y``."""
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


def train_member(config: dict[str, Any], index: int) -> dict[str, Any]:
    """Train member ``index`` of a zoo described by ``config``; returns its record."""
    hp, x_train, y_train, x_test, y_test = member_setup(config, index, GRID)
    n = len(y_train)
    net = make_network(config["arch"], config["activation"], config["hidden"], hp["dropout"])
    for m in net.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.normal_(
                m.weight, std=hp["init_scale"] * math.sqrt(2.0 / m.weight[0].numel())
            )  # x He init
            nn.init.zeros_(m.bias)
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[
        hp["optimizer"]
    ]
    extra = {"momentum": 0.9} if hp["optimizer"] == "sgd" else {}
    opt = opt_cls(net.parameters(), lr=hp["lr"], weight_decay=hp["l2"], **extra)
    for _ in range(hp["epochs"]):
        net.train()
        for batch in torch.randperm(n).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x_train[batch]), y_train[batch]).backward()
            opt.step()
    net.eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    finite = all(torch.isfinite(v).all() for v in state.values())
    return {
        "state_dict": state,
        "hparams": hp,
        "finite": bool(finite),
        "test_accuracy": classification_accuracy(net, x_test, y_test) if finite else float("nan"),
        "train_accuracy": classification_accuracy(net, x_train, y_train) if finite else float("nan"),
    }


TrainMember = Callable[[dict[str, Any], int], dict[str, Any]]


def _build_one(args: tuple[TrainMember, dict[str, Any], int, str]) -> int:
    train, config, index, out = args
    torch.set_num_threads(1)
    record = train(config, index)
    path = Path(out) / "members" / f"{index:05d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)  # atomic: an interrupted build never leaves a half-written member
    return index


def build_members(
    out: Path,
    config: dict[str, Any],
    n: int,
    train: TrainMember,
    desc: str,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write ``config.json`` (or check it against the build being resumed), then save ``train(config, i)`` as
    ``members/{i:05d}.pt`` for every missing ``i < n``, on ``workers`` processes; returns ``out``."""
    (out / "members").mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved != json.loads(json.dumps(config)):
            raise ValueError(f"{out} holds a zoo built with {saved}; use another --out for {config}")
    else:
        config_path.write_text(json.dumps(config, indent=1))
    jobs = [(train, config, i, str(out)) for i in range(n) if not (out / "members" / f"{i:05d}.pt").exists()]
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_build_one, jobs):
                bar.update()
    else:
        for job in jobs:
            _build_one(job)
            bar.update()
    bar.close()
    return out


def build_zoo(
    out: str | Path,
    arch: str = "mlp",
    activation: str = "relu",
    n: int = 200,
    hidden: int = 16,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Build (or resume) a zoo of ``n`` networks in ``out``; returns ``out``."""
    out = Path(out)
    config = {"arch": arch, "activation": activation, "hidden": hidden, "seed": seed, "grid": GRID}
    make_network(arch, activation, hidden)  # validate before writing anything
    return build_members(out, config, n, train_member, f"zoo {arch}/{activation}", workers, progress)


@dataclass
class Zoo:
    """A loaded zoo: the networks as one :class:`WeightSpace`, their test accuracies and hyperparameters."""

    weights: WeightSpace
    accuracy: Tensor
    hparams: list[dict[str, Any]]
    config: dict[str, Any]


def zoo_spec(config: dict[str, Any]) -> WeightSpaceSpec:
    return WeightSpaceSpec.from_module(make_network(config["arch"], config["activation"], config["hidden"]))


def load_zoo(path: str | Path) -> Zoo:
    """Load every finished, finite member of the zoo in ``path`` (diverged runs are dropped).

    Entries with magnitude below :data:`FLUSH` are set to 0."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(
            f"expected a zoo directory with config.json (built by `python -m nfn_ext.zoo build`): {path}"
        )
    config = json.loads((path / "config.json").read_text())
    spec = zoo_spec(config)
    records = [torch.load(p, weights_only=True) for p in sorted((path / "members").glob("*.pt"))]
    records = [r for r in records if r["finite"]]
    if not records:
        raise ValueError(f"zoo {path} has no finished members")
    ws = WeightSpace.from_state_dicts([r["state_dict"] for r in records], spec)
    # L2 decays dead units to subnormal floats (~1e-44); a 1e4 group action cannot move those exactly in
    # float32, so entries below FLUSH count as 0 (the networks' outputs change by less than 1e-18).
    ws = ws.map(lambda t: torch.where(t.abs() < FLUSH, torch.zeros_like(t), t))
    acc = torch.tensor([r["test_accuracy"] for r in records])
    return Zoo(ws, acc, [r["hparams"] for r in records], config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nfn_ext.zoo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="train (or resume) a zoo of small networks on 8x8 digits")
    build.add_argument(
        "--arch",
        choices=["mlp", "cnn", "transformer"],
        default="mlp",
        help="transformer: nfn_ext.transformer_zoo (--hidden is the width D <= 32, 2 heads, 2 blocks)",
    )
    build.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    build.add_argument("--n", type=int, default=200, help="number of networks")
    build.add_argument("--hidden", type=int, default=16, help="hidden width (MLP) or channels (CNN)")
    build.add_argument("--out", required=True, help="zoo directory (created; resumed if present)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--workers", type=int, default=1, help="processes")
    info = sub.add_parser("info", help="summarise a zoo")
    info.add_argument("--zoo", required=True)
    args = parser.parse_args(argv)
    from . import transformer_zoo

    if args.command == "build" and args.arch == "transformer":
        transformer_zoo.build_transformer_zoo(
            args.out, args.n, args.hidden, seed=args.seed, workers=args.workers
        )
        print(transformer_zoo.describe(args.out))
        return
    if args.command == "info" and transformer_zoo.is_transformer_zoo(args.zoo):
        print(transformer_zoo.describe(args.zoo))
        return
    if args.command == "build":
        build_zoo(args.out, args.arch, args.activation, args.n, args.hidden, args.seed, args.workers)
        args.zoo = args.out
    zoo = load_zoo(args.zoo)
    acc = zoo.accuracy
    print(
        f"{len(acc)} networks ({zoo.config['arch']}/{zoo.config['activation']}, "
        f"dims {zoo.weights.spec.dims}); "
        f"test accuracy min {acc.min():.3f} median {acc.median():.3f} max {acc.max():.3f}"
    )


if __name__ == "__main__":
    main()
