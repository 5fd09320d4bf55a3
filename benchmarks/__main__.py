"""Run every speed benchmark: ``python -m benchmarks``.

Each ``benchmarks/*_speed.py`` script runs with its defaults and prints a table of ratios against its peer.
The accuracy benchmarks (training runs) are separate scripts; README gives their commands.
"""

import argparse
import runpy
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.parse_args()
    for script in sorted(Path(__file__).parent.glob("*_speed.py")):
        print(f"\n=== {script.name} ===", flush=True)
        sys.argv = [str(script)]
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
