"""Do k-hop messages help? CG-EGNN hops 1, 2, 3, a parameter-matched wider hops 1 and the EGNN baseline.

Tasks: the charged n-body system (EGNN protocol: frame 30 -> 40) and MD17 molecules under MMFF94 molecular
dynamics (GMN protocol, ``{molecule}_mmff.npz`` generated here with ``python -m pyg_clifford.mmff`` if
missing). Every model is trained with the same data, epochs, batch size and seeds; seed ``s`` fixes the
model initialisation and the shuffling order, so the runs of one seed are paired. The EGNN baseline is the
EGNN paper's n-body model (velocity term in every layer) built from egnn-pytorch's layers, with its
reference weight decay (1e-12) and its gradient norm clipped at 1 (it diverges without); CG-EGNN has
CGENN's weight decay (1e-4). Every arm's learning rate is tuned on the validation set with the first seed,
over ``--lrs`` (CG-EGNN) or ``--egnn-lrs`` (EGNN); the other seeds use the best one. ``h1-wide`` is hops 1
with the width whose parameter count is closest to hops 2's, so that a win of hops 2 is not just more
parameters.

Reported per task: test MSE at the best validation epoch, mean +- std over seeds, the paired differences
hops 2 - hops 1 (and hops 2 - wide hops 1, hops 3 - hops 1, hops 3 - hops 2, against EGNN) with 95 % t
confidence intervals over seeds, the validation curves (``OUT/<task>_val.png``), the learning-rate grids
and the training time. Each run is a ``python -m pyg_clifford.train`` call in
``OUT/<task>/<model>_lr<lr>_s<seed>``: finished runs are read from their ``result.json``, interrupted ones
resume from their checkpoint, so the script can be stopped and restarted. ``--cost STEPS`` trains nothing:
it times a few training steps and evaluation batches of every arm at the given sizes and writes the CPU
time the study would take (``OUT/cost.md``).

Full protocol (weeks of one CPU core; ``--cost 2`` measures it, see docs/pyg_clifford.md)::

    python -m benchmarks.pyg_clifford_khop --epochs 200 --lrs 1e-3 4e-3 1e-2

Reduced molecule study that fits ~40 min of one CPU core (the one in README)::

    python -m benchmarks.pyg_clifford_khop --tasks malonaldehyde aspirin --md17-sizes 100 100 100 \\
        --epochs 30 --batch-size 10 --hidden 8 --layers 2 --lrs 1e-3 4e-3 1e-2 --egnn-lrs 5e-4 2e-3 1e-2
"""

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from pyg_clifford import CGEGNN, MD17Trajectory, NBody, train
from pyg_clifford.mmff import MD17_SMILES
from pyg_clifford.mmff import main as generate_mmff

CONFIG_KEYS = (
    "num_train",
    "num_val",
    "num_test",
    "batch_size",
    "hidden",
    "layers",
    "lr",
    "hops",
    "model",
    "clip_grad",
    "weight_decay",
)


def matched_width(hidden: int, layers: int, hops: int, scalars: int) -> int:
    """Width of a hops-1 CGEGNN whose parameter count is closest to that of a hops-``hops`` one."""

    def count(width: int, k: int) -> int:
        return sum(p.numel() for p in CGEGNN(scalars, scalars, width, layers, hops=k).parameters())

    target = count(hidden, hops)
    return min(range(hidden, 4 * hidden + 1), key=lambda width: abs(count(width, 1) - target))


def run(task: str, name: str, seed: int, extra: list[str], args: argparse.Namespace) -> dict:
    """Train one model (or read its finished result); ``extra`` holds the model's own options."""
    out = Path(args.out) / task / f"{name}_s{seed}"
    result_path = out / "result.json"
    if task == "nbody":
        sizes, data = args.nbody_sizes, ["nbody", "--root", str(Path(args.root) / "nbody")]
    else:
        sizes = args.md17_sizes
        data = ["md17", "--root", str(Path(args.root) / "md17"), "--molecule", task, "--source", "mmff"]
        data += ["--delta-frame", str(args.delta_frame), "--skip", str(args.skip)]
    argv = [*data, "--out", str(out), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    argv += ["--num-train", str(sizes[0]), "--num-val", str(sizes[1]), "--num-test", str(sizes[2])]
    argv += ["--seed", str(seed), "--threads", str(args.threads), "--resume", "--quiet", *extra]
    if result_path.exists():
        result = json.loads(result_path.read_text())
        wanted = vars(train.resolve_defaults(train.build_parser().parse_args(argv)))
        stored = {"clip_grad": 0.0, **result["args"]}  # runs from before --clip-grad trained unclipped
        changed = [k for k in CONFIG_KEYS if str(stored.get(k)) != str(wanted.get(k))]
        if changed:
            raise ValueError(f"{out} holds a run with other {changed}: use another --out for this setup")
        if result["history"] and result["history"][-1]["epoch"] >= args.epochs:
            return result
    tqdm.write(f"--- {task}/{name}_s{seed}: python -m pyg_clifford.train {' '.join(argv)}")
    return train.main(argv)


def unchanged_parameters(result: dict, run_dir: Path) -> list[str]:
    """Parameter tensors of a finished run that equal their initial values (they did not learn): the initial
    model is rebuilt from the run's seed, as ``train`` builds it, and compared with its checkpoint."""
    args = argparse.Namespace(**result["args"])
    torch.manual_seed(args.seed)
    initial = train.build_model(args).state_dict()
    final = train.load_checkpoint(run_dir / "checkpoint.pt")["model"]
    names = [name for name, _ in train.build_model(args).named_parameters()]
    return [name for name in names if torch.equal(initial[name], final[name])]


def no_motion_mse(task: str, args: argparse.Namespace) -> float:
    """Test MSE of predicting no motion (target = input positions): the floor every model starts from."""
    if task == "nbody":
        sizes = dict(zip(("num_train", "num_val", "num_test"), args.nbody_sizes, strict=True))
        test = NBody(str(Path(args.root) / "nbody"), "test", **sizes, progress=False)
    else:
        sizes = dict(zip(("num_train", "num_val", "num_test"), args.md17_sizes, strict=True))
        root = str(Path(args.root) / "md17")
        frames = dict(delta_frame=args.delta_frame, skip=args.skip)
        test = MD17Trajectory(root, task, "test", "mmff", **frames, **sizes)
    return float((torch.cat([d.pos - d.y for d in test]) ** 2).mean())


def models(task: str, args: argparse.Namespace) -> dict[str, Callable[[float], list[str]]]:
    """The arms of one task, by name: each maps a learning rate to the arm's training options."""

    def cgegnn(hops: int, width: int) -> Callable[[float], list[str]]:
        def options(lr: float) -> list[str]:
            sizes = ["--hidden", str(width), "--layers", str(args.layers)]
            return ["--hops", str(hops), *sizes, "--lr", str(lr)]

        return options

    arms = {f"h{k}": cgegnn(k, args.hidden) for k in args.hops}
    if 1 in args.hops and 2 in args.hops:
        arms["h1-wide"] = cgegnn(1, matched_width(args.hidden, args.layers, 2, 1 if task == "nbody" else 2))
    arms["egnn"] = partial(egnn_options, args=args)
    return arms


def egnn_options(lr: float, args: argparse.Namespace) -> list[str]:
    """EGNN-vel's options: its paper width and depth, gradient norm clipped at 1 (it diverges without)."""
    return ["--model", "egnn", "--hidden", str(args.egnn_hidden), "--layers", str(args.egnn_layers)] + [
        "--lr",
        str(lr),
        "--clip-grad",
        "1",
    ]


def learning_rates(name: str, args: argparse.Namespace) -> list[float]:
    """The grid an arm's learning rate is tuned over (EGNN: ``--egnn-lrs``, CG-EGNN: ``--lrs``)."""
    return args.egnn_lrs if name == "egnn" else args.lrs


def mean_std(values: list[float]) -> str:
    """Mean +- sample std over the finite values; diverged runs (NaN / inf) are counted, not averaged."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return f"diverged in all {len(values)} seeds"
    std = statistics.stdev(finite) if len(finite) > 1 else float("nan")
    text = f"{statistics.fmean(finite):.5f} +- {std:.5f}"
    return text if len(finite) == len(values) else f"{text} ({len(values) - len(finite)} seeds diverged)"


def paired(a: list[float], b: list[float]) -> str:
    """Mean of the paired differences a - b with its 95 % t confidence interval over seeds (seeds where
    either run diverged are left out and counted)."""
    from scipy.stats import t as student

    diff = np.asarray(a) - np.asarray(b)
    dropped = int((~np.isfinite(diff)).sum())
    diff = diff[np.isfinite(diff)]
    note = f"; {dropped} diverged seeds left out" if dropped else ""
    if diff.size < 2:
        return f"{diff.mean() if diff.size else float('nan'):+.5f} (fewer than 2 seeds: no interval{note})"
    half = student.ppf(0.975, diff.size - 1) * diff.std(ddof=1) / math.sqrt(diff.size)
    verdict = "lower" if diff.mean() + half < 0 else "higher" if diff.mean() - half > 0 else "no difference"
    return f"{diff.mean():+.5f} [{diff.mean() - half:+.5f}, {diff.mean() + half:+.5f}] ({verdict}{note})"


def plot(task: str, results: dict[str, list[dict]], path: Path) -> None:
    """Validation MSE per epoch, mean over seeds with min-max band, one line per model (log scale)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, runs in results.items():
        curves = np.array([[h["val_mse"] for h in r["history"]] for r in runs])
        epochs = np.arange(1, curves.shape[1] + 1)
        axes.plot(epochs, curves.mean(0), label=f"{name} ({runs[0]['parameters']:,} params)")
        axes.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
    axes.set(xlabel="epoch", ylabel="validation MSE", yscale="log", title=f"{task}: validation curves")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def late_gain(runs: list[dict]) -> float:
    """Mean relative drop of the best validation MSE over the last 20 % of epochs (near 0: flattened)."""
    gains = []
    for r in runs:
        val = [h["val_mse"] for h in r["history"]]
        cut = max(1, int(0.8 * len(val)))
        gains.append(1 - np.nanmin(val) / np.nanmin(val[:cut]) if np.isfinite(val[:cut]).any() else np.nan)
    return float(np.nanmean(gains)) if np.isfinite(gains).any() else float("nan")


def report(
    task: str, results: dict[str, list[dict]], grids: dict[str, dict[float, float]], args: argparse.Namespace
) -> str:
    sizes = args.nbody_sizes if task == "nbody" else args.md17_sizes
    what = "n-body (charged, 5 bodies, frame 30 -> 40)" if task == "nbody" else f"{task} (MMFF94 MD, GMN)"
    lines = [
        f"### {what}: {sizes[0]}/{sizes[1]}/{sizes[2]} train/val/test, {args.epochs} epochs, batch "
        f"{args.batch_size}, seeds {' '.join(map(str, args.seeds))}",
        "",
        "| model | parameters | lr | best epoch | test MSE at best val (mean +- std) | last-20% val gain "
        "| time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        tests = [r["test_mse"] for r in runs]
        lines.append(
            f"| {name} | {runs[0]['parameters']:,} | {runs[0]['args']['lr']:g} "
            f"| {statistics.fmean(r['best_epoch'] for r in runs):.1f} | {mean_std(tests)} "
            f"| {100 * late_gain(runs):.1f}% | {statistics.fmean(r['train_seconds'] for r in runs):.0f} |"
        )
    lines.append("")
    test = {name: [r["test_mse"] for r in runs] for name, runs in results.items()}
    for a, b in (("h2", "h1"), ("h2", "h1-wide"), ("h3", "h1"), ("h3", "h2"), ("h2", "egnn"), ("h1", "egnn")):
        if a in test and b in test:
            lines.append(f"- paired {a} - {b}: {paired(test[a], test[b])}")
    lines.append(f"- predicting no motion (x_t): test MSE {no_motion_mse(task, args):.5f}")
    for name, grid in grids.items():
        if len(grid) > 1:
            scores = ", ".join(f"{lr:g}: {val:.5f}" for lr, val in grid.items())
            lines.append(f"- {name} lr tuned on validation (seed {args.seeds[0]}), val MSE by lr: {scores}")
    frozen = {
        f"{name}: {p}"
        for name, runs in results.items()
        for r in runs
        for p in unchanged_parameters(r, Path(args.out) / task / Path(r["args"]["out"]).name)
    }
    lines.append(f"- parameters left at their initial values: {', '.join(sorted(frozen)) or 'none'}")
    total = sum(r["train_seconds"] for runs in results.values() for r in runs)
    lines.append(f"- training time of this table: {total:.0f} s (1 thread); curves: `{task}_val.png`")
    return "\n".join(lines)


def time_steps(task: str, options: list[str], args: argparse.Namespace) -> tuple[int, float, float]:
    """Parameters, seconds per training step (forward, backward, clipping as in training, Adam) and seconds
    per evaluation batch of one arm at ``--batch-size``, median over ``--cost`` timed repeats after one
    untimed warm-up. Per-step cost does not depend on the split sizes (every n-body graph has 5 nodes, every
    MD17 graph is the molecule's), so the graphs come from small splits of one batch each."""
    data = ["nbody", "--root", str(Path(args.root) / "nbody")]
    if task != "nbody":
        data = ["md17", "--root", str(Path(args.root) / "md17"), "--molecule", task, "--source", "mmff"]
        data += ["--delta-frame", str(args.delta_frame), "--skip", str(args.skip)]
    sizes = ["--num-train", str(args.batch_size), "--num-val", "1", "--num-test", "1"]
    argv = [*data, *sizes, "--out", str(Path(args.out) / "cost"), "--threads", str(args.threads), *options]
    config = train.resolve_defaults(train.build_parser().parse_args(argv))
    torch.set_num_threads(args.threads)
    batch = next(iter(DataLoader(train.load_splits(config, 0, 1)["train"], batch_size=args.batch_size)))
    torch.manual_seed(0)
    model = train.build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def step() -> None:
        optimizer.zero_grad()
        ((train.predict(model, batch) - batch.y) ** 2).mean().backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()

    def evaluate() -> None:
        with torch.no_grad():
            train.predict(model, batch)

    seconds = []
    for function in (step, evaluate):
        model.train(function is step)
        function()
        times = []
        for _ in range(args.cost):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        seconds.append(statistics.median(times))
    return sum(p.numel() for p in model.parameters()), seconds[0], seconds[1]


def cost_table(args: argparse.Namespace) -> str:
    """Seconds per epoch of every arm at the configured sizes, timed over a few steps, and the CPU time of
    the whole study: per task, ``len(seeds)`` runs of each arm plus the extra learning rates of its grid
    (seed 0), each ``--epochs`` epochs; an epoch is ``ceil(train / batch)`` training steps and an evaluation
    of the validation and the test split (the test split is evaluated only at improving epochs, so this is
    an upper bound; under cosine decay most epochs improve)."""
    lines = [
        f"### Cost of the study at {args.epochs} epochs, batch {args.batch_size}, seeds {len(args.seeds)}, "
        f"CG-EGNN width {args.hidden} x {args.layers} layers, EGNN {args.egnn_hidden} x {args.egnn_layers} "
        f"({args.threads} thread)",
        "",
        "| task | model | parameters | train step (s) | eval batch (s) | epoch (s) | runs | CPU hours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total = 0.0
    for task in tqdm(args.tasks, desc="timing tasks"):
        num_train, num_val, num_test = args.nbody_sizes if task == "nbody" else args.md17_sizes
        for name, options in tqdm(models(task, args).items(), desc=task, leave=False):
            grid = learning_rates(name, args)
            params, step, evaluation = time_steps(task, options(grid[0]), args)
            batches = [math.ceil(size / args.batch_size) for size in (num_train, num_val, num_test)]
            epoch = batches[0] * step + (batches[1] + batches[2]) * evaluation
            runs = len(args.seeds) + len(grid) - 1
            hours = runs * args.epochs * epoch / 3600
            total += hours
            lines.append(
                f"| {task} | {name} | {params:,} | {step:.3f} | {evaluation:.3f} | {epoch:.1f} | {runs} "
                f"| {hours:.1f} |"
            )
    lines += ["", f"Total: {total:.1f} CPU hours ({total / 24:.1f} days of one core)."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pyg_clifford_khop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", nargs="+", default=["nbody", "aspirin", "ethanol"],
                        help=f"nbody and/or MD17 molecules ({', '.join(sorted(MD17_SMILES))})")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2, 3], help="CG-EGNN hop orders")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--nbody-sizes", type=int, nargs=3, default=[3000, 2000, 2000], metavar="N")
    parser.add_argument("--md17-sizes", type=int, nargs=3, default=[500, 2000, 2000], metavar="N")
    parser.add_argument("--hidden", type=int, default=28, help="CG-EGNN multivector channels")
    parser.add_argument("--layers", type=int, default=4, help="CG-EGNN layers")
    parser.add_argument("--lrs", type=float, nargs="+", default=[4e-3],
                        help="CG-EGNN learning rates, tuned per arm on validation with the first seed "
                        "(default: CGENN's 4e-3 only)")  # fmt: skip
    parser.add_argument("--egnn-hidden", type=int, default=64, help="EGNN width (EGNN paper: 64)")
    parser.add_argument("--egnn-layers", type=int, default=4, help="EGNN layers (EGNN paper: 4)")
    parser.add_argument("--egnn-lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3])
    parser.add_argument("--frames", type=int, default=50_000, help="MMFF94 frames per molecule (0.5 fs)")
    parser.add_argument("--delta-frame", type=int, default=3000, help="MD17 frames ahead (GMN: 3000)")
    parser.add_argument("--skip", type=int, default=10000, help="MD17 frames dropped at each end (GMN)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost", type=int, default=0, metavar="STEPS",
                        help="do not train: time STEPS training steps and evaluation batches of each "
                        "arm; write the study's CPU-time estimate (OUT/cost.md)")  # fmt: skip
    parser.add_argument("--root", default="data", help="data cache (nbody/, md17/raw/*_mmff.npz)")
    parser.add_argument("--out", default="runs/khop", help="run directories, plots and summary.md")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    molecules = [task for task in args.tasks if task != "nbody"]
    if molecules:
        raw = Path(args.root) / "md17" / "raw"
        generate_mmff([*molecules, "--frames", str(args.frames), "--out", str(raw)])
    if args.cost:
        summary = cost_table(args)
        (out / "cost.md").write_text(summary)
        print(summary)
        return summary
    start = time.perf_counter()
    sections = []
    for task in tqdm(args.tasks, desc="tasks"):
        first = args.seeds[0]
        results: dict[str, list[dict]] = {}
        grids: dict[str, dict[float, float]] = {}
        for name, options in models(task, args).items():
            # tuned on validation with the first seed; that run is the first seed's run of the arm
            grid = learning_rates(name, args)
            tuned = {lr: run(task, f"{name}_lr{lr:g}", first, options(lr), args) for lr in grid}
            best = min(tuned, key=lambda lr: tuned[lr]["best_val_mse"])  # a diverged run's best is inf
            grids[name] = {lr: r["best_val_mse"] for lr, r in tuned.items()}
            results[name] = [tuned[best]]
            for seed in tqdm(args.seeds[1:], desc=f"{task} {name} seeds", leave=False):
                results[name].append(run(task, f"{name}_lr{best:g}", seed, options(best), args))
        plot(task, results, out / f"{task}_val.png")
        sections.append(report(task, results, grids, args))
        (out / "summary.md").write_text("\n\n".join(sections) + "\n")
    wall = time.perf_counter() - start
    summary = "\n\n".join(sections) + f"\n\nwall time of this invocation: {wall:.0f} s\n"
    (out / "summary.md").write_text(summary)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
