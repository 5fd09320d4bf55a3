"""End-to-end tour of the four plugins on built-in data: ``python -m demo [--only NAME ...]``.

Each plugin contributes a module ``demo/<package>.py`` with a ``main() -> None``; they run in order. A part
that raises does not stop the others: its traceback is printed, and the tour ends with a non-zero exit status
and a message that names every failed part (CI runs the tour after the tests).
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from collections.abc import Sequence

PARTS = ("pyg_clifford", "timm_robust_attn", "hf_mamba_refine", "nfn_ext")


def run_parts(names: Sequence[str]) -> list[str]:
    """Run ``demo.<name>.main()`` for each name in order; return the names of the parts that raised."""
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        try:
            importlib.import_module(f"demo.{name}").main()
        except Exception:
            traceback.print_exc()
            print(f"=== {name}: FAILED after {time.perf_counter() - start:.1f}s ===", flush=True)
            failed.append(name)
        else:
            print(f"=== {name}: done in {time.perf_counter() - start:.1f}s ===", flush=True)
    return failed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    failed = run_parts(args.only)
    if failed:
        raise SystemExit(f"demo failed in {len(failed)} of {len(args.only)} parts: {', '.join(failed)}")
    print(f"\ndemo: all {len(args.only)} parts passed in {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
