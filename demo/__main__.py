"""End-to-end tour of the four plugins on built-in data: ``python -m demo [--only NAME ...]``.

Each plugin contributes a module ``demo/<package>.py`` with a ``main() -> None``; they run in order.
"""

import argparse
import importlib
import time

PARTS = ("pyg_clifford", "timm_robust_attn", "hf_mamba_refine", "nfn_ext")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    args = parser.parse_args()
    for name in args.only:
        start = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(f"demo.{name}").main()
        print(f"=== {name}: done in {time.perf_counter() - start:.1f}s ===", flush=True)


if __name__ == "__main__":
    main()
