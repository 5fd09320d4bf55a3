"""Robustness of a small ViT on scikit-learn digits, per attention: clean accuracy and accuracy drops.

Each attention trains the same small timm ViT (32x32 upscaled digits, patch 8, dim 64, depth 4, 4 heads) with
the same seed and schedule, then is evaluated clean, with random patch replacement, Gaussian noise, and
L-inf FGSM / PGD-10 attacks (white-box, on that model). Checkpoints are cached under ``--cache-dir``, so a
rerun (or an interrupted run) only trains what is missing. Several ``--seeds`` report mean +- std.

    python benchmarks/timm_robust_attn_robustness.py [--seeds 0 1 2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from timm_robust_attn.robustness import (
    TrainConfig,
    digits_dataset,
    evaluate,
    fgsm,
    gaussian_noise,
    pgd,
    replace_patches,
    train_or_load,
)

ATTENTIONS: dict[str, tuple[str, dict]] = {
    "softmax": ("attn", {}),
    "kde": ("kde", {}),
    "rkde-huber": ("rkde", {"loss": "huber"}),
    "rkde-hampel": ("rkde", {"loss": "hampel"}),
    "spkde": ("spkde", {}),
    "mom": ("mom", {"num_blocks": 3}),
}


def contaminations(args: argparse.Namespace, x_test: torch.Tensor) -> dict[str, object]:
    """Name -> contaminated test images (random, drawn once for all models) or ``attack(model, x, y)``."""
    generator = torch.Generator().manual_seed(1234)
    table: dict[str, object] = {
        f"patches {args.patch_fraction:.0%}": replace_patches(x_test, args.patch_fraction, 8, generator),
        f"noise {args.noise_std}": gaussian_noise(x_test, args.noise_std, generator),
    }
    for eps in args.eps:
        table[f"FGSM {eps}"] = partial(fgsm, eps=eps)
    for eps in args.eps:
        table[f"PGD-{args.pgd_steps} {eps}"] = partial(pgd, eps=eps, steps=args.pgd_steps)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", nargs="+", choices=sorted(ATTENTIONS), default=list(ATTENTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--eps", nargs="+", type=float, default=[0.01, 0.03],
                        help="L-inf radii (pixels in [0, 1])")
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--patch-fraction", type=float, default=0.25)
    parser.add_argument("--noise-std", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/timm_robust_attn"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = digits_dataset()
    perturbations = contaminations(args, data[2])
    results: dict[str, dict[str, list[float]]] = {}
    for label in args.attentions:
        name, options = ATTENTIONS[label]
        for seed in args.seeds:
            config = TrainConfig(attn=name, attn_kwargs=options, patch_size=8, epochs=args.epochs, seed=seed)
            model = train_or_load(config, data, args.cache_dir)
            row = results.setdefault(label, {})
            row.setdefault("clean", []).append(evaluate(model, data[2], data[3]))
            for column, perturb in perturbations.items():
                if isinstance(perturb, torch.Tensor):
                    accuracy = evaluate(model, perturb, data[3])
                else:
                    accuracy = evaluate(model, data[2], data[3], perturb)
                row.setdefault(column, []).append(accuracy)
            summary = ", ".join(f"{column} {values[-1]:.1f}" for column, values in row.items())
            print(f"{label} seed {seed}: {summary}", flush=True)

    def cell(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} +- {statistics.stdev(values):.1f}"

    columns = ["clean", *perturbations]
    print(f"\ndigits test set ({len(data[3])} images), seeds {args.seeds}, {args.epochs} epochs; "
          "clean accuracy %, then accuracy drop (clean - contaminated) in points, lower is better\n")
    print("| attention | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, row in results.items():
        drops = [[c - v for c, v in zip(row["clean"], row[col], strict=True)] for col in perturbations]
        print(f"| {label} | {cell(row['clean'])} | " + " | ".join(cell(d) for d in drops) + " |")
    print(f"\n({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
