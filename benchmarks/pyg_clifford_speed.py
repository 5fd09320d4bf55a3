"""Speed of CG-EGNN against egnn-pytorch's EGNN (CPU, forward + backward), from one run.

1. Throughput (graphs/s) and peak memory on n-body batches (100 fully connected 5-node graphs) at matched
   width (``--width`` multivector channels for CG-EGNN, ``--width`` features for EGNN) and depth, as ratios.
   Memory is the activation memory of a training step: the bytes of the distinct tensor storages that
   autograd saves for the backward pass (``saved_tensors_hooks``), which is deterministic on the CPU, unlike
   the resident set size. Each model is timed in a fresh subprocess.
2. Scaling: random 3D point clouds of 100 to 10,000 nodes with a fixed density (radius graphs, mean degree
   about ``--degree``); time per forward + backward divided by the number of edges (hops 1) or edges plus
   paths (hops 2). A flat column means linear growth.

    python -m benchmarks.pyg_clifford_speed
"""

import argparse
import json
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

REPO = Path(__file__).resolve().parents[1]


def nbody_batch(num_graphs: int, hops: int) -> Batch:
    locs, vels, charges = simulate_charged(num_graphs, num_frames=2, sample_every=10, progress=False)
    transform = KHopPaths(max(hops, 1))
    graphs = [
        transform(nbody_graph(locs[s, 0], vels[s, 0], locs[s, 1], charges[s])) for s in range(num_graphs)
    ]
    return next(iter(DataLoader(graphs, batch_size=num_graphs)))


def build(name: str, width: int, layers: int) -> tuple[torch.nn.Module, int]:
    if name == "egnn":
        return EGNNBaseline(width, layers), 0
    hops = int(name[-1])
    return CGEGNN(1, 1, width, layers, hops=hops), hops


def step(model: torch.nn.Module, hops: int, data: Batch) -> None:
    if isinstance(model, CGEGNN):
        paths = [data[f"path{k}_index"] for k in range(2, hops + 1)]
        pred = model(data.pos, data.edge_index, data.vel, data.charge, data.edge_attr, data.batch, paths)[0]
    else:
        pred = model(data)
    ((pred - data.y) ** 2).mean().backward()


def measure(name: str, width: int, layers: int, num_graphs: int, repeats: int) -> dict:
    """Run in a subprocess: graphs/s of forward + backward and bytes saved for backward."""
    torch.manual_seed(0)
    model, hops = build(name, width, layers)
    data = nbody_batch(num_graphs, max(hops, 1))
    step(model, hops, data)  # warm-up
    model.zero_grad()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(model, hops, data)
        times.append(time.perf_counter() - start)
        model.zero_grad()
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step(model, hops, data)
    return {
        "graphs_per_s": num_graphs / float(np.median(times)),
        "saved_mib": sum(storages.values()) / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


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
            model, hops = build(name, args.scale_width, args.scale_layers)
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
    parser.add_argument("--width", type=int, default=16, help="channels (CG-EGNN) / features (EGNN)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--graphs", type=int, default=100, help="n-body graphs per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--degree", type=float, default=6.0)
    parser.add_argument("--scale-width", type=int, default=4, help="width in the scaling table")
    parser.add_argument("--scale-layers", type=int, default=1, help="layers in the scaling table")
    parser.add_argument("--max-nodes-hops2", type=int, default=3000, help="largest graph timed with hops 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one model in a subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.measure:
        print(json.dumps(measure(args.measure, args.width, args.layers, args.graphs, args.repeats)))
        return

    results = {}
    for name in ("egnn", "cgegnn_h1", "cgegnn_h2"):
        command = [sys.executable, "-m", "benchmarks.pyg_clifford_speed", "--measure", name]
        command += ["--width", str(args.width), "--layers", str(args.layers), "--graphs", str(args.graphs)]
        command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])

    base = results["egnn"]
    print(
        f"### n-body batches ({args.graphs} graphs x 5 nodes, fully connected), width {args.width}, "
        f"{args.layers} layers, {args.threads} thread(s), CPU\n"
    )
    print("| model | parameters | graphs/s | vs EGNN | saved for backward (MiB) | vs EGNN |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['parameters']:,} | {r['graphs_per_s']:.0f} | "
            f"{r['graphs_per_s'] / base['graphs_per_s']:.2f}x | {r['saved_mib']:.1f} | "
            f"{r['saved_mib'] / base['saved_mib']:.1f}x |"
        )
    if not args.skip_scaling:
        scaling(args)


if __name__ == "__main__":
    main()
