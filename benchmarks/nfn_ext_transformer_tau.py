"""Kendall's tau of transformer accuracy predictors on the local SmallViT zoo, clean and moved by the group.

Builds (or reuses) ``python -m nfn_ext.zoo build --arch transformer`` under ``--root``, holds out a fixed 20%
of the zoo's members (all their checkpoints), and trains on the rest:

- ``transformer_nfn``: :class:`nfn_ext.TransformerNFN`;
- ``nfn_pool_only``: the same without equivariant layers (invariant pool of the raw weights and MLP head), an
  ablation of :class:`~nfn_ext.transformer_nfn.TransformerLinear`;
- ``mlp``: an MLP on the flattened weights;
- ``np``: an NP-style model invariant to head and hidden-neuron permutations only;
- ``statnn_gbt``: STATNN weight statistics with scikit-learn's ``GradientBoostingRegressor``;
- ``invariant_gbt`` (diagnostic): the same gradient boosting on Transformer-NFN's invariant features of the
  raw weights (:class:`~nfn_ext.transformer_nfn.TransformerInvariantPool`), invariant like Transformer-NFN.

Each model is scored on the clean held-out models and on the same models moved by random attention-group
elements (head/neuron permutations and per-head ``GL`` maps with singular values in ``[1/s, s]``). The neural
models share the batch order per seed (paired). With ``--io on`` (default) every model also reads the
zoo's patch embedding and classifier weights (:func:`nfn_ext.transformer_zoo.io_weights`; the group does not
act on them): the neural models as a second input, gradient boosting as raw features beside the statistics.
Every (model, setting, seed) result is cached as JSON.

    python -m benchmarks.nfn_ext_transformer_tau --n 600 --epochs 12 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nfn_ext import TransformerNFN, random_group_element
from nfn_ext.transformer_baselines import TransformerFlatMLP, TransformerPermutationNFN, weight_statistics
from nfn_ext.transformer_nfn import TransformerInvariantPool
from nfn_ext.transformer_predictor import Inputs, fit, kendall_tau, predict_logits
from nfn_ext.transformer_space import TransformerWeightSpace, TransformerWeightSpaceSpec
from nfn_ext.transformer_zoo import TransformerZoo, build_transformer_zoo, load_transformer_zoo

MODELS = (
    "transformer_nfn", "nfn_pool_only", "nfn_pool_only_wide", "mlp", "np", "np_wide", "statnn_gbt",
    "invariant_gbt",
)  # fmt: skip


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


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _matched(build: Callable[[int], nn.Module], target: int) -> int:
    """The width ``w`` (from a fixed ladder) whose ``build(w)`` has the parameter count nearest ``target``."""
    ladder = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    return min(ladder, key=lambda w: abs(_count(build(w)) - target))


def settings(
    model: str, spec: TransformerWeightSpaceSpec, io: int, args: argparse.Namespace
) -> dict[str, Callable]:
    """The settings each model chooses from on the validation split: name -> builder (``io``: the number of
    embedding and classifier weights every neural model reads, 0 for none)."""
    hh = args.head_hidden

    def nfn(channels: tuple[int, ...], head: int, att: bool = False) -> TransformerNFN:
        return TransformerNFN(spec, channels, head, attention_to_mlp=att, io_features=io)

    if model == "transformer_nfn":
        return {
            f"c{c}" + ("" if att else "-noatt"): (lambda c=c, att=att: nfn((c,), hh, att))
            for c in args.channels
            for att in args.attention_to_mlp
        }
    if model == "statnn_gbt":
        return {f"depth{d}": d for d in args.gbt_depths}
    if model == "invariant_gbt":
        return {f"depth{d}": d for d in args.invariant_gbt_depths}
    target = _count(nfn((max(args.channels),), hh))  # the widest Transformer-NFN without the z terms
    if model == "nfn_pool_only":
        return {f"h{hh}": lambda: nfn((), hh)}
    if model == "nfn_pool_only_wide":
        w = _matched(lambda w: nfn((), w), target)
        return {f"h{w}": lambda: nfn((), w)}
    if model == "mlp":
        return {f"h{hh}": lambda: TransformerFlatMLP(spec, hh, io_features=io)}
    if model == "np":
        return {f"h32-{hh}": lambda: TransformerPermutationNFN(spec, 32, hh, io_features=io)}
    w = _matched(lambda w: TransformerPermutationNFN(spec, w, w, io_features=io), target)
    return {f"h{w}-{w}": lambda: TransformerPermutationNFN(spec, w, w, io_features=io)}


def run_setting(
    zoo: TransformerZoo, model: str, setting: str, build: Any, seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Train one setting, early-stopped on the validation split; score validation, test, moved test."""
    idx = split(zoo)
    train, val, test = (zoo.subset(idx[k]) for k in ("train", "val", "test"))

    def inputs(part: TransformerZoo, ws: TransformerWeightSpace | None = None) -> Inputs:
        ws = part.weights if ws is None else ws
        return (ws, part.io) if args.io else ws

    moved = {}
    for scale in args.scales:  # the same group elements for every model and seed
        g = random_group_element(test.weights, scale_range=scale, generator=torch.Generator().manual_seed(7))
        moved[str(scale)] = inputs(test, g.act(test.weights))
    torch.manual_seed(seed)
    start = time.perf_counter()
    curve: list[float] = []
    if model in ("statnn_gbt", "invariant_gbt"):
        from sklearn.ensemble import GradientBoostingRegressor

        gbt = GradientBoostingRegressor(
            n_estimators=300, max_depth=build, learning_rate=0.05, random_state=seed
        )
        pool = TransformerInvariantPool(zoo.weights.spec, 1)
        stats = weight_statistics if model == "statnn_gbt" else pool

        def features(x: Inputs) -> Tensor:  # weight statistics (and the raw io weights)
            return torch.cat([stats(x[0]), x[1]], 1) if args.io else stats(x)

        gbt.fit(features(inputs(train)).numpy(), train.accuracy.numpy())
        params = sum(t.tree_.node_count for t in gbt.estimators_.ravel())

        def predict(x):
            return torch.from_numpy(gbt.predict(features(x).numpy()))

    else:
        net = build()
        curve = fit(
            net, inputs(train), train.accuracy, args.epochs, 32, args.lr, seed, (inputs(val), val.accuracy),
            progress=False,
        )  # fmt: skip
        params = _count(net)

        def predict(ws):
            return predict_logits(net, ws)

    seconds = time.perf_counter() - start
    return {
        "model": model,
        "setting": setting,
        "seed": seed,
        "params": params,
        "seconds": seconds,
        "n_train": len(train),
        "n_test": len(test),
        "val_curve": curve,
        "val_tau": max(curve) if curve else kendall_tau(predict(inputs(val)), val.accuracy),
        "best_epoch": curve.index(max(curve)) + 1 if curve else None,
        "tau": kendall_tau(predict(inputs(test)), test.accuracy),
        "tau_moved": {k: kendall_tau(predict(x), test.accuracy) for k, x in moved.items()},
    }


def run(zoo: TransformerZoo, model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of ``model`` (cached per setting); returns the one with the best validation tau, with
    ``seconds`` = the time of the whole selection and ``grid`` = every setting's validation tau."""
    tried = []
    io = zoo.io.shape[1] if args.io else 0
    for setting, build in settings(model, zoo.weights.spec, io, args).items():
        lr = "" if args.lr == 1e-3 else f"_lr{args.lr:g}"
        tag = f"v4_n{args.n}_io{int(args.io)}_{model}_{setting}_e{args.epochs}{lr}_s{seed}"
        cache = Path(args.root) / "tau" / f"{tag}.json"
        if cache.exists():
            result = json.loads(cache.read_text())
        else:
            result = run_setting(zoo, model, setting, build, seed, args)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(result, indent=1))
        tried.append(result)
    best = dict(max(tried, key=lambda r: r["val_tau"]))
    best["seconds"] = sum(r["seconds"] for r in tried)
    best["grid"] = {r["setting"]: round(r["val_tau"], 3) for r in tried}
    return best


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


def plot_curves(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Validation Kendall's tau by epoch of the selected setting of every neural model (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, runs in results.items():
        curves = [r["val_curve"] for r in runs if r["val_curve"]]
        if curves:
            n = min(len(c) for c in curves)
            mean = [statistics.mean(c[e] for c in curves) for e in range(n)]
            ax.plot(range(1, n + 1), mean, label=model)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Kendall tau (mean over seeds)")
    ax.set_title("SmallViT zoo: validation curves of the selected settings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="zoo members (4 checkpoints each)")
    parser.add_argument("--d-model", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs (early-stopped)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--channels", type=int, nargs="+", default=[4, 8], help="Transformer-NFN widths chosen on validation"
    )
    parser.add_argument(
        "--attention-to-mlp",
        type=lambda v: v == "on",
        nargs="+",
        default=[True, False],
        help="on/off: Transformer-NFN with/without the attention -> MLP terms (chosen on validation)",
    )
    parser.add_argument("--gbt-depths", type=int, nargs="+", default=[2, 4, 6], help="chosen on validation")
    parser.add_argument(
        "--invariant-gbt-depths", type=int, nargs="+", default=[4], help="chosen on validation"
    )
    parser.add_argument(
        "--io",
        type=lambda v: v == "on",
        default=True,
        help="on/off: every model also reads the embedding and classifier weights (untouched by the group)",
    )
    parser.add_argument("--head-hidden", type=int, default=64)
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 1e2], help="group element scales")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="processes for building the zoo")
    parser.add_argument("--root", default="runs/nfn_ext_transformer", help="where the zoo and results go")
    parser.add_argument("--plot", default=None, help="validation-curve figure (default: ROOT/val_curves.png)")
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
    for model in tqdm(args.models, desc="models"):
        for seed in args.seeds:
            results.setdefault(model, []).append(run(zoo, model, seed, args))
    first = next(iter(results.values()))[0]
    n_val = len(zoo) - first["n_train"] - first["n_test"]
    print(
        f"\nSmallViT zoo: {len(zoo)} checkpoints of {args.n} members, spec {zoo.weights.spec}; "
        f"train/val/test {first['n_train']}/{n_val}/{first['n_test']} "
        f"checkpoints (members held out); settings and epoch chosen on validation tau (at most {args.epochs} "
        f"epochs); seeds {args.seeds} (mean +- std)\n"
    )
    labels = list(first["tau_moved"])
    head = [
        "model", "chosen setting (per seed)", "params", "best epoch", "train s (all settings)", "tau val",
        "tau clean", *[f"tau, moved (s={label})" for label in labels],
    ]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model, runs in results.items():
        params = sorted({r["params"] for r in runs})
        cells = [
            model,
            ", ".join(r["setting"] for r in runs),
            "/".join(f"{p:,}" for p in params) + (" nodes" if model.endswith("gbt") else ""),
            ", ".join(str(r["best_epoch"]) for r in runs) if runs[0]["best_epoch"] else "-",
            f"{statistics.mean(r['seconds'] for r in runs):.0f}",
            _mean_std([r["val_tau"] for r in runs]),
            _mean_std([r["tau"] for r in runs]),
            *[_mean_std([r["tau_moved"][k] for r in runs]) for k in labels],
        ]
        print("| " + " | ".join(cells) + " |")
    print("\nValidation tau of every setting (seed: {setting: tau}):")
    for model, runs in results.items():
        print(f"- {model}: " + "; ".join(f"{r['seed']}: {r['grid']}" for r in runs))
    if "transformer_nfn" in results:
        nfn = results["transformer_nfn"]
        print("\nPaired difference of tau, Transformer-NFN minus baseline (same seeds; 95% t-interval):")
        print(f"| baseline | clean | moved (s={labels[-1]}) |\n|---|---|---|")
        for model, runs in results.items():
            if model != "transformer_nfn":
                clean = _paired_ci([r["tau"] for r in nfn], [r["tau"] for r in runs])
                moved = _paired_ci(
                    [r["tau_moved"][labels[-1]] for r in nfn], [r["tau_moved"][labels[-1]] for r in runs]
                )
                print(f"| {model} | {clean} | {moved} |")
    plot = Path(args.plot) if args.plot else root / "val_curves.png"
    plot_curves(results, plot)
    print(f"\nvalidation curves: {plot}")


if __name__ == "__main__":
    main()
