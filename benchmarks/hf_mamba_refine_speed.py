"""Speed of hf_mamba_refine's patched Mamba against the unpatched transformers MambaModel (same run).

For each config, times the forward pass (no grad) and forward+backward of an unpatched ``MambaModel`` and of
copies patched with ``stable=True``, ``reorder=True`` (all layers) and both, and prints the medians and their
ratios to the unpatched model. Variants are interleaved within each repetition, in a rotating order, so that
machine load affects them alike. A last row times the parametrisation alone (computing ``x_proj.weight``
in every layer), which is the whole extra work of ``stable`` per forward. On CPU both run transformers'
PyTorch path (the mamba-ssm kernels need CUDA).
"""

import argparse
import copy
import statistics
import time
import timeit
from collections.abc import Callable

import torch
from transformers import MambaConfig, MambaModel

from hf_mamba_refine import patch

CONFIGS = {
    "small": dict(hidden_size=64, state_size=8, num_hidden_layers=2, seq_len=64, batch=8),
    "medium": dict(hidden_size=128, state_size=16, num_hidden_layers=2, seq_len=128, batch=4),
}
VARIANTS = {
    "unpatched": None,
    "stable": {"stable": True},
    "reorder": {"stable": False, "reorder": True},
    "stable+reorder": {"stable": True, "reorder": True},
}


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_config(name: str, repeats: int, warmup: int) -> list[str]:
    spec = dict(CONFIGS[name])
    seq_len, batch = spec.pop("seq_len"), spec.pop("batch")
    torch.manual_seed(0)
    base = MambaModel(MambaConfig(vocab_size=256, **spec))
    models = {}
    for variant, options in VARIANTS.items():
        model = copy.deepcopy(base)
        if options is not None:
            patch(model, **options)
        models[variant] = model.train()
    tokens = torch.randint(0, 256, (batch, seq_len))

    def forward(model: MambaModel) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(tokens)

        return run

    def forward_backward(model: MambaModel) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(tokens).last_hidden_state.square().mean().backward()

        return run

    rows = []
    for mode, make in (("forward", forward), ("forward+backward", forward_backward)):
        times: dict[str, list[float]] = {variant: [] for variant in models}
        for index in range(warmup + repeats):
            names = list(models)
            for variant in names[index % len(names) :] + names[: index % len(names)]:  # rotate the order
                elapsed = _timed(make(models[variant]))
                if index >= warmup:
                    times[variant].append(elapsed)
        reference = statistics.median(times["unpatched"])
        if mode == "forward":
            forward_reference = reference
        for variant, values in times.items():
            median = statistics.median(values)
            rows.append(
                f"| {name} (L={seq_len}, B={batch}, H={spec['hidden_size']}, N={spec['state_size']}, "
                f"layers={spec['num_hidden_layers']}) | {mode} | {variant} | {1e3 * median:.1f} "
                f"| {median / reference:.3f} |"
            )
    x_proj = models["stable"].layers[0].mixer.x_proj
    access = min(timeit.repeat(lambda: x_proj.weight, number=200, repeat=5)) / 200
    total = access * spec["num_hidden_layers"]
    rows.append(
        f"| {name} | parametrised x_proj.weight, all layers (isolated) | stable | {1e3 * total:.3f} "
        f"| +{total / forward_reference:.4f} of the forward |"
    )
    return rows


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "medium"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| config | pass | variant | median ms | ratio vs unpatched |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        for row in bench_config(name, args.repeats, args.warmup):
            print(row, flush=True)


if __name__ == "__main__":
    main()
