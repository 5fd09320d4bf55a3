"""Accuracy benchmark of hf_mamba_refine on the standard-library corpus (CPU, small defaults).

1. Validation perplexity per byte of a character-level Mamba LM in three variants at equal steps:
   baseline, stable (PSD S_C^T S_B) and convergent (NSD ablation).
2. Validation accuracy of ``MambaForSequenceClassification`` (which stdlib package a snippet is from),
   without and with token reordering.

Runs ``python -m hf_mamba_refine.train`` for both tasks (resumable: rerunning reuses finished runs in
``--out``) and prints two Markdown tables.
"""

import argparse
from pathlib import Path

from hf_mamba_refine.train import main as train_main
from hf_mamba_refine.train import markdown_table


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seeds", nargs="+", default=["0", "1"])
    parser.add_argument("--lm-steps", default="150")
    parser.add_argument("--classify-steps", default="150")
    parser.add_argument("--seq-len", default="64")
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--eval-batches", default="8")
    parser.add_argument("--out", type=Path, default=Path("runs/hf_mamba_refine_quality"))
    args = parser.parse_args()
    common = ["--seeds", *args.seeds, "--seq-len", args.seq_len, "--batch-size", args.batch_size,
              "--eval-batches", args.eval_batches, "--out", str(args.out)]
    lm = train_main(["lm", "--steps", args.lm_steps, *common])
    classify = train_main(["classify", "--steps", args.classify_steps, *common])
    print(f"\n### Validation perplexity per byte ({args.lm_steps} steps, seq {args.seq_len}, "
          f"batch {args.batch_size})\n")
    print(markdown_table(lm))
    print(f"\n### Package classification accuracy ({args.classify_steps} steps)\n")
    print(markdown_table(classify))


if __name__ == "__main__":
    main()
