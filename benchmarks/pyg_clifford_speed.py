"""Speed of CG-EGNN against egnn-pytorch's EGNN (CPU, training steps), ratios from one run.

1. Training steps (forward, backward, Adam step) on n-body batches (``--graphs`` fully connected 5-node
   graphs) in two configurations: the CGENN n-body one (CG-EGNN ``hidden_channels=28, num_layers=3,
   mlp_layers=2`` against 4 ``EGNN_Sparse`` layers of width 64) and a matched one (width 16, 4 layers, one
   CEMLP block, against EGNN width 16). Memory is the activation memory of a step: the bytes of the distinct
   tensor storages that autograd saves for backward (``saved_tensors_hooks``), deterministic on the CPU.
   Every model runs in a fresh subprocess; the models are interleaved over ``--rounds`` rounds and each ratio
   is the median over rounds of the ratio within a round, so the load of a shared machine cancels out. Both
   the wall-clock time and the CPU time of the (single-threaded) step are reported: on a shared machine the
   wall clock also counts the time the process waits for a core, the CPU time does not.
   ``--before DIR`` adds rows for another version of the package (``DIR/pyg_clifford``, e.g. the commit
   before a change: ``git archive <commit> pyg_clifford | tar -x -C DIR``), measured in the same rounds.
   ``--compiled`` adds a row for ``torch.compile(model, fullgraph=True)`` (inductor; the compilation, minutes
   on a small CPU, happens in the untimed warm-up and is reported separately). ``--adam-foreach`` gives
   every model ``Adam(foreach=True)`` (the multi-tensor step) instead of PyTorch's CPU default (a loop over
   the parameter tensors).
2. Scaling: random 3D point clouds of 100 to 10,000 nodes with a fixed density (radius graphs, mean degree
   about ``--degree``); time per forward + backward divided by the number of edges (hops 1) or edges plus
   paths (hops 2). A flat column means linear growth.

    python -m benchmarks.pyg_clifford_speed
    python -m benchmarks.pyg_clifford_speed --before /tmp/before --skip-scaling
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import radius_neighbors_graph
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_clifford import CGEGNN, KHopPaths, khop_paths
from pyg_clifford.nbody import nbody_graph, simulate_charged
from pyg_clifford.train import EGNNBaseline

CONFIGS = {  # name: (CG-EGNN width, layers, mlp_layers, EGNN width, EGNN layers)
    "cgenn": (28, 3, 2, 64, 4),
    "matched": (16, 4, 1, 16, 4),
}
REPO = Path(__file__).resolve().parents[1]


def nbody_batch(num_graphs: int, hops: int) -> Batch:
    locs, vels, charges = simulate_charged(num_graphs, num_frames=2, sample_every=10, progress=False)
    transform = KHopPaths(max(hops, 1))
    graphs = [
        transform(nbody_graph(locs[s, 0], vels[s, 0], locs[s, 1], charges[s])) for s in range(num_graphs)
    ]
    return next(iter(DataLoader(graphs, batch_size=num_graphs)))


def build(name: str, config: str) -> tuple[torch.nn.Module, int]:
    width, layers, mlp_layers, egnn_width, egnn_layers = CONFIGS[config]
    if name == "egnn":
        return EGNNBaseline(egnn_width, egnn_layers), 0
    hops = int(name.removesuffix("_compiled")[-1])
    model = CGEGNN(1, 1, width, layers, hops=hops, mlp_layers=mlp_layers)
    return (torch.compile(model, fullgraph=True) if name.endswith("_compiled") else model), hops


def step(model: torch.nn.Module, hops: int, data: Batch) -> None:
    if hops:
        paths = [data[f"path{k}_index"] for k in range(2, hops + 1)]
        args = (data.pos, data.edge_index, data.vel, data.charge, data.edge_attr, data.batch, paths)
        pred = model(*args, num_graphs=data.num_graphs)[0]
    else:
        pred = model(data)
    ((pred - data.y) ** 2).mean().backward()


def measure(name: str, config: str, num_graphs: int, repeats: int, foreach: bool | None = None) -> dict:
    """Run in a subprocess: the median time of a training step (forward, backward, Adam) and the bytes
    saved for backward. ``foreach``: Adam's implementation (``None``: PyTorch's default, a loop over the
    parameters on the CPU; ``True``: the multi-tensor one)."""
    torch.manual_seed(0)
    model, hops = build(name, config)
    data = nbody_batch(num_graphs, max(hops, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=foreach)

    def train_step() -> None:
        optimizer.zero_grad()
        step(model, hops, data)
        optimizer.step()

    start = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        train_step()
    warmup_s = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.thread_time()
        train_step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.thread_time() - cpu_start)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    optimizer.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step(model, hops, data)
    return {
        "step_ms": 1e3 * float(np.median(times)),
        "cpu_ms": 1e3 * float(np.median(cpu_times)),
        "warmup_s": warmup_s,
        "saved_mib": sum(storages.values()) / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_measure(name: str, config: str, args: argparse.Namespace, source: str | None) -> dict:
    command = [sys.executable, "-m", "benchmarks.pyg_clifford_speed", "--measure", name, "--config", config]
    command += ["--graphs", str(args.graphs), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    command += ["--adam-foreach"] if args.adam_foreach else []
    env = dict(os.environ)
    if source is not None:  # another version of the package first on the path (``-m`` puts the cwd first)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, str(REPO), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=source or REPO, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_tables(args: argparse.Namespace) -> None:
    versions = [("before", args.before), ("after", None)] if args.before else [("", None)]
    rows = [("egnn", "", None)] + [
        (name, version, source) for version, source in versions for name in ("cgegnn_h1", "cgegnn_h2")
    ]
    if args.compiled:
        rows.append(("cgegnn_h1_compiled", versions[-1][0], None))
    for config in args.configs:
        width, layers, mlp_layers, egnn_width, egnn_layers = CONFIGS[config]
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):  # interleaved: every model once per round
            for name, version, source in rows:
                results.setdefault((name, version), []).append(run_measure(name, config, args, source))
        base = results[("egnn", "")]
        print(
            f"\n### {config}: CG-EGNN width {width}, {layers} layers, mlp_layers {mlp_layers} vs EGNN width "
            f"{egnn_width}, {egnn_layers} layers; {args.graphs} n-body graphs x 5 nodes, Adam step "
            f"({'foreach' if args.adam_foreach else 'default'}), "
            f"{args.threads} thread(s), median of {args.rounds} interleaved rounds\n"
        )
        print(
            "| model | version | parameters | step (ms) | vs EGNN | step CPU (ms) | vs EGNN (CPU) "
            "| saved for backward (MiB) | vs EGNN |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for (name, version), runs in results.items():
            cells = []
            for key in ("step_ms", "cpu_ms"):
                ratios = [r[key] / b[key] for r, b in zip(runs, base, strict=True)]
                cells.append(
                    f"{np.median([r[key] for r in runs]):.0f} | {np.median(ratios):.2f}x "
                    f"(range {min(ratios):.2f}-{max(ratios):.2f})"
                )
            print(
                f"| {name} | {version or '-'} | {runs[0]['parameters']:,} | {' | '.join(cells)} | "
                f"{runs[0]['saved_mib']:.1f} | {runs[0]['saved_mib'] / base[0]['saved_mib']:.1f}x |",
                flush=True,
            )
        if args.compiled:
            compiled = results[("cgegnn_h1_compiled", versions[-1][0])]
            print(f"\ncompilation (in the warm-up of cgegnn_h1_compiled): {compiled[0]['warmup_s']:.0f} s")
        for version, _ in versions:
            hops1, hops2 = results[("cgegnn_h1", version)], results[("cgegnn_h2", version)]
            ratios = [b["step_ms"] / a["step_ms"] for a, b in zip(hops1, hops2, strict=True)]
            print(
                f"\nhops 2 / hops 1{' (' + version + ')' if version else ''}: step {np.median(ratios):.2f}x, "
                f"memory {hops2[0]['saved_mib'] / hops1[0]['saved_mib']:.1f}x"
            )


def radius_cloud(num_nodes: int, degree: float, seed: int = 0) -> Batch:
    """Uniform points in a cube of unit density; the radius gives ``degree`` neighbours on average."""
    rng = np.random.default_rng(seed)
    side = num_nodes ** (1 / 3)
    points = rng.uniform(0, side, size=(num_nodes, 3))
    radius = (3 * degree / (4 * np.pi)) ** (1 / 3)
    adjacency = radius_neighbors_graph(points, radius, mode="connectivity", include_self=False).tocoo()
    pos = torch.from_numpy(points).float()
    edge_index = torch.from_numpy(np.stack([adjacency.col, adjacency.row])).long()
    charge = torch.from_numpy(rng.choice([-1.0, 1.0], size=(num_nodes, 1))).float()
    return Batch(
        pos=pos,
        vel=torch.randn(num_nodes, 3),
        charge=charge,
        edge_index=edge_index,
        edge_attr=charge[edge_index[0]] * charge[edge_index[1]],
        y=pos + 0.1,
        batch=torch.zeros(num_nodes, dtype=torch.long),
    )


def scaling(args: argparse.Namespace) -> None:
    print(
        f"\n### Scaling with graph size (radius graphs, mean degree ~{args.degree}, "
        f"width {args.scale_width}, {args.scale_layers} layer(s))\n"
    )
    print("| nodes | edges | 2-hop paths | model | fwd+bwd (ms) | us per edge+path |")
    print("|---|---|---|---|---|---|")
    for num_nodes in args.sizes:
        data = radius_cloud(num_nodes, args.degree)
        num_edges = data.edge_index.size(1)
        start = time.perf_counter()
        paths = khop_paths(data.edge_index, num_nodes, 2)
        enumerate_ms = 1e3 * (time.perf_counter() - start)
        data.path2_index = paths[0]
        num_paths = paths[0].size(1)
        for name in ("cgegnn_h1", "cgegnn_h2", "egnn"):
            if name == "cgegnn_h2" and num_nodes > args.max_nodes_hops2:
                continue
            torch.manual_seed(0)
            model, hops = build(name, "scale")
            units = num_edges + (num_paths if hops == 2 else 0)
            step(model, hops, data)
            start = time.perf_counter()
            step(model, hops, data)
            elapsed = time.perf_counter() - start
            print(
                f"| {num_nodes:,} | {num_edges:,} | {num_paths:,} | {name} | {1e3 * elapsed:.0f} "
                f"| {1e6 * elapsed / units:.1f} |",
                flush=True,
            )
        print(
            f"| {num_nodes:,} | {num_edges:,} | {num_paths:,} | path enumeration | {enumerate_ms:.0f} | "
            f"{1e3 * enumerate_ms / num_paths:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--graphs", type=int, default=100, help="n-body graphs per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the models")
    parser.add_argument("--before", help="directory holding another version of pyg_clifford to compare")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--degree", type=float, default=6.0)
    parser.add_argument("--scale-width", type=int, default=4, help="width in the scaling table")
    parser.add_argument("--scale-layers", type=int, default=1, help="layers in the scaling table")
    parser.add_argument("--max-nodes-hops2", type=int, default=3000, help="largest graph timed with hops 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--compiled", action="store_true", help="add torch.compile(CG-EGNN hops 1)")
    parser.add_argument(
        "--adam-foreach", action="store_true", help="Adam(foreach=True) for every model (default: PyTorch's)"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one model in a subprocess
    parser.add_argument("--config", default="cgenn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    CONFIGS["scale"] = (args.scale_width, args.scale_layers, 1, args.scale_width, args.scale_layers)

    if args.measure:
        foreach = True if args.adam_foreach else None
        print(json.dumps(measure(args.measure, args.config, args.graphs, args.repeats, foreach)))
        return
    if not args.skip_training:
        training_tables(args)
    if not args.skip_scaling:
        scaling(args)


if __name__ == "__main__":
    main()
