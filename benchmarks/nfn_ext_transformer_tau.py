"""Kendall's tau of transformer accuracy predictors on the local SmallViT zoo, clean and moved by the group.

Builds (or reuses) ``python -m nfn_ext.zoo build --arch transformer`` under ``--root``, holds out a fixed 20%
of the zoo's members (all their checkpoints), and trains on the rest:

- ``transformer_nfn``: :class:`nfn_ext.TransformerNFN`;
- ``nfn_pool_only``: the same without equivariant layers (invariant pool of the raw weights and MLP head), an
  ablation of :class:`~nfn_ext.transformer_nfn.TransformerLinear`;
- ``mlp``: an MLP on the flattened weights;
- ``np``: an NP-style model invariant to head and hidden-neuron permutations only;
- ``statnn_gbt``: STATNN weight statistics with scikit-learn's ``GradientBoostingRegressor``.

Each model is scored on the clean held-out models and on the same models moved by random attention-group
elements (head/neuron permutations and per-head ``GL`` maps with singular values in ``[1/s, s]``). The neural
models share the batch order per seed (paired). Every (model, seed) result is cached as JSON.

    python -m benchmarks.nfn_ext_transformer_tau --n 300 --epochs 10 --channels 8 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfn_ext import TransformerNFN, random_group_element
from nfn_ext.transformer_baselines import TransformerFlatMLP, TransformerPermutationNFN, weight_statistics
from nfn_ext.transformer_predictor import fit, kendall_tau, predict_logits
from nfn_ext.transformer_zoo import TransformerZoo, build_transformer_zoo, load_transformer_zoo

MODELS = ("transformer_nfn", "nfn_pool_only", "mlp", "np", "statnn_gbt")


def split(zoo: TransformerZoo, test_fraction: float = 0.2, val_fraction: float = 0.1) -> dict[str, Tensor]:
    """Fixed member-level split (seed 1234): indices of the train, validation and test checkpoints."""
    members = torch.unique(zoo.member)
    members = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(1234))]
    n_test, n_val = int(test_fraction * len(members)), int(val_fraction * len(members))
    groups = {
        "test": members[:n_test],
        "val": members[n_test : n_test + n_val],
        "train": members[n_test + n_val :],
    }
    return {k: torch.nonzero(torch.isin(zoo.member, v)).squeeze(1) for k, v in groups.items()}


def run(zoo: TransformerZoo, model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    idx = split(zoo)
    train, val, test = (zoo.subset(idx[k]) for k in ("train", "val", "test"))
    moved = {}
    for scale in args.scales:  # the same group elements for every model and seed
        g = random_group_element(test.weights, scale_range=scale, generator=torch.Generator().manual_seed(7))
        moved[str(scale)] = g.act(test.weights)
    torch.manual_seed(seed)
    start = time.perf_counter()
    curve: list[float] = []
    if model == "statnn_gbt":
        from sklearn.ensemble import GradientBoostingRegressor

        gbt = GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, random_state=seed)
        gbt.fit(weight_statistics(train.weights).numpy(), train.accuracy.numpy())
        params = sum(t.tree_.node_count for t in gbt.estimators_.ravel())

        def predict(ws):
            return torch.from_numpy(gbt.predict(weight_statistics(ws).numpy()))

    else:
        spec = zoo.weights.spec
        net = {
            "transformer_nfn": lambda: TransformerNFN(spec, args.channels, args.head_hidden),
            "nfn_pool_only": lambda: TransformerNFN(spec, (), args.head_hidden),
            "mlp": lambda: TransformerFlatMLP(spec, args.head_hidden),
            "np": lambda: TransformerPermutationNFN(spec, 32, args.head_hidden),
        }[model]()
        curve = fit(
            net, train.weights, train.accuracy, args.epochs, 32, args.lr, seed, (val.weights, val.accuracy)
        )
        params = sum(p.numel() for p in net.parameters())

        def predict(ws):
            return predict_logits(net, ws)

    seconds = time.perf_counter() - start
    return {
        "model": model,
        "seed": seed,
        "params": params,
        "seconds": seconds,
        "n_train": len(train),
        "n_test": len(test),
        "val_curve": curve,
        "tau": kendall_tau(predict(test.weights), test.accuracy),
        "tau_moved": {k: kendall_tau(predict(ws), test.accuracy) for k, ws in moved.items()},
    }


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def _paired_ci(a: list[float], b: list[float]) -> str:
    """Mean paired difference with a 95% t-interval."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return f"{d[0]:+.3f}"
    t95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(d), 2.0)
    half = t95 * statistics.stdev(d) / math.sqrt(len(d))
    return f"{statistics.mean(d):+.3f} [{statistics.mean(d) - half:+.3f}, {statistics.mean(d) + half:+.3f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="zoo members (4 checkpoints each)")
    parser.add_argument("--d-model", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, nargs="+", default=[8])
    parser.add_argument("--head-hidden", type=int, default=64)
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 1e2], help="group element scales")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="processes for building the zoo")
    parser.add_argument("--root", default="runs/nfn_ext_transformer", help="where the zoo and results go")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    zoo_dir = build_transformer_zoo(
        root / f"zoo_vit_d{args.d_model}", args.n, args.d_model, workers=args.workers
    )
    zoo = load_transformer_zoo(zoo_dir)
    keep = torch.nonzero(zoo.member < args.n).squeeze(1)
    zoo = zoo.subset(keep)
    results: dict[str, list[dict[str, Any]]] = {}
    for model in args.models:
        for seed in args.seeds:
            tag = f"n{args.n}_{model}_e{args.epochs}_c{'-'.join(map(str, args.channels))}_s{seed}"
            cache = root / "tau" / f"{tag}.json"
            if cache.exists():
                result = json.loads(cache.read_text())
            else:
                result = run(zoo, model, seed, args)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(result, indent=1))
            results.setdefault(model, []).append(result)
    first = next(iter(results.values()))[0]
    print(
        f"\nSmallViT zoo: {len(zoo)} checkpoints of {args.n} members, spec {zoo.weights.spec}; "
        f"train/test {first['n_train']}/{first['n_test']} checkpoints (test members held out); "
        f"{args.epochs} epochs; seeds {args.seeds} (mean +- std)\n"
    )
    labels = list(first["tau_moved"])
    head = ["model", "params", "train s", "tau clean", *[f"tau, moved (s={label})" for label in labels]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model, runs in results.items():
        cells = [
            model,
            f"{runs[0]['params']:,}" + (" nodes" if model == "statnn_gbt" else ""),
            f"{statistics.mean(r['seconds'] for r in runs):.0f}",
            _mean_std([r["tau"] for r in runs]),
            *[_mean_std([r["tau_moved"][k] for r in runs]) for k in labels],
        ]
        print("| " + " | ".join(cells) + " |")
    if "transformer_nfn" in results:
        nfn = [r["tau"] for r in results["transformer_nfn"]]
        print("\nPaired difference of clean tau, Transformer-NFN minus baseline (95% CI over seeds):")
        for model, runs in results.items():
            if model != "transformer_nfn":
                print(f"- {model}: {_paired_ci(nfn, [r['tau'] for r in runs])}")
        curves = [r["val_curve"] for r in results["transformer_nfn"] if r["val_curve"]]
        if curves:
            marks = sorted({1, len(curves[0]) // 4, len(curves[0]) // 2, len(curves[0])} - {0})
            print(
                "\nValidation tau of Transformer-NFN by epoch (mean over seeds): "
                + ", ".join(f"{e}: {statistics.mean(c[e - 1] for c in curves):.3f}" for e in marks)
            )


if __name__ == "__main__":
    main()
