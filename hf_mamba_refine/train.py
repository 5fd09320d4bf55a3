"""Train small Mamba models on the standard-library corpus: ``python -m hf_mamba_refine.train lm|classify``.

``lm``: character-level language models in the variants ``baseline`` (transformers' Mamba), ``stable``
(``patch(stable=True)``, PSD) and ``convergent`` (``patch(stable=True, regime="convergent")``, the ablation);
reports validation perplexity per byte. ``classify``: which standard-library package a snippet comes from,
``plain`` vs ``reorder`` (``patch(stable=False, reorder=True)``) with ``MambaForSequenceClassification``;
reports validation accuracy. Every run checkpoints to ``OUT/<task>-<variant>-seed<k>/checkpoint.pt`` and
resumes from it (loaded with ``torch.load(weights_only=True)``: a checkpoint that holds anything but tensors
and plain containers is refused); finished runs write ``result.json`` and are skipped;
``OUT/<task>-results.json`` gathers all. With ``--eval-every k`` the validation metric is also measured every
``k`` steps on ``--curve-batches`` batches' worth of validation windows spread over the validation set (the
curve in ``result.json``). Runs of one
seed are paired: the same initial weights (before patching) and the same batches in every variant.
"""

import argparse
import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm
from transformers import MambaConfig, MambaForCausalLM

from .classification import MambaForSequenceClassification
from .data import DEFAULT_PACKAGES, VOCAB_SIZE, char_corpus, package_snippets
from .patching import find_mixers, patch

LM_VARIANTS = {
    "baseline": None,
    "stable": {"stable": True},
    "convergent": {"stable": True, "regime": "convergent"},
}
CLASSIFY_VARIANTS = {"plain": None, "reorder": {"stable": False, "reorder": True}}


@dataclass
class RunResult:
    """One finished run; ``curve`` holds ``[step, validation metric]`` pairs, ``diagnostics`` what learned."""

    task: str
    variant: str
    seed: int
    steps: int
    train_loss: float
    metric: str
    value: float
    seconds: float
    curve: list[list[float]] = field(default_factory=list)
    diagnostics: dict[str, object] = field(default_factory=dict)


def load_checkpoint(path: Path) -> dict:
    """``torch.load(path, weights_only=True)``, with a clear error for a file that is not plain weights."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refusing to resume from {path}: it holds objects other than tensors and plain containers, "
            f"which weights_only loading does not execute ({str(error).splitlines()[0]}); delete the file to "
            "restart the run"
        ) from error


def build_config(args: argparse.Namespace, **extra: object) -> MambaConfig:
    """A small ``MambaConfig`` from the command line, or from ``--config`` (a JSON file of overrides)."""
    values = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=args.hidden_size,
        state_size=args.state_size,
        num_hidden_layers=args.layers,
        pad_token_id=0,
        **extra,
    )
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    return MambaConfig(**values)


def _lm_batch(data: Tensor, starts: Tensor, length: int) -> Tensor:
    return data[starts[:, None] + torch.arange(length + 1)].long()


def _train(
    run_dir: Path,
    model: nn.Module,
    steps: int,
    args: argparse.Namespace,
    loss_fn: Callable,
    seed: int,
    evaluate: Callable[[nn.Module], float],
) -> tuple[float, list[list[float]]]:
    """AdamW, cosine schedule, checkpoints every ``args.checkpoint_every`` steps.

    Returns the mean training loss of the last tenth of the steps and the validation curve (``evaluate``
    every ``args.eval_every`` steps, also at step 0 and at the end; none if ``args.eval_every`` is 0).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    generator = torch.Generator().manual_seed(seed)
    checkpoint = run_dir / "checkpoint.pt"
    step, losses, curve = 0, [], []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        step, losses, curve = state["step"], state["losses"], state["curve"]

    def record() -> None:
        if args.eval_every and (step % args.eval_every == 0 or step == steps):
            curve.append([step, evaluate(model)])
            model.train()

    if step == 0:
        record()
    model.train()
    with tqdm(total=steps, initial=step, desc=run_dir.name, leave=False) as bar:
        while step < steps:
            loss = loss_fn(model, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            record()
            if step % args.checkpoint_every == 0 or step == steps:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "generator": generator.get_state(),
                    "step": step,
                    "losses": losses,
                    "curve": curve,
                }
                torch.save(state, checkpoint)
    tail = losses[-max(1, steps // 10) :]
    return sum(tail) / len(tail), curve


def _spread(items: Tensor, count: int) -> Tensor:
    """``count`` entries of ``items`` evenly spread over it (the validation subset of the curves)."""
    return items[torch.linspace(0, len(items) - 1, min(count, len(items))).long()]


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _diagnostics(model: nn.Module, initial: dict[str, Tensor], scales: Tensor | None) -> dict[str, object]:
    """Parameters that never moved in training; for ``stable``, how far the diagonal scales ``d`` moved."""
    frozen = [name for name, p in model.named_parameters() if torch.equal(p.detach(), initial[name])]
    result: dict[str, object] = {"unchanged_parameters": frozen}
    if scales is not None:
        final = _scales(model)
        result.update(d_start_mean=float(scales.abs().mean()), d_end_mean=float(final.abs().mean()),
                      d_moved_mean=float((final - scales).abs().mean()),
                      d_moved_min=float((final - scales).abs().min()))
    return result


def _scales(model: nn.Module) -> Tensor:
    """The diagonal scales ``d`` (diagonal of ``S_B``; that of ``S_C`` is 1), ``[layers, N]``."""
    rows = []
    for mixer in find_mixers(model):
        rank, n = mixer.time_step_rank, mixer.ssm_state_size
        rows.append(mixer.x_proj.weight[rank : rank + n].diagonal().detach().clone())
    return torch.stack(rows)


def run_lm(args: argparse.Namespace, variant: str, seed: int) -> RunResult:
    """Train one language model and measure its validation perplexity per byte."""
    train, val = (char_corpus(split, size, args.out / "data") for split, size in
                  (("train", args.max_bytes), ("val", args.max_bytes // 10)))
    torch.manual_seed(seed)
    model = MambaForCausalLM(build_config(args))
    if LM_VARIANTS[variant] is not None:
        patch(model, **LM_VARIANTS[variant])
    initial = _snapshot(model)
    scales = _scales(model) if LM_VARIANTS[variant] is not None else None
    run_dir = args.out / f"lm-{variant}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    length = args.seq_len

    def loss_fn(net: nn.Module, generator: torch.Generator) -> Tensor:
        starts = torch.randint(0, len(train) - length - 1, (args.batch_size,), generator=generator)
        batch = _lm_batch(train, starts, length)
        return net(batch, labels=batch).loss

    starts = torch.linspace(0, len(val) - length - 2, args.eval_batches * args.batch_size).long()

    def perplexity(net: nn.Module, batches: int | None = None) -> float:
        chosen = starts if batches is None else _spread(starts, batches * args.batch_size)
        net.eval()
        total = 0.0
        with torch.no_grad():
            for chunk in chosen.split(args.batch_size):
                batch = _lm_batch(val, chunk, length)
                total += float(net(batch, labels=batch).loss) * len(chunk)
        return math.exp(total / len(chosen))

    begin = time.perf_counter()
    train_loss, curve = _train(run_dir, model, args.steps, args, loss_fn, seed,
                               lambda net: perplexity(net, args.curve_batches))
    value = perplexity(model)
    seconds = time.perf_counter() - begin
    return RunResult("lm", variant, seed, args.steps, train_loss, "val_ppl_per_byte", value, seconds, curve,
                     _diagnostics(model, initial, scales))


def run_classify(args: argparse.Namespace, variant: str, seed: int) -> RunResult:
    """Train one package classifier and measure its validation accuracy (balanced-class batches)."""
    packages = tuple(args.packages)
    train_x, train_y = package_snippets(packages, args.seq_len, "train")
    val_x, val_y = package_snippets(packages, args.seq_len, "val")
    pools = [torch.nonzero(train_y == label).squeeze(1) for label in range(len(packages))]
    torch.manual_seed(seed)
    model = MambaForSequenceClassification(build_config(args, num_labels=len(packages)))
    if CLASSIFY_VARIANTS[variant] is not None:
        options = dict(CLASSIFY_VARIANTS[variant], tau=args.tau, hard=args.hard)
        if args.reorder_layers is not None:
            options["reorder_layers"] = args.reorder_layers
        patch(model, **options)
    initial = _snapshot(model)
    run_dir = args.out / f"classify-{variant}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)

    def loss_fn(net: nn.Module, generator: torch.Generator) -> Tensor:
        labels = torch.randint(0, len(packages), (args.batch_size,), generator=generator)
        sizes = torch.tensor([len(pool) for pool in pools])[labels]
        picks = (torch.rand(args.batch_size, generator=generator) * sizes).long()
        index = torch.stack([pools[label][pick] for label, pick in zip(labels.tolist(), picks.tolist(),
                                                                        strict=True)])
        return F.cross_entropy(net(train_x[index].long()).logits, labels)

    chosen = torch.linspace(0, len(val_y) - 1, min(len(val_y), args.eval_batches * args.batch_size)).long()

    def accuracy(net: nn.Module, batches: int | None = None) -> float:
        picked = chosen if batches is None else _spread(chosen, batches * args.batch_size)
        net.eval()
        correct = 0
        with torch.no_grad():
            for chunk in picked.split(args.batch_size):
                correct += int((net(val_x[chunk].long()).logits.argmax(-1) == val_y[chunk]).sum())
        return correct / len(picked)

    begin = time.perf_counter()
    train_loss, curve = _train(run_dir, model, args.steps, args, loss_fn, seed,
                               lambda net: accuracy(net, args.curve_batches))
    value = accuracy(model)
    seconds = time.perf_counter() - begin
    return RunResult("classify", variant, seed, args.steps, train_loss, "val_accuracy", value, seconds, curve,
                     _diagnostics(model, initial, None))


def run_all(args: argparse.Namespace) -> list[RunResult]:
    """Run (or reload) every variant x seed of ``args.task``; write the gathered JSON."""
    torch.set_num_threads(args.threads)
    runner = run_lm if args.task == "lm" else run_classify
    results = []
    for seed in args.seeds:
        for variant in args.variants:
            result_file = args.out / f"{args.task}-{variant}-seed{seed}" / "result.json"
            if result_file.exists():
                result = RunResult(**json.loads(result_file.read_text()))
            else:
                result = runner(args, variant, seed)
                result_file.write_text(json.dumps(asdict(result), indent=2))
            results.append(result)
            print(f"{result.task} {result.variant} seed={seed}: {result.metric}={result.value:.4f} "
                  f"(train loss {result.train_loss:.3f}, {result.seconds:.0f}s)", flush=True)
    (args.out / f"{args.task}-results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


def markdown_table(results: list[RunResult]) -> str:
    """One row per variant: the metric for each seed, then mean and spread."""
    seeds = sorted({r.seed for r in results})
    rows = [f"| variant | {' | '.join(f'seed {s}' for s in seeds)} | mean |", "|---" * (len(seeds) + 2) + "|"]
    for variant in dict.fromkeys(r.variant for r in results):
        values = [r.value for s in seeds for r in results if r.variant == variant and r.seed == s]
        cells = " | ".join(f"{v:.4f}" for v in values)
        rows.append(f"| {variant} | {cells} | {sum(values) / len(values):.4f} |")
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hf_mamba_refine.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("lm", "classify"))
    p.add_argument("--variants", nargs="+", help="lm: baseline stable convergent; classify: plain reorder")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("runs/hf_mamba_refine"))
    p.add_argument("--config", help="JSON file of MambaConfig overrides")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--state-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="lm: training bytes (val: a tenth)")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="classify: the classes")
    p.add_argument("--tau", type=float, default=1.0, help="classify: SoftSort temperature")
    p.add_argument("--hard", action="store_true", help="classify: straight-through hard permutation")
    p.add_argument("--reorder-layers", nargs="+", type=int, default=None,
                   help="classify: layers to reorder (default: patch's default, layer 0)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0, help="validation curve every k steps (0: none)")
    p.add_argument("--curve-batches", type=int, default=4, help="validation batches per curve point")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> list[RunResult]:
    args = parser().parse_args(argv)
    known = LM_VARIANTS if args.task == "lm" else CLASSIFY_VARIANTS
    args.variants = args.variants or list(known)
    unknown = sorted(set(args.variants) - set(known))
    if unknown:
        raise SystemExit(f"unknown variants {unknown} for {args.task}; expected some of {list(known)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_all(args)
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
