"""Speed of hf_mamba_refine's patched Mamba against the unpatched transformers MambaModel (same run).

For each config, times three passes of an unpatched ``MambaModel`` and of copies patched with ``stable=True``,
``reorder=True`` (layer 0, the default) and both, and prints the medians and their ratios to the unpatched
model:

- ``forward``: inference (``eval()``, no grad) on the whole sequence;
- ``forward+backward``: training mode, loss on the last hidden state;
- ``decode``: ``--decode-steps`` one-token steps with the recurrent cache after a short prefill, as in
  ``generate()`` (reordering is not causal and is left out).

``stable, cached`` runs the same stable model inside ``torch.nn.utils.parametrize.cached()``, entered around
each timed call: the constrained weight is then computed once per call (once per forward, once for all the
decode steps) instead of at every access. Variants are interleaved within each repetition, in a rotating
order, so that machine load affects them alike; the times are the process's CPU time by default
(``--clock``). A last row times the parametrisation alone (computing
``x_proj.weight`` in every layer), which is the whole extra work of ``stable`` per forward. On CPU all run
transformers' PyTorch path (the mamba-ssm kernels need CUDA).
"""

import argparse
import contextlib
import copy
import statistics
import time
import timeit
from collections.abc import Callable, Iterator

import torch
from torch.nn.utils import parametrize
from transformers import MambaConfig, MambaModel

from hf_mamba_refine import patch

CONFIGS = {
    "small": dict(hidden_size=64, state_size=8, num_hidden_layers=2, seq_len=64, batch=8),
    "medium": dict(hidden_size=128, state_size=16, num_hidden_layers=2, seq_len=128, batch=4),
    "large": dict(hidden_size=128, state_size=16, num_hidden_layers=4, seq_len=256, batch=2),
}
VARIANTS = {
    "unpatched": None,
    "stable": {"stable": True},
    "stable, cached": {"stable": True},
    "reorder": {"stable": False, "reorder": True},
    "stable+reorder": {"stable": True, "reorder": True},
}
MODES = {
    "forward": ("unpatched", "stable", "stable, cached", "reorder", "stable+reorder"),
    "forward+backward": ("unpatched", "stable", "reorder", "stable+reorder"),
    "decode": ("unpatched", "stable", "stable, cached"),
}


CLOCKS = {"process": time.process_time, "wall": time.perf_counter}


def _timed(fn: Callable[[], None], cached: bool, clock: Callable[[], float]) -> float:
    context = parametrize.cached() if cached else contextlib.nullcontext()
    start = clock()
    with context:
        fn()
    return clock() - start


def bench_config(
    name: str, repeats: int, warmup: int, decode_steps: int, modes: list[str], clock: Callable[[], float]
) -> Iterator[str]:
    """Markdown rows, yielded as each pass finishes."""
    spec = dict(CONFIGS[name])
    seq_len, batch = spec.pop("seq_len"), spec.pop("batch")
    torch.manual_seed(0)
    base = MambaModel(MambaConfig(vocab_size=256, **spec))
    models = {}
    for variant, options in VARIANTS.items():
        model = copy.deepcopy(base)
        if options is not None:
            patch(model, **options)
        models[variant] = model
    tokens = torch.randint(0, 256, (batch, seq_len))

    def forward(model: MambaModel) -> Callable[[], None]:
        def run() -> None:
            model.eval()
            with torch.no_grad():
                model(tokens, use_cache=False)

        return run

    def forward_backward(model: MambaModel) -> Callable[[], None]:
        def run() -> None:
            model.train()
            model.zero_grad(set_to_none=True)
            model(tokens).last_hidden_state.square().mean().backward()

        return run

    def decode(model: MambaModel) -> Callable[[], None]:
        model.eval()
        with torch.no_grad():
            cache = model(tokens[:, :16], use_cache=True).cache

        def run() -> None:
            with torch.no_grad():
                for step in range(decode_steps):
                    model(tokens[:, 16 + step % 16 : 17 + step % 16], cache=cache, use_cache=True)

        return run

    label = (f"{name} (L={seq_len}, B={batch}, H={spec['hidden_size']}, N={spec['state_size']}, "
             f"layers={spec['num_hidden_layers']})")
    makers = {"forward": forward, "forward+backward": forward_backward, "decode": decode}
    for mode in modes:
        runs = {variant: makers[mode](models[variant]) for variant in MODES[mode]}
        times: dict[str, list[float]] = {variant: [] for variant in runs}
        names = list(runs)
        for index in range(warmup + repeats):
            for variant in names[index % len(names) :] + names[: index % len(names)]:  # rotate the order
                elapsed = _timed(runs[variant], variant.endswith("cached"), clock)
                if index >= warmup:
                    times[variant].append(elapsed)
        reference = statistics.median(times["unpatched"])
        if mode == "forward":
            forward_reference = reference
        for variant, values in times.items():
            median = statistics.median(values)
            ratios = sorted(v / r for v, r in zip(values, times["unpatched"], strict=True))
            yield (f"| {label} | {mode} | {variant} | {1e3 * median:.2f} | {median / reference:.3f} "
                   f"| {ratios[len(ratios) // 4]:.3f} to {ratios[(3 * len(ratios)) // 4]:.3f} |")
    if "forward" in modes:
        x_proj = models["stable"].layers[0].mixer.x_proj
        access = min(timeit.repeat(lambda: x_proj.weight, number=200, repeat=5)) / 200
        total = access * spec["num_hidden_layers"]
        yield (
            f"| {name} | parametrised x_proj.weight, all layers (isolated) | stable | {1e3 * total:.3f} "
            f"| +{total / forward_reference:.4f} of the forward | |"
        )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "medium", "large"])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="process",
                        help="process: CPU time of this (one-thread) process, immune to waiting for a core "
                             "on a shared machine; wall: elapsed time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} time, "
          f"median of {args.repeats}\n")
    print("| config | pass | variant | median ms | ratio of medians | paired ratio, quartiles |")
    print("|---|---|---|---|---|---|")
    for name in args.configs:
        clock = CLOCKS[args.clock]
        for row in bench_config(name, args.repeats, args.warmup, args.decode_steps, args.modes, clock):
            print(row, flush=True)


if __name__ == "__main__":
    main()
