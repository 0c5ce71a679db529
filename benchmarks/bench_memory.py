"""Peak memory of `xptools sample` on a large input (default 1,000,000 rows).

    python benchmarks/bench_memory.py [--rows 1000000] [--workdir DIR] [--keep]

The input repeats real DR3 sources with full coefficient correlations (the largest layout,
about 13 kB per row, 13 GB for a million rows) in a FITS file written chunk by chunk; the
output (flux and flux_error in float64) is about 5.5 GB. Prints the peak resident memory of the
`xptools sample` process, from the operating system's accounting of the child process.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from inputs import write_fixed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the input and output files")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="xptools-mem-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, f"xp_continuous_fixed_{args.rows}.fits")
    out = os.path.join(work, "sampled.fits")
    if not os.path.exists(src):
        print(f"building {src} ...", file=sys.stderr)
        write_fixed(src, args.rows)
    if os.path.exists(out):
        os.remove(out)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xptools", "sample", src, "-o", out, "--quiet"],
                   check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: kB
    print(f"rows                 {args.rows}")
    print(f"input                {os.path.getsize(src) / 1e9:.1f} GB (FITS, with correlations)")
    print(f"output               {os.path.getsize(out) / 1e9:.1f} GB")
    print(f"wall time            {seconds:.1f} s ({args.rows / seconds:,.0f} sources/s)")
    print(f"peak RSS             {peak / 1e9:.2f} GB")
    if not args.keep:
        shutil.rmtree(work) if not args.workdir else (os.remove(src), os.remove(out))


if __name__ == "__main__":
    main()
