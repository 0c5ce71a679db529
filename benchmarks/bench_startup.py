"""Start-up time of `xptools --help` (the issue's target: <= 0.3 s wall), whole command.

    python benchmarks/bench_startup.py [--repeat 10]

Prints the best and the median wall time over the repeats, for `xptools --help` and for
`xptools sample --help`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    xptools = shutil.which("xptools")
    if xptools is None:
        raise SystemExit("xptools is not on PATH (pip install -e . first)")
    for command in ([xptools, "--help"], [xptools, "sample", "--help"]):
        walls = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - start)
        print(f"{' '.join(['xptools', *command[1:]]):<24} best {min(walls):.3f} s   "
              f"median {statistics.median(walls):.3f} s   (target <= 0.3 s)")


if __name__ == "__main__":
    main()
