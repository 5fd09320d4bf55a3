"""Forward+backward time and memory of one equivariant layer on a batch of networks, against ``nfn``.

Compares ``nfn_ext.MonomialLinear`` and ``nfn_ext.MAGEPLinear`` with the ``nfn`` package's ``NPLinear`` and
``HNPLinear`` on the digits-zoo architectures (MLP 64-16-16-10, CNN 1-8-8-8-10 with 3x3 kernels), all in
one run, and prints ratios against NP and HNP. ``Monomial rN`` / ``MAGEP rN`` are the layers with
factorised rank-N maps on the fixed input/output widths (``--rank``). Steps are interleaved (one step of each
layer per round, rounds repeated) so that load from other processes hits every layer alike; the time is the
median over rounds. Memory is the peak CUDA allocation on a GPU; on CPU it is the bytes of tensors saved
for backward plus the output (``torch.autograd.graph.saved_tensors_hooks``).

    OMP_NUM_THREADS=1 python -m benchmarks.nfn_ext_speed --batch 32 --channels 16 --rank 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from nfn.common import network_spec_from_wsfeat
from nfn.layers import HNPLinear, NPLinear
from torch import Tensor, nn

from nfn_ext import MAGEPLinear, MonomialLinear, WeightSpace
from nfn_ext.zoo import make_network


def _layers(ws: WeightSpace, channels: int, rank: int) -> dict[str, Callable[[WeightSpace], list[Tensor]]]:
    spec = network_spec_from_wsfeat(ws.to_nfn())
    mods: dict[str, nn.Module] = {
        "NP (nfn)": NPLinear(spec, channels, channels),
        "HNP (nfn)": HNPLinear(spec, channels, channels),
        "Monomial": MonomialLinear(ws.spec, channels, channels),
        f"Monomial r{rank}": MonomialLinear(ws.spec, channels, channels, rank=rank),
        "MAGEP": MAGEPLinear(ws.spec, channels, channels),
        f"MAGEP r{rank}": MAGEPLinear(ws.spec, channels, channels, rank=rank),
    }
    fns: dict[str, Callable[[WeightSpace], list[Tensor]]] = {}
    for name, mod in mods.items():
        mod.to(ws.weights[0].device)
        if "nfn" in name:
            fns[name] = lambda x, m=mod: [*(out := m(x.to_nfn())).weights, *out.biases]
        else:
            fns[name] = lambda x, m=mod: [*(out := m(x)).weights, *out.biases]
        fns[name].params = sum(p.numel() for p in mod.parameters())  # type: ignore[attr-defined]
    return fns


def _step(fn: Callable[[WeightSpace], list[Tensor]], ws: WeightSpace) -> None:
    sum(t.square().mean() for t in fn(ws)).backward()


def _memory(fn: Callable[[WeightSpace], list[Tensor]], ws: WeightSpace) -> int:
    if ws.weights[0].is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(fn, ws)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = fn(ws)
    return sum(seen.values()) + sum(o.numel() * o.element_size() for o in outs)


def _times(
    fns: dict[str, Callable[[WeightSpace], list[Tensor]]], ws: WeightSpace, reps: int
) -> dict[str, float]:
    """Median fwd+bwd seconds of each layer over ``reps`` interleaved rounds (after 3 warm-up rounds)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(reps + 3):
        for name, fn in fns.items():
            if ws.weights[0].is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(fn, ws)
            if ws.weights[0].is_cuda:
                torch.cuda.synchronize()
            if i >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32, help="networks per batch")
    parser.add_argument("--channels", type=int, default=16, help="input = output channels of the layer")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--rank", type=int, default=8, help="rank of the factorised Monomial/MAGEP rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"device {args.device}, batch {args.batch} networks, {args.channels} -> {args.channels} channels, "
        f"median of {args.reps} interleaved fwd+bwd steps"
    )
    for arch in ("mlp", "cnn"):
        base = WeightSpace.from_module(make_network(arch, "relu", 16 if arch == "mlp" else 8))
        ws = base.map(
            lambda t: torch.randn(
                args.batch, args.channels, *t.shape[2:], device=args.device, requires_grad=True
            )
        )
        fns = _layers(ws, args.channels, args.rank)
        times = _times(fns, ws, args.reps)
        stats = {name: (times[name], _memory(fn, ws), fn.params) for name, fn in fns.items()}
        np_t, np_m, _ = stats["NP (nfn)"]
        hnp_t, hnp_m, _ = stats["HNP (nfn)"]
        print(f"\n{arch} dims {ws.spec.dims}\n")
        print("| layer | params | fwd+bwd ms | time / NP | time / HNP | memory MiB | mem / NP | mem / HNP |")
        print("|---|---|---|---|---|---|---|---|")
        for name, (t, m, p) in stats.items():
            print(
                f"| {name} | {p:,} | {t * 1e3:.2f} | {t / np_t:.2f} | {t / hnp_t:.2f} | {m / 2**20:.2f} | "
                f"{m / np_m:.2f} | {m / hnp_m:.2f} |"
            )


if __name__ == "__main__":
    main()
