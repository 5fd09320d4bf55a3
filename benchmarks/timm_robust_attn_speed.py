"""Time and memory of KDE / RKDE / SPKDE / MoM attention against timm's fused ``Attention``.

ViT-Tiny (dim 192, 3 heads) and ViT-Small (dim 384, 6 heads) shapes, 197 tokens, batch 8; forward (eval,
no grad) and forward+backward (train). Every variant shares the baseline's weights and is measured in the
same run, interleaved round by round; the table gives the best time of ``--repeats`` rounds (on CPU the
process's CPU time, robust to other load on a shared machine) and ratios to the baseline. Then a whole
training step of timm's ``vit_tiny_patch16_224`` / ``vit_small_patch16_224`` with softmax and with RKDE.
Memory: peak allocated bytes on CUDA; on CPU the bytes saved for backward (activation memory of training).

    python benchmarks/timm_robust_attn_speed.py [--device cuda] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import timm
import torch
from timm.layers import Attention

from timm_robust_attn import attention_class, convert_attention

SHAPES = {"vit_tiny": (192, 3), "vit_small": (384, 6)}
VARIANTS: dict[str, tuple[str, dict]] = {
    "softmax (timm fused)": ("attn", {}),
    "kde": ("kde", {}),
    "rkde huber, 1 iter": ("rkde", {"iterations": 1}),
    "rkde hampel, 2 iter": ("rkde", {"loss": "hampel", "iterations": 2}),
    "rkde huber, 1 iter, grad through w": ("rkde", {"iterations": 1, "weight_grad": True}),
    "spkde (exact active set)": ("spkde", {}),
    "mom, 10 blocks": ("mom", {"num_blocks": 10}),
}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while running ``fn``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of ``fn``: wall clock on CUDA; on CPU this process's CPU time (one thread), which other jobs
    on a shared machine inflate far less than the wall clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def bench_vit_step(model_name: str, args: argparse.Namespace, device: torch.device,
                   ) -> list[tuple[str, float]]:
    """Best time of a whole training step (forward, cross-entropy, backward, AdamW step) of a timm ViT with
    softmax and with one-iteration RKDE attention, same weights, interleaved round by round."""
    torch.manual_seed(0)
    models = {"softmax (timm fused)": timm.create_model(model_name, num_classes=10).to(device)}
    models["rkde huber, 1 iter"] = timm.create_model(model_name, num_classes=10, attn_layer="rkde").to(device)
    models["rkde huber, 1 iter"].load_state_dict(models["softmax (timm fused)"].state_dict())
    optimizers = {label: torch.optim.AdamW(model.parameters(), lr=1e-5) for label, model in models.items()}
    x = torch.randn(args.vit_batch, 3, 224, 224, device=device)
    y = torch.randint(10, (args.vit_batch,), device=device)

    def step(label: str) -> None:
        models[label].train()
        loss = torch.nn.functional.cross_entropy(models[label](x), y)
        optimizers[label].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[label].step()

    for label in models:
        step(label)
    times: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(args.vit_repeats):
        for label in models:
            times[label].append(timed(lambda label=label: step(label), device))
    return [(label, min(values)) for label, values in times.items()]


def bench_shape(dim: int, heads: int, args: argparse.Namespace, device: torch.device) -> list[tuple]:
    reference = Attention(dim, num_heads=heads, qkv_bias=True).to(device)
    modules = {}
    for label, (name, options) in VARIANTS.items():
        module = Attention(dim, num_heads=heads, qkv_bias=True).to(device)
        module.load_state_dict(reference.state_dict())
        holder = convert_attention(torch.nn.Sequential(module), name, **options)
        assert isinstance(holder[0], attention_class(name, **options))
        modules[label] = holder[0]
    x = torch.randn(args.batch, args.tokens, dim, device=device)

    def forward(module):
        module.eval()
        with torch.no_grad():
            module(x)

    def train_step(module):
        module.train()
        xg = x.detach().requires_grad_()
        module(xg).sum().backward()

    times = {(label, kind): [] for label in modules for kind in ("fwd", "fwd+bwd")}
    for _ in range(args.warmup):
        for module in modules.values():
            forward(module)
            train_step(module)
    for _ in range(args.repeats):
        for label, module in modules.items():
            times[label, "fwd"].append(timed(lambda m=module: forward(m), device))
            times[label, "fwd+bwd"].append(timed(lambda m=module: train_step(m), device))
    rows = []
    for label, module in modules.items():
        if device.type == "cuda":
            memory = peak_bytes(lambda m=module: train_step(m), device)
        else:
            module.train()
            memory = saved_bytes(lambda m=module: m(x.detach().requires_grad_()))
        best = [min(times[label, kind]) for kind in ("fwd", "fwd+bwd")]
        rows.append((label, *best, memory))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (best reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--vit-batch", type=int, default=8, help="batch of the whole-ViT training step")
    parser.add_argument("--vit-repeats", type=int, default=5, help="timed rounds of the ViT step (0 skips)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    memory_label = "peak CUDA MiB (fwd+bwd)" if device.type == "cuda" else "saved-for-backward MiB"
    clock = "wall clock" if device.type == "cuda" else "process CPU time"
    print(f"\ndevice {device}, {args.threads} thread(s), batch {args.batch}, {args.tokens} tokens, "
          f"best of {args.repeats}, {clock}\n")
    print("| shape | attention | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio | "
          f"{memory_label} | mem ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        rows = bench_shape(*SHAPES[shape], args, device)
        _, base_fwd, base_train, base_mem = rows[0]
        for label, fwd, train, memory in rows:
            print(f"| {shape} | {label} | {1e3 * fwd:.2f} | {fwd / base_fwd:.2f}x | {1e3 * train:.2f} | "
                  f"{train / base_train:.2f}x | {memory / 2**20:.1f} | {memory / base_mem:.2f}x |",
                  flush=True)

    if args.vit_repeats:
        print(f"\nWhole ViT training step (224x224, 197 tokens, batch {args.vit_batch}, AdamW), best of "
              f"{args.vit_repeats}\n")
        print("| model | attention | step ms | ratio |")
        print("|---|---|---|---|")
        for shape in args.shapes:
            rows = bench_vit_step(f"{shape}_patch16_224", args, device)
            for label, seconds in rows:
                ratio = seconds / rows[0][1]
                print(f"| {shape} | {label} | {1e3 * seconds:.0f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
