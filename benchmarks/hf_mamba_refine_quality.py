"""Accuracy study of hf_mamba_refine on the standard-library corpus (CPU, small defaults).

1. Validation perplexity per byte of a character-level Mamba LM in three variants at equal steps:
   baseline, stable (PSD S_C^T S_B) and convergent (NSD ablation).
2. Validation accuracy of ``MambaForSequenceClassification`` (which stdlib package a snippet is from),
   without and with token reordering (one layer).

Runs ``python -m hf_mamba_refine.train`` for both tasks (resumable: rerunning reuses finished runs in
``--out``); the runs of one seed are paired (same initial weights, same batches). Prints per-seed tables with
mean +- std, the paired differences against the first variant with their 95 % t intervals, what learned
(the diagonal scales d of the constrained variants, parameters that never moved), and saves the validation
curves to ``--plot``.
"""

import argparse
import math
import statistics
from pathlib import Path

from scipy import stats

from hf_mamba_refine.train import RunResult, markdown_table
from hf_mamba_refine.train import main as train_main


def paired_table(results: list[RunResult]) -> str:
    """``variant - reference`` per seed (reference: the first variant), mean, std and 95 % t interval."""
    variants = list(dict.fromkeys(r.variant for r in results))
    value = {(r.variant, r.seed): r.value for r in results}
    seeds = sorted({r.seed for r in results})
    rows = ["| difference | per seed | mean | std | 95 % CI |", "|---|---|---|---|---|"]
    for variant in variants[1:]:
        diffs = [value[variant, s] - value[variants[0], s] for s in seeds]
        mean = statistics.mean(diffs)
        std = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
        half = stats.t.ppf(0.975, len(diffs) - 1) * std / len(diffs) ** 0.5 if len(diffs) > 1 else math.nan
        cells = ", ".join(f"{d:+.4f}" for d in diffs)
        rows.append(f"| {variant} - {variants[0]} | {cells} | {mean:+.4f} | {std:.4f} "
                    f"| [{mean - half:+.4f}, {mean + half:+.4f}] |")
    return "\n".join(rows)


def summary_table(results: list[RunResult]) -> str:
    head = "| variant | mean +- std | unchanged parameters | d (abs) start -> end | mean / min change of d |"
    rows = [head, "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]
        values = [r.value for r in runs]
        frozen = sorted({name for r in runs for name in r.diagnostics.get("unchanged_parameters", [])})
        scales = "-"
        moved = "-"
        if "d_start_mean" in runs[0].diagnostics:
            start = statistics.mean(r.diagnostics["d_start_mean"] for r in runs)
            end = statistics.mean(r.diagnostics["d_end_mean"] for r in runs)
            scales = f"{start:.3f} -> {end:.3f}"
            moved = (f"{statistics.mean(r.diagnostics['d_moved_mean'] for r in runs):.3f} / "
                     f"{min(r.diagnostics['d_moved_min'] for r in runs):.2g}")
        rows.append(f"| {variant} | {statistics.mean(values):.4f} +- {statistics.stdev(values):.4f} "
                    f"| {', '.join(frozen) or 'none'} | {scales} | {moved} |")
    return "\n".join(rows)


def plot_curves(groups: list[tuple[str, list[RunResult]]], path: Path) -> None:
    """One panel per task: every run's validation curve (thin) and the per-variant mean (thick)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (title, results) in zip(axes[0], groups, strict=True):
        for index, variant in enumerate(dict.fromkeys(r.variant for r in results)):
            runs = [r for r in results if r.variant == variant]
            color = f"C{index}"
            for run in runs:
                steps, values = zip(*run.curve, strict=True)
                ax.plot(steps, values, color=color, linewidth=0.6, alpha=0.5)
            steps = [point[0] for point in runs[0].curve]
            means = [statistics.mean(run.curve[i][1] for run in runs) for i in range(len(steps))]
            ax.plot(steps, means, color=color, linewidth=2, label=f"{variant} (mean of {len(runs)})")
        ax.set(xlabel="step", ylabel=results[0].metric, title=title)
        if results[0].metric.startswith("val_ppl"):
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--hidden-size", default="32")
    parser.add_argument("--state-size", default="8")
    parser.add_argument("--layers", default="2")
    parser.add_argument("--lr", default="3e-3")
    parser.add_argument("--lm-steps", default="400")
    parser.add_argument("--lm-seq-len", default="32")
    parser.add_argument("--lm-batch-size", default="16")
    parser.add_argument("--classify-steps", default="500")
    parser.add_argument("--classify-seq-len", default="64")
    parser.add_argument("--classify-batch-size", default="8")
    parser.add_argument("--eval-batches", default="32", help="final validation batches")
    parser.add_argument("--eval-every", default="50")
    parser.add_argument("--tasks", nargs="+", choices=("lm", "classify"), default=["lm", "classify"])
    parser.add_argument("--out", type=Path, default=Path("runs/hf_mamba_refine_quality"))
    parser.add_argument("--plot", type=Path, default=Path("docs/hf_mamba_refine_curves.png"))
    args = parser.parse_args()
    common = ["--seeds", *args.seeds, "--hidden-size", args.hidden_size, "--state-size", args.state_size,
              "--layers", args.layers, "--lr", args.lr, "--eval-batches", args.eval_batches,
              "--eval-every", args.eval_every, "--out", str(args.out)]
    groups = []
    if "lm" in args.tasks:
        lm = train_main(["lm", "--steps", args.lm_steps, "--seq-len", args.lm_seq_len,
                         "--batch-size", args.lm_batch_size, *common])
        groups.append((f"LM: validation perplexity per byte ({args.lm_steps} steps)", lm))
    if "classify" in args.tasks:
        classify = train_main(["classify", "--steps", args.classify_steps, "--seq-len", args.classify_seq_len,
                               "--batch-size", args.classify_batch_size, "--reorder-layers", "0", *common])
        groups.append((f"classification: validation accuracy ({args.classify_steps} steps)", classify))
    for title, results in groups:
        print(f"\n### {title}\n")
        print(markdown_table(results))
        print()
        print(summary_table(results))
        print()
        print(paired_table(results))
    plot_curves(groups, args.plot)
    print(f"\ncurves: {args.plot}")


if __name__ == "__main__":
    main()
