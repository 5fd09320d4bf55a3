"""n-body accuracy: CG-EGNN with hops 1, 2 (3) against egnn-pytorch's EGNN under one training budget.

Every model sees the same simulated data (sizes and seed below) for the same number of epochs with batch
size 100; the reported number is the test MSE at the epoch of best validation MSE (EGNN protocol). Each run
is a ``python -m pyg_clifford.train`` call in ``OUT/<name>``, resumed from its checkpoint if interrupted and
skipped if already finished, so the script can be stopped and restarted. Prints a Markdown table.

    python -m benchmarks.pyg_clifford_nbody --epochs 12 --num-train 1000
"""

import argparse
import json
from pathlib import Path

from pyg_clifford import train


def run(name: str, extra: list[str], args: argparse.Namespace) -> dict:
    out = Path(args.out) / name
    result_path = out / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result["history"] and result["history"][-1]["epoch"] >= args.epochs:
            return result
    argv = [
        "nbody",
        "--out",
        str(out),
        "--epochs",
        str(args.epochs),
        "--num-train",
        str(args.num_train),
        "--num-val",
        str(args.num_val),
        "--num-test",
        str(args.num_test),
        "--root",
        args.root,
        "--layers",
        str(args.layers),
        "--threads",
        str(args.threads),
        "--resume",
        "--quiet",
        *extra,
    ]
    print(f"--- {name}: python -m pyg_clifford.train {' '.join(argv)}", flush=True)
    train.main(argv)
    return json.loads(result_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 2], help="CG-EGNN hop orders to train")
    parser.add_argument("--no-egnn", action="store_true", help="skip the egnn-pytorch baseline")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=28, help="CG-EGNN multivector channels")
    parser.add_argument("--egnn-hidden", type=int, default=64, help="EGNN feature width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default="data/nbody")
    parser.add_argument("--out", default="runs/bench_nbody")
    args = parser.parse_args()

    configs = [(f"cgegnn_h{k}", ["--hops", str(k), "--hidden", str(args.hidden)]) for k in args.hops]
    if not args.no_egnn:
        configs.append(("egnn", ["--model", "egnn", "--hidden", str(args.egnn_hidden)]))
    results = {name: run(name, extra, args) for name, extra in configs}

    print(
        f"\nn-body (charged, 5 bodies), {args.num_train}/{args.num_val}/{args.num_test} simulations, "
        f"{args.epochs} epochs, batch 100, {args.layers} layers\n"
    )
    print("| model | hops | parameters | lr | best epoch | val MSE | test MSE at best val | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results.values():
        print(
            f"| {'CG-EGNN' if r['model'] == 'cgegnn' else 'EGNN (egnn-pytorch)'} | {r['hops'] or '-'} "
            f"| {r['parameters']:,} | {r['args']['lr']:g} | {r['best_epoch']} | {r['best_val_mse']:.5f} "
            f"| {r['test_mse']:.5f} | {r['train_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
