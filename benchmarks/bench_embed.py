"""Speed of `xptools embed` and `xptools generate --reconstruct` with the shipped scatter VAE,
whole commands including I/O.

    python benchmarks/bench_embed.py [--rows 100000] [--workdir DIR]

Inputs as in bench_infer.py: the APOGEE library's sampled XP spectra repeated with new
source_ids (FITS, float32 flux and flux_error, 343 samples), and real DR3 coefficients in the
archive's FITS layout (sampled inside). Prints rows per second (best of three).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from bench_infer import sampled_input, timed  # noqa: E402
from inputs import write_archive_fits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="xptools-bench-embed-")
    os.makedirs(work, exist_ok=True)
    sampled = os.path.join(work, f"sampled_{args.rows}.fits")
    continuous = os.path.join(work, f"xp_continuous_{args.rows}.fits")
    if not os.path.exists(sampled):
        sampled_input(sampled, args.rows)
    if not os.path.exists(continuous):
        write_archive_fits(continuous, args.rows)
    out = os.path.join(work, "out.fits")
    subprocess.run([sys.executable, "-m", "xptools", "embed", sampled, "-o", out, "--quiet",
                    "--overwrite"], check=True)  # warm-up: file cache
    rows = {"embed, sampled input": ["embed", sampled],
            "embed, coefficient input": ["embed", continuous],
            "generate --reconstruct, sampled input": ["generate", "--reconstruct", sampled]}
    for name, command in rows.items():
        seconds = timed(command, out)
        print(f"{name:<40} {args.rows} rows {seconds:6.2f} s  {args.rows / seconds:8,.0f} "
              f"stars/s")
    print("(target: embed on sampled input >= 20,000 stars/s)")


if __name__ == "__main__":
    main()
