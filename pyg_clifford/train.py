"""Train CG-EGNN (or the EGNN baseline) on charged n-body, a local MD17 / MMFF94 file or CMU motion capture.

Protocol (EGNN): predict positions at frame 40 from positions and velocities at frame 30 (MD17 and motion,
GMN: ``--delta-frame`` frames ahead); the reported number is the test MSE at the epoch of best validation MSE.
Checkpoints every epoch to ``OUT/checkpoint.pt`` (``--resume`` continues from it) and writes
``OUT/result.json``. Runs unchanged under
``torchrun --nproc_per_node=N`` (DDP with the gloo backend; each process trains on its shard).

Example::

    python -m pyg_clifford.train nbody --hops 2 --epochs 50 --out runs/nbody_h2
    python -m pyg_clifford.train md17 --root data/md17 --molecule aspirin --hops 2 --out runs/aspirin_h2
    python -m pyg_clifford.train md17 --root data/md17 --molecule aspirin --source mmff --out runs/asp_mmff
    python -m pyg_clifford.train motion --root data/cmu --hops 2 --out runs/motion_h2
"""

import argparse
import json
import math
import os
import pickle
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from .md17 import MD17Trajectory
from .model import CGEGNN
from .motion import CMUMotion
from .nbody import NBody
from .transforms import KHopPaths


class EGNNVelocity(nn.Module):
    r"""The EGNN paper's n-body model (Satorras et al., 2021, "EGNN-vel") built from egnn-pytorch's
    :class:`EGNN_Sparse` layers: every layer :math:`l` moves the positions by the library's equivariant
    update and by the input velocity scaled by an invariant of the current node features,

    .. math::
        x^{l+1}_i = x^l_i + \mathrm{mean}_j\, (x^l_j - x^l_i)\, \phi_x(m_{ij}) + \phi_v(h^l_i)\, v_i,

    with :math:`m_{ij}` from :math:`h_i, h_j, |x_i - x_j|^2` and the edge attributes. As in the paper,
    :math:`\phi_v` is a two-layer SiLU MLP per layer, aggregation is the mean, the coordinate differences
    are not normalised, and the initialisation is the reference code's: PyTorch's default for every linear
    layer (egnn-pytorch's Xavier-normal one makes the first steps explode on n-body) with the last layer of
    :math:`\phi_x` at Xavier gain 0.001; the last layer has no feature update (nothing reads it, so its
    parameters would never learn). Train it with gradient clipping (``python -m pyg_clifford.train
    --model egnn`` clips the gradient norm at 1 by default): without it the unbounded coordinate update
    feeds back through :math:`|x_i - x_j|^2` and training diverges at lr 1e-3-2e-3 on 500 n-body systems.

    Node inputs are ``data.node_attr`` when present (MD17: :math:`|v_i|, z_i / z_{max}`), else
    :math:`(q_i, |v_i|)` (n-body); edge inputs are ``data.edge_attr`` (:math:`q_i q_j`, or the hop type).

    Args:
        hidden_channels (int): feature width. (default: :obj:`64`)
        num_layers (int): layers. (default: :obj:`4`)
        node_scalars (int): invariant node inputs. (default: :obj:`2`)
        edge_scalars (int): edge attributes. (default: :obj:`1`)
    """

    def __init__(
        self, hidden_channels: int = 64, num_layers: int = 4, node_scalars: int = 2, edge_scalars: int = 1
    ) -> None:
        super().__init__()
        from egnn_pytorch.egnn_pytorch_geometric import EGNN_Sparse

        self.embedding = nn.Linear(node_scalars, hidden_channels)
        self.layers = nn.ModuleList(  # the last layer's feature update would be read by nothing: left out
            EGNN_Sparse(
                hidden_channels,
                edge_attr_dim=edge_scalars,
                m_dim=hidden_channels,
                aggr="mean",
                update_feats=layer < num_layers - 1,
            )
            for layer in range(num_layers)
        )
        self.velocity = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden_channels, hidden_channels), nn.SiLU(), nn.Linear(hidden_channels, 1)
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()
        for module in [*self.layers.modules(), *self.velocity.modules()]:
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.coors_mlp[-1].weight, gain=0.001)

    def forward(self, data: Batch) -> Tensor:
        """Predicted positions ``[N, 3]`` from a (batched) graph with ``pos, vel [N, 3]``, ``edge_index``,
        ``edge_attr [E, edge_scalars]`` and ``node_attr [N, node_scalars]`` or ``charge [N, 1]``."""
        if "node_attr" in data:
            node_attr = data.node_attr
        else:
            node_attr = torch.cat([data.charge, data.vel.norm(dim=-1, keepdim=True)], dim=-1)
        h, pos = self.embedding(node_attr), data.pos
        for layer, velocity in zip(self.layers, self.velocity, strict=True):
            out = layer(torch.cat([pos, h], dim=-1), data.edge_index, data.edge_attr)
            pos, h = out[:, :3] + velocity(h) * data.vel, out[:, 3:]
        return pos


EGNNBaseline = EGNNVelocity  # the name benchmarks/pyg_clifford_speed.py imports


def build_model(args: argparse.Namespace) -> nn.Module:
    # node / edge scalars: n-body charge, q_i q_j; MD17 (|v|, z), hop type; motion (|v|, 1), hop type + stick
    nodes, edges = {"nbody": (1, 1), "md17": (2, 2), "motion": (2, 3)}[args.task]
    if args.model == "egnn":
        return EGNNVelocity(args.hidden, args.layers, node_scalars=2, edge_scalars=edges)
    return CGEGNN(nodes, edges, args.hidden, args.layers, hops=args.hops, mlp_layers=args.mlp_layers)


def predict(model: nn.Module, data: Batch) -> Tensor:
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(core, CGEGNN):
        paths = [data[f"path{k}_index"] for k in range(2, core.hops + 1)]
        node_attr = data.node_attr if "node_attr" in data else data.charge
        return model(data.pos, data.edge_index, data.vel, node_attr, data.edge_attr, data.batch, paths)[0]
    return model(data)


@torch.no_grad()
def evaluate(model: nn.Module, data_list: list, batch_size: int, rank: int, world: int) -> float:
    """Mean squared error over all nodes and coordinates of ``data_list`` (sharded over processes)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for data in DataLoader(data_list[rank::world], batch_size=batch_size):
        total += torch.tensor([float(((predict(model, data) - data.y) ** 2).sum()), data.y.numel()])
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1])


def load_splits(args: argparse.Namespace, rank: int, world: int) -> dict[str, list]:
    """Build (rank 0 only) or load the cached splits, then precompute k-hop paths once per graph."""
    sizes = dict(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test, seed=args.data_seed)
    if args.task == "nbody":
        load = partial(NBody, args.root, **sizes)
    elif args.task == "motion":
        samples = {"train": args.num_train, "val": args.num_val, "test": args.num_test}

        def load(split: str) -> CMUMotion:
            return CMUMotion(args.root, split, max_samples=samples[split], delta_frame=args.delta_frame)
    else:
        load = partial(
            MD17Trajectory,
            args.root,
            args.molecule,
            source=args.source,
            delta_frame=args.delta_frame,
            skip=args.skip,
            **sizes,
        )
    if rank == 0:
        load(split="train")
    if world > 1:
        dist.barrier()
    transform = KHopPaths(max(args.hops, 1), args.path_mode)
    return {split: [transform(d) for d in load(split=split)] for split in ("train", "val", "test")}


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`train` with ``torch.load(weights_only=True)``: it holds only
    tensors, containers and primitives (model and Adam state dicts, history, arguments), so any other pickled
    object (which could run code on load) is refused with a ``ValueError``."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"Refusing to resume from {path}: it holds objects other than tensors, containers and "
            "primitives, which this trainer never writes (a tampered or foreign file). Delete it or drop "
            f"--resume. Details: {str(error).splitlines()[0]}"
        ) from error


def train(args: argparse.Namespace) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args, rank, world)

    torch.manual_seed(args.seed)
    model = build_model(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = {
        "epoch": 0,
        "best_val": float("inf"),
        "test_at_best": float("nan"),
        "best_epoch": 0,
        "history": [],
    }
    state["seconds"] = 0.0
    checkpoint_path = out / "checkpoint.pt"
    if args.resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["state"]
        if rank == 0:
            print(f"resumed from {checkpoint_path} at epoch {state['epoch']}")
    ddp_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    train_shard = splits["train"][rank::world]
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        start = time.perf_counter()
        for group in optimizer.param_groups:  # cosine decay from the epoch count, so resume may extend a run
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / args.epochs))
        ddp_model.train()
        generator = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        loader = DataLoader(train_shard, batch_size=args.batch_size, shuffle=True, generator=generator)
        running = 0.0
        for data in tqdm(
            loader, desc=f"epoch {epoch}/{args.epochs}", disable=rank != 0 or args.quiet, leave=False
        ):
            optimizer.zero_grad()
            loss = ((predict(ddp_model, data) - data.y) ** 2).mean()
            loss.backward()
            if args.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            running += loss.item() / len(loader)
        val = evaluate(ddp_model, splits["val"], args.batch_size, rank, world)
        if val < state["best_val"]:
            test = evaluate(ddp_model, splits["test"], args.batch_size, rank, world)
            state.update(best_val=val, test_at_best=test, best_epoch=epoch)
        state["epoch"] = epoch
        state["seconds"] += time.perf_counter() - start
        state["history"].append({"epoch": epoch, "train_mse": running, "val_mse": val})
        if rank == 0:
            print(
                f"epoch {epoch}: train {running:.5f} val {val:.5f} "
                f"(best val {state['best_val']:.5f}, test at best {state['test_at_best']:.5f})",
                flush=True,
            )
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
                "args": vars(args),
            }
            torch.save(checkpoint, checkpoint_path.with_suffix(".tmp"))
            checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    result = {
        "task": args.task,
        "model": args.model,
        "hops": args.hops if args.model == "cgegnn" else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": world,
        "best_epoch": state["best_epoch"],
        "best_val_mse": state["best_val"],
        "test_mse": state["test_at_best"],
        "train_seconds": state["seconds"],
        "args": vars(args),
        "history": state["history"],
    }
    if rank == 0:
        (out / "result.json").write_text(json.dumps(result, indent=2))
        print(f"test MSE at best validation epoch {state['best_epoch']}: {state['test_at_best']:.5f}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyg_clifford.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="run directory (checkpoint.pt, result.json)")
    common.add_argument("--hops", type=int, default=1, help="longest k-hop path order of CG-EGNN")
    common.add_argument(
        "--path-mode", choices=("walk", "shell"), default="walk", help="k-hop path enumeration"
    )
    common.add_argument("--hidden", type=int, default=28, help="hidden channels")
    common.add_argument("--layers", type=int, default=4, help="message-passing layers")
    common.add_argument("--mlp-layers", type=int, default=1, help="blocks per CEMLP")
    common.add_argument("--epochs", type=int, default=100)
    common.add_argument("--batch-size", type=int, default=100)
    common.add_argument("--lr", type=float, default=None, help="default: 4e-3 (CGENN) or 5e-4 (EGNN paper)")
    common.add_argument(
        "--weight-decay", type=float, default=None, help="default: 1e-4 (CGENN) or 1e-12 (EGNN's code)"
    )
    common.add_argument(
        "--clip-grad",
        type=float,
        default=None,
        help="max gradient norm, 0: off (default: 1 for egnn, off for cgegnn)",
    )
    common.add_argument("--data-seed", type=int, default=0, help="seed of the simulation / frame sampling")
    common.add_argument("--seed", type=int, default=0, help="seed of the model and the shuffling")
    common.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch default)")
    common.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    common.add_argument("--quiet", action="store_true", help="no per-batch progress bar")

    tasks = parser.add_subparsers(dest="task", required=True)
    nbody = tasks.add_parser("nbody", parents=[common], help="charged 5-body system, frame 30 -> 40")
    nbody.add_argument("--model", choices=("cgegnn", "egnn"), default="cgegnn", help="egnn: egnn-pytorch")
    nbody.add_argument("--num-train", type=int, default=3000)
    nbody.add_argument("--num-val", type=int, default=2000)
    nbody.add_argument("--num-test", type=int, default=2000)
    nbody.add_argument("--root", default="data/nbody", help="data cache directory")

    md17 = tasks.add_parser(
        "md17", parents=[common], help="MD17 trajectory from a local *_dft.npz or *_mmff.npz (GMN protocol)"
    )
    md17.add_argument("--model", choices=("cgegnn", "egnn"), default="cgegnn", help="egnn: egnn-pytorch")
    md17.add_argument("--root", required=True, help="directory holding raw/{molecule}_{source}.npz")
    md17.add_argument("--molecule", required=True, help="e.g. aspirin")
    md17.add_argument(
        "--source",
        choices=("dft", "mmff"),
        default="dft",
        help="dft: MD17's {molecule}_dft.npz; mmff: {molecule}_mmff.npz from python -m pyg_clifford.mmff",
    )
    md17.add_argument("--delta-frame", type=int, default=3000, help="frames between input and target")
    md17.add_argument("--skip", type=int, default=10000, help="frames dropped at each end")
    md17.add_argument("--num-train", type=int, default=500)
    md17.add_argument("--num-val", type=int, default=2000)
    md17.add_argument("--num-test", type=int, default=2000)

    motion = tasks.add_parser(
        "motion", parents=[common], help="CMU motion capture, subject 35 walking, local motion.pkl (GMN)"
    )
    motion.add_argument("--model", choices=("cgegnn", "egnn"), default="cgegnn", help="egnn: egnn-pytorch")
    motion.add_argument("--root", required=True, help="directory holding raw/motion.pkl (and raw/split.pkl)")
    motion.add_argument("--delta-frame", type=int, default=30, help="frames between input and target")
    motion.add_argument("--num-train", type=int, default=200, help="GMN: 200 (18 start frames x 11 trials)")
    motion.add_argument("--num-val", type=int, default=600)
    motion.add_argument("--num-test", type=int, default=600)
    return parser


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the model-dependent defaults, each model's reference setting: lr 4e-3 (CG-EGNN, as CGENN) or 5e-4
    (EGNN); weight decay 1e-4 (CGENN) or 1e-12 (the EGNN paper's n-body code); gradient clipping off
    (CG-EGNN) or at norm 1 (EGNN)."""
    if args.lr is None:
        args.lr = 4e-3 if args.model == "cgegnn" else 5e-4
    if args.weight_decay is None:
        args.weight_decay = 1e-4 if args.model == "cgegnn" else 1e-12
    if args.clip_grad is None:
        args.clip_grad = 0.0 if args.model == "cgegnn" else 1.0
    return args


def main(argv: list[str] | None = None) -> dict:
    args = resolve_defaults(build_parser().parse_args(argv))
    if args.hops < 1:
        raise ValueError(f"Expected --hops >= 1, got {args.hops}")
    return train(args)


if __name__ == "__main__":
    main()
