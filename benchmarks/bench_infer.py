"""Speed of `xptools infer` with the shipped default model, whole commands including I/O.

    python benchmarks/bench_infer.py [--rows 100000] [--workdir DIR]

- sampled input: the APOGEE library's XP spectra with Gaia photometry, repeated with new
  source_ids (FITS, float32 flux and flux_error);
- coefficient input: real DR3 continuous spectra with full correlations in the archive's FITS
  layout (repeated likewise; no photometry, so G comes from the XP spectrum), sampled inside;
- a 10-row file: start-up to finished output.
Prints rows per second for each (best of three).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from inputs import SHARED, write_archive_fits  # noqa: E402

from xptools.io import read_table, write_table  # noqa: E402


def sampled_input(path: str, rows: int) -> None:
    src = read_table(os.path.join(SHARED, "apogee_xp", "xp_sampled.fits"))
    index = np.arange(rows) % len(src)
    table = src.rows(index)
    table.columns["source_id"] = np.arange(rows, dtype=np.int64) + 2_000_000_000
    write_table(table, path, overwrite=True)


def timed(args: list[str], output: str) -> float:
    best = float("inf")
    for _ in range(3):
        if os.path.exists(output):
            os.remove(output)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xptools", *args, "-o", output, "--quiet"],
                       check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="xptools-bench-infer-")
    os.makedirs(work, exist_ok=True)
    sampled = os.path.join(work, f"sampled_{args.rows}.fits")
    continuous = os.path.join(work, f"xp_continuous_{args.rows}.fits")
    small = os.path.join(work, "sampled_10.fits")
    if not os.path.exists(sampled):
        sampled_input(sampled, args.rows)
    if not os.path.exists(continuous):
        write_archive_fits(continuous, args.rows)
    sampled_input(small, 10)
    out = os.path.join(work, "labeled.fits")
    subprocess.run([sys.executable, "-m", "xptools", "infer", small, "-o", out, "--quiet",
                    "--overwrite"], check=True)  # warm-up: caches
    t_sampled = timed(["infer", sampled], out)
    t_continuous = timed(["infer", continuous], out)
    t_small = timed(["infer", small], out)
    print(f"sampled input, {args.rows} rows      {t_sampled:6.2f} s  "
          f"{args.rows / t_sampled:8,.0f} stars/s")
    print(f"coefficient input, {args.rows} rows  {t_continuous:6.2f} s  "
          f"{args.rows / t_continuous:8,.0f} stars/s (sampling included)")
    print(f"10-row file, start to finish      {t_small:6.2f} s")


if __name__ == "__main__":
    main()
