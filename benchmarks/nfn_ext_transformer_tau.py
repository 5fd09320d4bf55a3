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
Every (model, setting, seed) result is cached as JSON. ``--raw-features on`` gives Transformer-NFN and its
ablations the quantile-normalised invariant pool of the input weights (``TransformerNFN(raw_features=True)``,
fitted on the training split; ``--raw-spectral`` adds singular values of the invariants to them,
``--raw-bins`` a piecewise-linear encoding); ``--n 3000 --split-n 600`` trains on a larger zoo with the
600-member zoo's validation and test members. ``--ensemble K`` makes every arm the mean prediction of ``K``
fits (the same ``K`` seeds for every arm; ``--gbt-subsamples`` makes gradient boosting's fits differ), and
``--above A`` adds the concordance of the test pairs by kind (both, one or none of the two checkpoints with
accuracy at least ``A``).

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
from nfn_ext.transformer_predictor import LOSSES, Inputs, fit, kendall_tau, predict_logits, snapshot_logits
from nfn_ext.transformer_space import TransformerWeightSpace, TransformerWeightSpaceSpec
from nfn_ext.transformer_zoo import TransformerZoo, build_transformer_zoo, load_transformer_zoo

#: a fitted predictor and its best epoch (``None`` for gradient boosting)
Predictor = tuple[Callable[[Inputs], Tensor], Any]

MODELS = (
    "transformer_nfn", "nfn_pool_only", "nfn_pool_only_wide", "mlp", "np", "np_wide", "statnn_gbt",
    "invariant_gbt",
)  # fmt: skip


def split(
    zoo: TransformerZoo, test_fraction: float = 0.2, val_fraction: float = 0.1, split_n: int | None = None
) -> dict[str, Tensor]:
    """Fixed member-level split (seed 1234): indices of the train, validation and test checkpoints.

    With ``split_n``, the members below ``split_n`` are split exactly as a zoo of ``split_n`` members would
    be, and every member from ``split_n`` on goes to training: a larger zoo (members are deterministic per
    index) keeps the smaller zoo's validation and test models."""
    members = torch.unique(zoo.member)
    extra = members[members >= split_n] if split_n is not None else members[:0]
    members = members[~torch.isin(members, extra)]
    members = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(1234))]
    n_test, n_val = int(test_fraction * len(members)), int(val_fraction * len(members))
    groups = {
        "test": members[:n_test],
        "val": members[n_test : n_test + n_val],
        "train": torch.cat([members[n_test + n_val :], extra]),
    }
    return {k: torch.nonzero(torch.isin(zoo.member, v)).squeeze(1) for k, v in groups.items()}


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _matched(build: Callable[[int], nn.Module], target: int) -> int:
    """The width ``w`` (from a fixed ladder) whose ``build(w)`` has the parameter count nearest ``target``."""
    ladder = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    return min(ladder, key=lambda w: abs(_count(build(w)) - target))


def _norm_suffix(norm: str, raw: bool, spectral: bool = False, bins: int = 0) -> str:
    raw_tag = ("-raw" + ("-sv" if spectral else "") + (f"-ple{bins}" if bins else "")) if raw else ""
    return ("" if norm == "layer" else "-bn") + raw_tag


def settings(
    model: str, spec: TransformerWeightSpaceSpec, io: int, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """The settings each model chooses from on the validation split: name -> options (``io``: the number
    of embedding and classifier weights every neural model reads, 0 for none). A neural setting is
    ``{"build", "lr", "loss", "weight_decay"}``, crossed with the training grid (``--lrs``, ``--losses``,
    ``--weight-decays``); a gradient-boosting setting is ``{"depth", "lr", "subsample", "spectral"}``."""
    hh = args.head_hidden

    def nfn(
        channels: tuple[int, ...],
        head: int,
        att: bool = False,
        norm: str = "layer",
        raw: bool = False,
        spectral: bool = False,
        bins: int = 0,
    ) -> TransformerNFN:
        return TransformerNFN(
            spec, channels, head, attention_to_mlp=att, io_features=io, feature_norm=norm, raw_features=raw,
            raw_spectral=spectral, raw_bins=bins,
        )  # fmt: skip

    def norms(name: str) -> dict[str, dict[str, Any]]:  # the feature normalisations on the grid
        return {
            name + _norm_suffix(norm, raw, spectral, bins): {
                "norm": norm,
                "raw": raw,
                "spectral": spectral,
                "bins": bins,
            }
            for norm in args.feature_norms
            for raw in args.raw_features
            for spectral in (args.raw_spectral if raw else [False])
            for bins in (args.raw_bins if raw else [0])
        }

    if model in ("statnn_gbt", "invariant_gbt"):
        depths = args.gbt_depths if model == "statnn_gbt" else args.invariant_gbt_depths
        spectral = args.invariant_gbt_spectral if model == "invariant_gbt" else [False]
        return {
            f"depth{d}" + ("" if lr == 0.05 else f"-lr{lr:g}") + ("" if sub == 1 else f"-sub{sub:g}")
            + ("-sv" if sv else ""): {"depth": d, "lr": lr, "subsample": sub, "spectral": sv}
            for d in depths
            for lr in args.gbt_lrs
            for sub in args.gbt_subsamples
            for sv in spectral
        }  # fmt: skip
    if model == "transformer_nfn":
        builds = {
            name: (lambda c=c, att=att, o=o: nfn((c,), hh, att, **o))
            for c in args.channels
            for att in args.attention_to_mlp
            for name, o in norms(f"c{c}" + ("" if hh == 64 else f"-h{hh}") + ("-noatt", "")[att]).items()
        }
    else:
        target = _count(nfn((max(args.channels),), hh))  # the widest Transformer-NFN without the z terms
        if model == "nfn_pool_only":
            builds = {name: (lambda o=o: nfn((), hh, **o)) for name, o in norms(f"h{hh}").items()}
        elif model == "nfn_pool_only_wide":  # matched to the widest Transformer-NFN with the same features
            builds = {}
            for o in norms("").values():
                w = _matched(lambda w, o=o: nfn((), w, **o), _count(nfn((max(args.channels),), hh, **o)))
                builds[f"h{w}" + _norm_suffix(**o)] = lambda o=o, w=w: nfn((), w, **o)
        elif model == "mlp":
            builds = {f"h{hh}": lambda: TransformerFlatMLP(spec, hh, io_features=io)}
        elif model == "np":
            builds = {f"h32-{hh}": lambda: TransformerPermutationNFN(spec, 32, hh, io_features=io)}
        else:
            w = _matched(lambda w: TransformerPermutationNFN(spec, w, w, io_features=io), target)
            builds = {f"h{w}-{w}": lambda: TransformerPermutationNFN(spec, w, w, io_features=io)}
    return {
        name
        + ("" if loss == "bce" else f"-{loss}")
        + ("" if lr == 1e-3 else f"-lr{lr:g}")
        + ("" if wd == 0 else f"-wd{wd:g}"): {"build": build, "lr": lr, "loss": loss, "weight_decay": wd}
        for name, build in builds.items()
        for loss in args.losses
        for lr in args.lrs
        for wd in args.weight_decays
    }


def _fit_gbt(
    model: str, options: dict[str, Any], seed: int, x: Inputs, y: Tensor, args: argparse.Namespace
) -> tuple[int, dict[str, Predictor]]:
    """Gradient boosting on weight statistics: (tree nodes, {``-t{n}``: prediction after ``n`` trees})."""
    from sklearn.ensemble import GradientBoostingRegressor

    gbt = GradientBoostingRegressor(
        n_estimators=max(args.gbt_stages), max_depth=options["depth"], learning_rate=options["lr"],
        subsample=options["subsample"], random_state=seed,
    )  # fmt: skip
    spec = (x[0] if args.io else x).spec
    stats = (
        weight_statistics
        if model == "statnn_gbt"
        else TransformerInvariantPool(spec, 1, spectral=options["spectral"])
    )

    def features(x: Inputs) -> Tensor:  # weight statistics (and the raw io weights)
        return torch.cat([stats(x[0]), x[1]], 1) if args.io else stats(x)

    gbt.fit(features(x).numpy(), y.numpy())

    def staged(trees: int) -> Callable[[Inputs], Tensor]:
        def predict(x: Inputs) -> Tensor:
            for n, pred in enumerate(gbt.staged_predict(features(x).numpy()), 1):
                if n == trees:
                    return torch.from_numpy(pred)
            raise ValueError(f"only {n} trees")

        return predict

    suffixes = {trees: "" if len(args.gbt_stages) == 1 else f"-t{trees}" for trees in args.gbt_stages}
    nodes = sum(t.tree_.node_count for t in gbt.estimators_.ravel())
    return nodes, {suffix: (staged(trees), None) for trees, suffix in suffixes.items()}


def _fit_neural(
    options: dict[str, Any],
    seed: int,
    x: Inputs,
    y: Tensor,
    val: tuple[Inputs, Tensor],
    args: argparse.Namespace,
) -> tuple[int, dict[str, Predictor], list[float]]:
    """One neural fit, early-stopped on validation: (parameters, {suffix: (prediction, best epoch)},
    validation curve); suffix ``""`` is the best epoch, ``-ens{k}`` the snapshot ensemble of the k best."""
    net = options["build"]()
    states: list[dict[str, Tensor]] = []
    curve = fit(
        net, x, y, args.epochs, 32, options["lr"], seed, val, progress=False,
        loss=options["loss"], weight_decay=options["weight_decay"], snapshots=states,
    )  # fmt: skip
    predictors: dict[str, Predictor] = {"": (lambda x: predict_logits(net, x), curve.index(max(curve)) + 1)}
    for k in (k for k in args.snapshots if k > 1):
        top = sorted(range(len(curve)), key=lambda e: -curve[e])[:k]
        chosen = [states[e] for e in top]
        epochs = "+".join(str(e + 1) for e in sorted(top))
        predictors[f"-ens{k}"] = (lambda x, chosen=chosen: snapshot_logits(net, chosen, x), epochs)
    return _count(net), predictors, curve


def fit_predictors(
    model: str,
    options: dict[str, Any],
    seed: int,
    x: Inputs,
    y: Tensor,
    val: tuple[Inputs, Tensor],
    args: argparse.Namespace,
) -> tuple[int, dict[str, Predictor], list[float]]:
    """Fit ``model`` with ``options`` ``--ensemble`` times, seeds ``seed + 1000 j`` (member ``j`` of every
    arm has the same seed: paired), and average the members' predictions per suffix (see :func:`_fit_gbt`,
    :func:`_fit_neural`). Returns (parameters of one member, {suffix: (mean prediction, best epochs)}, the
    members' mean validation curve)."""
    curves: list[list[float]] = []
    params = 0
    members: dict[str, list[Predictor]] = {}
    for member in range(args.ensemble):
        member_seed = seed + 1000 * member
        torch.manual_seed(member_seed)
        if model in ("statnn_gbt", "invariant_gbt"):
            params, predictors = _fit_gbt(model, options, member_seed, x, y, args)
        else:
            params, predictors, curve = _fit_neural(options, member_seed, x, y, val, args)
            curves.append(curve)
        for suffix, predictor in predictors.items():
            members.setdefault(suffix, []).append(predictor)

    def mean_prediction(chosen: list[Predictor]) -> Callable[[Inputs], Tensor]:
        return lambda x: torch.stack([predict(x).double() for predict, _ in chosen]).mean(0)

    predictors = {
        suffix: (mean_prediction(chosen), "/".join(str(e) for _, e in chosen) if chosen[0][1] else None)
        for suffix, chosen in members.items()
    }
    return params, predictors, [statistics.mean(c) for c in zip(*curves, strict=True)]


def run_setting(
    zoo: TransformerZoo,
    model: str,
    setting: str,
    options: dict[str, Any],
    seed: int,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Train one setting, early-stopped on the validation split; score validation, test, moved test.

    One result per snapshot option: a neural model's best validation epoch, and for each ``k`` in
    ``--snapshots`` above 1 the mean logit of its ``k`` best validation epochs (``-ens{k}``); gradient
    boosting after each number of trees in ``--gbt-stages`` (``-t{n}``)."""
    idx = split(zoo, split_n=args.split_n)
    train, val, test = (zoo.subset(idx[k]) for k in ("train", "val", "test"))

    def inputs(part: TransformerZoo, ws: TransformerWeightSpace | None = None) -> Inputs:
        ws = part.weights if ws is None else ws
        return (ws, part.io) if args.io else ws

    moved = {}
    for scale in args.scales:  # the same group elements for every model and seed
        g = random_group_element(test.weights, scale_range=scale, generator=torch.Generator().manual_seed(7))
        moved[str(scale)] = inputs(test, g.act(test.weights))
    start = time.perf_counter()
    val_xy = (inputs(val), val.accuracy)
    params, predictors, curve = fit_predictors(
        model, options, seed, inputs(train), train.accuracy, val_xy, args
    )
    seconds = time.perf_counter() - start
    return [
        {
            "model": model,
            "setting": setting + suffix,
            "fit": setting,
            "seed": seed,
            "params": params,
            "seconds": seconds,
            "n_train": len(train),
            "n_test": len(test),
            "val_curve": curve,
            "val_tau": kendall_tau(predict(inputs(val)), val.accuracy),
            "best_epoch": best_epoch,
            "tau": kendall_tau(pred, test.accuracy),
            "tau_moved": {k: kendall_tau(p, test.accuracy) for k, p in pred_moved.items()},
            "test_pred": pred.tolist(),
            "moved_pred": {k: p.tolist() for k, p in pred_moved.items()},
        }
        for suffix, (predict, best_epoch) in predictors.items()
        for pred, pred_moved in [(predict(inputs(test)), {k: predict(x) for k, x in moved.items()})]
    ]


def run(zoo: TransformerZoo, model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of ``model`` (cached per setting); returns the one with the best validation tau, with
    ``seconds`` = the time of the whole selection and ``grid`` = every setting's validation tau."""
    tried = []
    io = zoo.io.shape[1] if args.io else 0
    for setting, options in settings(model, zoo.weights.spec, io, args).items():
        extra = args.gbt_stages if model.endswith("gbt") else args.snapshots
        extra_tag = "-".join(map(str, extra))
        zoo_tag = f"n{args.n}" + ("" if args.split_n in (None, args.n) else f"-split{args.split_n}")
        ens_tag = "" if args.ensemble == 1 else f"_k{args.ensemble}"
        tag = f"v5_{zoo_tag}_io{int(args.io)}_{model}_{setting}_e{args.epochs}_x{extra_tag}{ens_tag}_s{seed}"
        cache = Path(args.root) / "tau" / f"{tag}.json"
        if cache.exists():
            results = json.loads(cache.read_text())
        else:
            results = run_setting(zoo, model, setting, options, seed, args)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(results, indent=1))
        tried.extend(results)
    best = dict(max(tried, key=lambda r: r["val_tau"]))
    best["seconds"] = sum({r["fit"]: r["seconds"] for r in tried}.values())  # one fit, several results
    best["grid"] = {r["setting"]: round(r["val_tau"], 3) for r in tried}
    best["tried"] = tried
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


def _pair_kinds(accuracy: Tensor, above: float) -> dict[str, Tensor]:
    """Masks ``(N, N)`` of the pairs ``i < j`` with ``y_i != y_j``: both at least ``above``
    (``trained-trained``), one of each, and both below it."""
    n = len(accuracy)
    trained = accuracy >= above
    counted = torch.ones(n, n, dtype=torch.bool).triu(1) & (accuracy[:, None] != accuracy[None, :])
    both, either = trained[:, None] & trained[None, :], trained[:, None] | trained[None, :]
    return {
        "trained-trained": counted & both,
        "trained-chance": counted & either & ~both,
        "chance-chance": counted & ~either,
    }


def _pair_counts(accuracy: Tensor, above: float) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in _pair_kinds(accuracy, above).items()}


def pair_concordance(pred: Tensor, accuracy: Tensor, above: float) -> dict[str, float]:
    r"""Kendall-style concordance per kind of pair (:func:`_pair_kinds`): the mean over the pairs of that kind
    of :math:`\operatorname{sign}(p_i - p_j)\operatorname{sign}(y_i - y_j)` (ties in ``pred`` count 0;
    ``nan`` for a kind without pairs). ``pred``, ``accuracy``: ``(N,)``."""
    agree = torch.sign(pred[:, None] - pred[None, :]) * torch.sign(accuracy[:, None] - accuracy[None, :])
    return {
        k: float(agree[m].double().mean()) if m.any() else math.nan
        for k, m in _pair_kinds(accuracy, above).items()
    }


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


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {value!r}")
    return value == "on"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="zoo members (4 checkpoints each)")
    parser.add_argument(
        "--split-n",
        type=int,
        default=None,
        help="split the first SPLIT_N members as a zoo of that size would be and train on every later one "
        "too (a learning curve with the same validation and test models; default: --n)",
    )
    parser.add_argument("--d-model", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs (early-stopped)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3], help="neural models (on validation)")
    parser.add_argument(
        "--losses", nargs="+", choices=LOSSES, default=["bce"], help="neural models (chosen on validation)"
    )
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[0.0], help="neural models")
    parser.add_argument(
        "--snapshots",
        type=int,
        nargs="+",
        default=[1],
        help="neural models: k > 1 adds the snapshot ensemble of the k best validation epochs of each run",
    )
    parser.add_argument(
        "--channels", type=int, nargs="+", default=[4, 8], help="Transformer-NFN widths chosen on validation"
    )
    parser.add_argument(
        "--attention-to-mlp",
        type=_on_off,
        nargs="+",
        default=[True, False],
        help="on/off: Transformer-NFN with/without the attention -> MLP terms (chosen on validation)",
    )
    parser.add_argument("--gbt-depths", type=int, nargs="+", default=[2, 4, 6], help="chosen on validation")
    parser.add_argument("--gbt-lrs", type=float, nargs="+", default=[0.05], help="chosen on validation")
    parser.add_argument(
        "--gbt-stages",
        type=int,
        nargs="+",
        default=[300],
        help="numbers of trees scored (chosen on validation; the largest is fitted)",
    )
    parser.add_argument(
        "--gbt-subsamples",
        type=float,
        nargs="+",
        default=[1.0],
        help="fraction of the training models per tree (stochastic gradient boosting; chosen on validation)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="every arm's prediction is the mean of K fits with seeds SEED + 1000 j (the same K seeds for "
        "every arm; gradient boosting differs between members only with a subsample below 1)",
    )
    parser.add_argument(
        "--invariant-gbt-depths", type=int, nargs="+", default=[4], help="chosen on validation"
    )
    parser.add_argument(
        "--invariant-gbt-spectral",
        type=_on_off,
        nargs="+",
        default=[False],
        help="on/off: invariant_gbt also reads the singular values (TransformerInvariantPool spectral)",
    )
    parser.add_argument(
        "--io",
        type=_on_off,
        default=True,
        help="on/off: every model also reads the embedding and classifier weights (untouched by the group)",
    )
    parser.add_argument(
        "--feature-norms",
        nargs="+",
        choices=("layer", "batch"),
        default=["layer"],
        help="Transformer-NFN and its ablations: normalisation of the pooled features (on validation)",
    )
    parser.add_argument(
        "--raw-features",
        type=_on_off,
        nargs="+",
        default=[False],
        help="on/off: Transformer-NFN and its ablations also read the quantile-normalised invariant pool of "
        "the input weights (chosen on validation)",
    )
    parser.add_argument(
        "--raw-spectral",
        type=_on_off,
        nargs="+",
        default=[False],
        help="on/off: the raw features include singular values of the invariants (TransformerNFN "
        "raw_spectral; chosen on validation)",
    )
    parser.add_argument(
        "--raw-bins",
        type=int,
        nargs="+",
        default=[0],
        help="T > 0: the head reads the raw features through a piecewise-linear encoding with T bins "
        "(TransformerNFN raw_bins; chosen on validation)",
    )
    parser.add_argument(
        "--above",
        type=float,
        default=None,
        help="also report the concordance of test pairs by kind: both, one or none of the two checkpoints "
        "with accuracy >= ABOVE (e.g. 0.2: twice chance)",
    )
    parser.add_argument("--head-hidden", type=int, default=64)
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 1e2], help="group element scales")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="processes for building the zoo")
    parser.add_argument("--root", default="runs/nfn_ext_transformer", help="where the zoo and results go")
    parser.add_argument("--plot", default=None, help="validation-curve figure (default: ROOT/val_curves.png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
    kinds: tuple[str, ...] = ()
    if args.above is not None:
        accuracy = zoo.accuracy[split(zoo, split_n=args.split_n)["test"]].double()
        for runs in results.values():
            for r in runs:
                r["pairs"] = pair_concordance(torch.tensor(r["test_pred"]), accuracy, args.above)
                r["pairs_moved"] = pair_concordance(
                    torch.tensor(r["moved_pred"][labels[-1]]), accuracy, args.above
                )
        kinds = tuple(next(iter(results.values()))[0]["pairs"])
        trained = int((accuracy >= args.above).sum())
        print(
            f"\nConcordance by kind of test pair: mean sign(p_i - p_j) sign(y_i - y_j) over the pairs with "
            f"y_i != y_j, 'trained' = accuracy >= {args.above} ({trained} of {len(accuracy)} checkpoints); "
            f"clean / moved (s={labels[-1]}):"
        )
        print(
            "| model | "
            + " | ".join(f"{k} ({n:,} pairs)" for k, n in _pair_counts(accuracy, args.above).items())
            + " |"
        )
        print("|---|" + "---|" * len(kinds))
        for model, runs in results.items():
            cells = [
                " / ".join(_mean_std([r[key][k] for r in runs]) for key in ("pairs", "pairs_moved"))
                for k in kinds
            ]
            print(f"| {model} | " + " | ".join(cells) + " |")
    if "transformer_nfn" in results and len(results) > 1:
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
        for kind in kinds:
            print(f"\nThe same on {kind} pairs (concordance):")
            print(f"| baseline | clean | moved (s={labels[-1]}) |\n|---|---|---|")
            for model, runs in results.items():
                if model != "transformer_nfn":
                    clean = _paired_ci([r["pairs"][kind] for r in nfn], [r["pairs"][kind] for r in runs])
                    moved = _paired_ci(
                        [r["pairs_moved"][kind] for r in nfn], [r["pairs_moved"][kind] for r in runs]
                    )
                    print(f"| {model} | {clean} | {moved} |")
    plot = Path(args.plot) if args.plot else root / "val_curves.png"
    plot_curves(results, plot)
    print(f"\nvalidation curves: {plot}")


if __name__ == "__main__":
    main()
