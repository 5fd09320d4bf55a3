"""Kendall's tau of accuracy predictors on local digits zoos, clean and under group augmentation.

Builds (or reuses) zoos with ``nfn_ext.zoo`` under ``--root``, trains every model with
``nfn_ext.train.predict_accuracy`` and prints one Markdown table per zoo: parameter count, tau on the clean
test networks and tau after moving the test networks by random group elements (ReLU zoos: log-uniform
scalings in ``[1/s, s]`` with permutations; tanh zoos: sign flips with permutations). A model
``monomial:r8`` / ``magep:r8`` has factorised rank-8 maps on the wide fixed widths, ``monomial:full`` the
complete dense layers, plain ``monomial`` / ``magep`` the model's default (factorised rank 8 / dense); each
variant's clean tau is followed by its paired difference (same splits and data order) to the plain model,
with a 95% t interval. Each (zoo, model, settings, seed) result is cached as JSON, so an interrupted run
resumes.

    python -m benchmarks.nfn_ext_tau --arch mlp cnn --activation relu --n 200 --epochs 20 --seeds 0 1 2 \
        --models monomial monomial:full magep magep:r8 np hnp statnn mlp
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

from nfn_ext.train import MODELS, predict_accuracy
from nfn_ext.zoo import Zoo, build_zoo, load_zoo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", nargs="+", default=["mlp"], choices=["mlp", "cnn"])
    parser.add_argument("--activation", nargs="+", default=["relu", "tanh"], choices=["relu", "tanh"])
    parser.add_argument("--n", type=int, default=300, help="networks per zoo")
    parser.add_argument("--hidden", type=int, default=None, help="zoo width (default: 16 for mlp, 8 for cnn)")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        help=f"of {MODELS}; monomial/magep:rN for rank N, :full for the complete layers",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 8])
    parser.add_argument("--head-hidden", type=int, default=64)
    parser.add_argument("--scales", type=float, nargs="+", default=[1e1, 1e2, 1e3, 1e4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train/test splits and inits")
    parser.add_argument("--workers", type=int, default=1, help="processes for building the zoos")
    parser.add_argument("--root", default="runs/nfn_ext", help="where zoos and cached results go")
    args = parser.parse_args()
    for model in args.models:
        _parse_model(model)
    torch.set_num_threads(1)
    root = Path(args.root)
    for arch in args.arch:
        for act in args.activation:
            hidden = args.hidden or (16 if arch == "mlp" else 8)
            zoo_dir = build_zoo(
                root / f"zoo_{arch}_{act}_h{hidden}_n{args.n}",
                arch,
                act,
                args.n,
                hidden,
                workers=args.workers,
            )
            zoo = load_zoo(zoo_dir)
            rows = []
            for model in args.models:
                runs = []
                for seed in args.seeds:
                    tag = (
                        f"{zoo_dir.name}_{model.replace(':', '-')}_e{args.epochs}"
                        f"_c{'-'.join(map(str, args.channels))}_s{seed}"
                    )
                    runs.append(_cached_run(root / "tau" / f"{tag}.json", zoo, model, args, seed))
                rows.append(runs)
            labels = list(rows[0][0]["tau_augmented"])
            print(
                f"\n{arch}/{act} zoo: {len(zoo.accuracy)} networks, dims {zoo.weights.spec.dims}, "
                f"train/test {rows[0][0]['n_train']}/{rows[0][0]['n_test']}, {args.epochs} epochs, "
                f"seeds {args.seeds} (mean +- std)\n"
            )
            head = ["model", "params", "tau clean", *[f"tau @ {label}" for label in labels], "s / run"]
            print("| " + " | ".join(head) + " |")
            print("|" + "---|" * len(head))
            by_name = {name: runs for name, runs in zip(args.models, rows, strict=True)}
            for name, runs in by_name.items():
                taus = [[r["tau"] for r in runs]] + [[r["tau_augmented"][k] for r in runs] for k in labels]
                seconds = statistics.mean(r.get("seconds", math.nan) for r in runs)
                cells = [name, f"{runs[0]['params']:,}", *[_mean_std(t) for t in taus], f"{seconds:.0f}"]
                print("| " + " | ".join(cells) + " |")
            for name, runs in by_name.items():
                base = _parse_model(name)[0]
                if base != name and base in by_name and len(runs) > 1:
                    diffs = [a["tau"] - b["tau"] for a, b in zip(runs, by_name[base], strict=True)]
                    print(f"\n{name} - {base}, clean tau, paired over seeds: {_mean_ci(diffs)}")


def _parse_model(spec: str) -> tuple[str, int | None]:
    """``"monomial"`` -> ``("monomial", None)`` (model default), ``"monomial:r8"`` -> ``("monomial", 8)``,
    ``"monomial:full"`` -> ``("monomial", 0)`` (complete dense layers)."""
    name, _, variant = spec.partition(":")
    ok = not variant or (name in ("monomial", "magep") and (variant == "full" or variant[1:].isdigit()))
    if name not in MODELS or not ok or (variant and variant != "full" and variant[0] != "r"):
        raise SystemExit(f"expected a model in {MODELS} or monomial/magep:rN / :full, got {spec!r}")
    return name, None if not variant else 0 if variant == "full" else int(variant[1:])


def _mean_ci(values: list[float]) -> str:
    """Mean and 95% t interval half-width."""
    from scipy.stats import t

    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):+.3f} +- {half:.3f} (95% CI)"


def _mean_std(values: list[float]) -> str:
    if any(math.isnan(v) for v in values):
        return f"nan in {sum(math.isnan(v) for v in values)}/{len(values)} runs"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def _cached_run(cache: Path, zoo: Zoo, model: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    if cache.exists():
        return json.loads(cache.read_text())
    start = time.perf_counter()
    name, rank = _parse_model(model)
    sign = zoo.weights.spec.group == "sign"
    result = predict_accuracy(
        zoo,
        name,
        args.epochs,
        hidden_channels=args.channels,
        head_hidden=args.head_hidden,
        augment_scales=() if sign else args.scales,
        augment_sign=sign,
        seed=seed,
        rank=rank,
        progress=False,
    )
    result["seconds"] = time.perf_counter() - start
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
