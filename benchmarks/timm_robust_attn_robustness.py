"""Robustness of a small ViT on scikit-learn digits, per attention, paired over seeds against softmax.

Each attention trains the same small timm ViT (32x32 upscaled digits, patch 8 so 16 patches + CLS, dim 64,
depth 4, 4 heads) with the same seed, initial weights and data order as softmax (paired design), then is
evaluated on the fixed test set:

- clean, and with 25 % of the 8x8 patches replaced by uniform noise (drawn once, shared by all models);
- "digits-C": the 15 ImageNet-C corruptions x 5 severities of ``imagecorruptions-imaug``, reported as mean
  accuracy and mean corruption error relative to softmax (mCE, %, the ImageNet-C protocol; < 100 is better);
- L-inf attacks from the Adversarial Robustness Toolbox on the first ``--attack-images`` test images:
  PGD and APGD (white-box, differentiating through the robust weights: RKDE's KIRWLS iterations and SPKDE's
  exact QP solve, via ``weight_grad=True`` during the attack) and the gradient-free SquareAttack.

Per seed, results are stored in ``<cache-dir>/results.json`` (checkpoints and digits-C too), so a rerun or an
interrupted run only computes what is missing. The tables give mean +- std over seeds and the mean paired
difference (attention - softmax, same seed) with its 95 % t-interval.

    python -m benchmarks.timm_robust_attn_robustness [--attentions softmax rkde-huber] [--seeds 0 1 ... 9]

Models are trained and evaluated seed by seed (every attention of one seed, then the next), so a run cut short
leaves complete pairs for the seeds it finished (rerun with those ``--seeds`` to print their tables).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from scipy import stats
from tqdm.auto import tqdm

from timm_robust_attn.robustness import (
    TrainConfig,
    adversarial_accuracy,
    digits_c,
    digits_dataset,
    evaluate,
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


def measure(model: torch.nn.Module, data: tuple[torch.Tensor, ...], patches: torch.Tensor,
            corrupted: dict[tuple[str, int], torch.Tensor], args: argparse.Namespace, seed: int) -> dict:
    """Every accuracy (%) of one trained model; digits-C as ``{"name/severity": accuracy}``."""
    x_test, y_test = data[2], data[3]
    row: dict = {"clean": evaluate(model, x_test, y_test), "patches 25%": evaluate(model, patches, y_test)}
    row["digits-C"] = {f"{name}/{severity}": evaluate(model, x, y_test)
                       for (name, severity), x in corrupted.items()}
    x_attack, y_attack = x_test[:args.attack_images], y_test[:args.attack_images]
    row["clean (attack subset)"] = evaluate(model, x_attack, y_attack)
    for eps in args.eps:
        for attack, iterations in (("pgd", args.iterations), ("apgd", args.iterations),
                                   ("square", args.square_queries)):
            row[f"{attack.upper()}-{iterations} {eps:g}"] = adversarial_accuracy(
                model, x_attack, y_attack, attack, eps, iterations, seed=seed)
    return row


def corruption_error(row: dict, reference: dict) -> float:
    """mCE (%) of ``row`` against ``reference``: mean over corruptions of summed errors over severities."""
    names = sorted({key.split("/")[0] for key in row["digits-C"]})
    ratios = []
    for name in names:
        keys = [key for key in row["digits-C"] if key.split("/")[0] == name]
        error = sum(100 - row["digits-C"][key] for key in keys)
        reference_error = sum(100 - reference["digits-C"][key] for key in keys)
        ratios.append(error / max(reference_error, 1e-9))
    return 100 * statistics.fmean(ratios)


def summary_columns(row: dict, reference: dict) -> dict[str, float]:
    """Flat columns of one model: accuracies, digits-C mean accuracy and mCE relative to ``reference``."""
    columns = {key: value for key, value in row.items() if not isinstance(value, dict)}
    columns["digits-C mean"] = statistics.fmean(row["digits-C"].values())
    columns["digits-C mCE"] = corruption_error(row, reference)
    return columns


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", nargs="+", choices=sorted(ATTENTIONS),
                        default=["softmax", "rkde-huber", "rkde-hampel", "spkde"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eps", nargs="+", type=float, default=[0.02],
                        help="L-inf radii (pixels in [0, 1])")
    parser.add_argument("--iterations", type=int, default=10, help="PGD and APGD iterations")
    parser.add_argument("--square-queries", type=int, default=50)
    parser.add_argument("--attack-images", type=int, default=100,
                        help="test images attacked (the first ones)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/timm_robust_attn_robustness"))
    args = parser.parse_args()
    if "softmax" not in args.attentions:
        parser.error("--attentions must include softmax, the reference of every paired difference")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = digits_dataset()
    patches = replace_patches(data[2], 0.25, 8, torch.Generator().manual_seed(1234))
    corrupted = digits_c(data[2], args.cache_dir / "digits_c.pt")
    results_path = args.cache_dir / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    settings = (f"epochs={args.epochs} batch={args.batch_size} lr={args.lr:g} eps={args.eps} "
                f"it={args.iterations} sq={args.square_queries} n={args.attack_images}")
    jobs = [(label, seed) for seed in args.seeds for label in args.attentions]
    for label, seed in tqdm(jobs, desc="models"):
        key = f"{settings} | {label} | {seed}"
        if key in results:
            continue
        name, options = ATTENTIONS[label]
        config = TrainConfig(attn=name, attn_kwargs=options, patch_size=8, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=seed)
        model = train_or_load(config, data, args.cache_dir)
        results[key] = measure(model, data, patches, corrupted, args, seed)
        results_path.write_text(json.dumps(results, indent=1))
        elapsed = time.perf_counter() - start
        tqdm.write(f"{label} seed {seed}: clean {results[key]['clean']:.1f} ({elapsed:.0f}s)")

    rows = {label: {seed: results[f"{settings} | {label} | {seed}"] for seed in args.seeds}
            for label in args.attentions}
    columns = {label: {seed: summary_columns(rows[label][seed], rows["softmax"][seed]) for seed in args.seeds}
               for label in args.attentions}
    names = list(columns["softmax"][args.seeds[0]])
    print(f"\ndigits test set ({len(data[3])} images; attacks on the first {args.attack_images}), "
          f"seeds {args.seeds}, {args.epochs} epochs, {settings}\n")
    print("Accuracy (%), mean +- std over seeds (digits-C mCE: % of softmax's corruption error, lower is "
          "better)\n")
    print("| attention | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label in args.attentions:
        cells = []
        for column in names:
            values = [columns[label][seed][column] for seed in args.seeds]
            spread = statistics.stdev(values) if len(values) > 1 else math.nan
            cells.append(f"{statistics.fmean(values):.1f} +- {spread:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nPaired difference attention - softmax (same seed), mean [95% CI]; accuracy points (mCE: points "
          "of %)\n")
    print("| attention | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label in args.attentions:
        if label == "softmax":
            continue
        cells = []
        for column in names:
            mean, half = mean_ci([columns[label][seed][column] - columns["softmax"][seed][column]
                                  for seed in args.seeds])
            cells.append(f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
