"""xptools photometry vs GaiaXPy generate, whole commands, on the same 50,000-row file.

    python benchmarks/bench_photometry.py [--rows 50000] [--gaiaxpy-rows N] [--workdir DIR]
                                          [--repeats 3] [--skip-gaiaxpy]

Builds an input in the archive's own FITS layout (real DR3 sources from ../shared/data with
full coefficient correlations, repeated with new source_ids; benchmarks/inputs.py), then times,
for 1 system (JKC_Std) and for 5 (JKC_Std, SDSS_Std, PanSTARRS1_Std, Stromgren_Std, LSST):

- GaiaXPy:  python -c "gaiaxpy.generate(IN, systems, output_format='fits', ...)", the whole
  process (start, import, read, compute, write), once;
- xptools:  xptools photometry IN --system ... -o OUT, the whole process, best of --repeats
  (after a warm-up run that fills the page cache and the systems cache), in two forms: as is
  (every input column passes through: the output is as big as the input) and with
  --drop-coefficients (an output like GaiaXPy's: ids and photometry);

and prints the times, the speed-ups and how far the two outputs agree. With --gaiaxpy-rows N
GaiaXPy runs on the first N rows only and its time is scaled to the whole file (its cost is
linear in the rows: a per-source Python loop), which the output says.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from inputs import archive_input  # noqa: E402

SYSTEMS = {1: ["JKC_Std"], 5: ["JKC_Std", "SDSS_Std", "PanSTARRS1_Std", "Stromgren_Std", "LSST"]}
GAIAXPY = """
import sys, gaiaxpy
systems = [gaiaxpy.PhotometricSystem[name] for name in sys.argv[3].split(',')]
gaiaxpy.generate(sys.argv[1], photometric_system=systems, output_path=sys.argv[2],
                 output_file='gaiaxpy', output_format='fits', save_file=True)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall time (s) and peak memory (GB) of a whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {process.returncode})")
    return seconds, usage.ru_maxrss / 1e6  # Linux: kB


def xptools_time(src: str, out: str, systems: list[str], extra: list[str],
                 repeats: int) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "xptools", "photometry", src, "--system", ",".join(systems),
           "-o", out, "--quiet", *extra]
    best = (float("inf"), 0.0)
    for _ in range(repeats):  # each writes a new file
        if os.path.exists(out):
            os.remove(out)
        best = min(best, timed(cmd))
    return best


def agreement(ours: str, theirs: str) -> str:
    from xptools.io import read_table

    a, b = read_table(ours), read_table(theirs)
    worst = {"flux": 0.0, "flux_error": 0.0, "mag": 0.0}
    for name in b.colnames:
        if name == "source_id":
            continue
        kind = "flux_error" if "_flux_error_" in name else "flux" if "_flux_" in name else "mag"
        x, y = np.asarray(a[name], float)[:len(b)], np.asarray(b[name], float)
        ok = np.isfinite(x) & np.isfinite(y)
        d = np.abs(x[ok] - y[ok]) if kind == "mag" else np.abs(x[ok] - y[ok]) / np.abs(y[ok])
        worst[kind] = max(worst[kind], float(d.max()) if d.size else 0.0)
    return (f"flux {worst['flux']:.1e}, flux error {worst['flux_error']:.1e} (relative), "
            f"magnitude {worst['mag']:.1e} mag")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--gaiaxpy-rows", type=int, default=None,
                        help="run GaiaXPy on this many rows and scale its time linearly")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-gaiaxpy", action="store_true")
    args = parser.parse_args()
    work, src = archive_input(args.workdir, args.rows)
    gx_rows = min(args.gaiaxpy_rows or args.rows, args.rows)
    gx_src = archive_input(work, gx_rows)[1] if gx_rows < args.rows else src
    ours = os.path.join(work, "xptools.fits")
    subprocess.run([sys.executable, "-m", "xptools", "photometry", src, "--system",
                    ",".join(SYSTEMS[5]), "-o", ours, "--overwrite", "--quiet"], check=True)
    print(f"rows                         {args.rows:,}")
    print(f"input                        {os.path.getsize(src) / 1e9:.2f} GB (archive FITS, "
          f"with correlations)")
    print(f"machine                      {os.cpu_count()} CPU cores")
    for n, systems in SYSTEMS.items():
        print(f"-- {n} system{'s' if n > 1 else ''}: {','.join(systems)}")
        t_all, m_all = xptools_time(src, ours, systems, [], args.repeats)
        t_drop, m_drop = xptools_time(src, ours, systems, ["--drop-coefficients"],
                                      args.repeats)
        print(f"xptools photometry           {t_all:6.2f} s  ({args.rows / t_all:,.0f} sources/s,"
              f" {m_all:.1f} GB; every input column passes through)")
        print(f"  --drop-coefficients        {t_drop:6.2f} s  ({args.rows / t_drop:,.0f} "
              f"sources/s, {m_drop:.1f} GB; ids and photometry, like GaiaXPy's output)")
        if args.skip_gaiaxpy:
            continue
        gx_dir = os.path.join(work, f"gaiaxpy_{n}")
        os.makedirs(gx_dir, exist_ok=True)
        t_gx, m_gx = timed([sys.executable, "-c", GAIAXPY, gx_src, gx_dir, ",".join(systems)])
        scale = args.rows / gx_rows
        note = (f"; measured on {gx_rows:,} rows ({t_gx:.1f} s, {m_gx:.1f} GB) and scaled "
                f"x{scale:g}" if scale != 1 else f", {m_gx:.1f} GB")
        t_gx *= scale
        print(f"GaiaXPy generate             {t_gx:6.1f} s  ({args.rows / t_gx:,.0f} "
              f"sources/s{note})")
        print(f"speed-up                     {t_gx / t_all:6.1f}x as is, "
              f"{t_gx / t_drop:.1f}x with --drop-coefficients")
        print(f"outputs agree to             "
              f"{agreement(ours, os.path.join(gx_dir, 'gaiaxpy.fits'))}")
        print("  (flux errors: GaiaXPy divides a FITS file's float32 errors in float32; "
              "benchmarks/bench_photometry_exactness.py)")


if __name__ == "__main__":
    main()
