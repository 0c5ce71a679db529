"""Row-wise commands over HATS catalogues on Dask (docs/scale.md): equality with files,
scaling with workers, and the whole of Gaia on paper. Needs the scale extra.

    python benchmarks/bench_scale.py [--rows 200000] [--commands infer] [--skip-equality]

Every run is the `xptools` command itself (a subprocess, start-up included).

1. Equality: the 2,000 real DR3 sources of ../shared/data/xp_continuous (a catalogue made by
   `xptools hats-import --positions-from-source-id`) through each row-wise
   command: as one file, and as a catalogue on a local 2-worker cluster. Per command: the
   columns equal bit for bit, and the largest difference of the others relative to the row's
   largest value; then one partition through the command as a file against the catalogue's
   output partition (the same code on the same rows: bit for bit).
2. Scaling: --rows synthetic copies of those sources (their coefficients, repeated, at random
   sky positions; the Multimodal Universe's packed coeff/coeff_error layout) as a catalogue
   of partitions of at most 10,000 rows, through `infer` (coefficients sampled, then
   msa-apogee) with --workers 1 and --workers 2 (one thread each), and in one process with
   1 and with all threads: seconds, stars/s, the efficiency rate(2) / (2 rate(1)); the same
   commands on a 100-row catalogue give the fixed start-up (cluster, imports, model), and
   the rates and efficiencies without it.
3. Gaia on paper: 220 M sources at the measured per-worker rate without start-up, for N
   workers, in hours and core-hours (the cost is core-hours times a price per core-hour:
   --price, in dollars, default 0.05, about an on-demand cloud vCPU in 2026; an assumption,
   not a measurement), and the rate each worker reads the catalogue at.
4. Reading: the catalogue of 2 read whole by xptools' Parquet reader and by LSDB
   (``open_catalog(...).compute()``, to a nested-pandas frame), seconds.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("XPTOOLS_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
CONTINUOUS = os.path.join(SHARED, "xp_continuous", "xp_continuous_2000.fits")
GAIA_XP_SOURCES = 220_000_000   # Gaia DR3 sources with XP spectra: about 220 million
COMMANDS = {   # command, input kind, options
    "sample": ("coefficients", ()),
    "photometry": ("coefficients", ("--system", "JKC_Std")),
    "infer": ("coefficients", ()),
    "embed": ("coefficients", ()),
    "generate": ("coefficients", ("--reconstruct",)),
    "flag": ("coefficients", ()),
}


def xptools(*args, quiet=True, threads=None) -> float:
    """Run the command (with XPTOOLS_THREADS=threads); returns its wall time in seconds."""
    env = dict(os.environ, **({"XPTOOLS_THREADS": str(threads)} if threads else {}))
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "xptools", *map(str, args)]
                       + (["-q"] if quiet else []), capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"xptools {' '.join(map(str, args))} failed:\n{r.stderr}")
    return time.perf_counter() - start


def partitions(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "dataset", "Norder=*", "Dir=*",
                                         "Npix=*.parquet")))


def catalogue_table(folder: str):
    from xptools.io import concat, read_table

    t = concat([read_table(p) for p in partitions(folder)])
    return t.rows(np.argsort(t["source_id"], kind="stable"))


def differences(a, b) -> tuple[int, int, float]:
    """(columns equal bit for bit, columns compared, largest relative difference)."""
    same, worst = 0, 0.0
    for name in a.colnames:
        x, y = a[name], b[name]
        if x.dtype.kind != "f":
            assert np.array_equal(x, y), name
            same += 1
            continue
        if np.array_equal(x, y, equal_nan=True):
            same += 1
            continue
        rows = x.reshape(len(x), -1).astype(np.float64)
        scale = np.nanmax(np.abs(np.where(np.isfinite(rows), rows, np.nan)), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.abs(x.reshape(len(x), -1) - y.reshape(len(y), -1)) / scale[:, None]
        d = d[np.isfinite(d)]
        worst = max(worst, float(d.max()) if d.size else 0.0)
    return same, len(a.colnames), worst


def equality(work: str) -> None:
    from xptools.io import read_table

    print("1. equality: 2,000 DR3 sources, a file vs a catalogue on 2 local workers")
    cat = os.path.join(work, "dr3_cat")
    xptools("hats-import", CONTINUOUS, "-o", cat, "--positions-from-source-id", "--max-rows",
            "400")
    source = CONTINUOUS   # the catalogue has these columns and ra, dec, _healpix_29
    print(f"   catalogue: {len(partitions(cat))} partitions")
    print(f"   {'command':<22}{'bit-equal columns':>18}{'max rel. diff':>15}"
          f"{'partition as file':>19}")
    for command, (_, options) in COMMANDS.items():
        out_file = os.path.join(work, f"{command}.parquet")
        out_cat = os.path.join(work, f"{command}_cat")
        xptools(command, source, "-o", out_file, *options)
        xptools(command, cat, "-o", out_cat, "--workers", "2", *options)
        whole = read_table(out_file)
        whole = whole.rows(np.argsort(whole["source_id"], kind="stable"))
        same, total, worst = differences(whole, catalogue_table(out_cat))
        one = os.path.join(work, f"{command}_one.parquet")
        xptools(command, partitions(cat)[0], "-o", one, *options)
        p_same, p_total, p_worst = differences(read_table(one),
                                               read_table(partitions(out_cat)[0]))
        label = command + (" " + " ".join(options) if options else "")
        print(f"   {label:<22}{f'{same} of {total}':>18}{worst:>15.1e}"
              f"{f'{p_same} of {p_total} equal':>19}")


def big_catalogue(work: str, rows: int) -> str:
    """``rows`` copies of the real coefficients at random positions, in the packed layout."""
    from xptools.io import Table, read_table, write_table

    real = read_table(CONTINUOUS)
    n = len(real)
    coeff = np.hstack([np.stack([real[f"{b}_coeff_{i}"] for i in range(55)], axis=1)
                       for b in ("bp", "rp")]).astype(np.float32)
    error = np.hstack([np.stack([real[f"e_{b}_coeff_{i}"] for i in range(55)], axis=1)
                       for b in ("bp", "rp")]).astype(np.float32)
    pick = np.arange(rows) % n
    rng = np.random.default_rng(0)
    t = Table()
    t.add_column("source_id", np.arange(1, rows + 1, dtype=np.int64))
    t.add_column("ra", rng.uniform(0, 360, rows), unit="deg")
    t.add_column("dec", np.degrees(np.arcsin(rng.uniform(-1, 1, rows))), unit="deg")
    t.add_column("coeff", coeff[pick])
    t.add_column("coeff_error", error[pick])
    flat = os.path.join(work, "copies.parquet")
    write_table(t, flat)
    cat = os.path.join(work, "copies_cat")
    xptools("hats-import", flat, "-o", cat, "--max-rows", "10000", "--highest-order", "6")
    os.remove(flat)
    return cat


def scaling(work: str, rows: int, price: float) -> None:
    cat = big_catalogue(work, rows)
    print(f"2. scaling: infer on {rows:,} rows ({len(partitions(cat))} partitions, synthetic "
          f"copies of the DR3 coefficients), {os.cpu_count()} cores")
    from xptools.io import read_table, write_table

    tiny = os.path.join(work, "tiny.parquet")
    first = read_table(partitions(cat)[0]).rows(slice(0, 100))
    first.remove_columns(["_healpix_29"])
    write_table(first, tiny)
    tiny_cat = os.path.join(work, "tiny_cat")
    xptools("hats-import", tiny, "-o", tiny_cat, "--order", "0")
    cores = os.cpu_count()
    runs = {"1w": ("1 worker, 1 thread", ("--workers", "1"), 1),
            "2w": ("2 workers, 1 thread each", ("--workers", "2"), 1),
            "1t": ("one process, 1 thread", (), 1),
            "nt": (f"one process, {cores} threads", (), cores)}
    rate, steady = {}, {}
    print(f"   {'':<28}{'seconds':>9}{'stars/s':>9}{'start-up':>10}{'stars/s without':>17}")
    for key, (label, extra, threads) in runs.items():
        out = os.path.join(work, "scaled")
        start = xptools("infer", tiny_cat, "-o", out, *extra, threads=threads)
        shutil.rmtree(out)
        seconds = xptools("infer", cat, "-o", out, *extra, threads=threads)
        shutil.rmtree(out)
        rate[key], steady[key] = rows / seconds, rows / (seconds - start)
        print(f"   {label:<28}{seconds:9.1f}{rate[key]:9.0f}{start:9.1f}s{steady[key]:17.0f}")
    print(f"   efficiency of 2 workers: {rate['2w'] / (2 * rate['1w']):.2f} "
          f"({steady['2w'] / (2 * steady['1w']):.2f} without start-up); of {cores} threads "
          f"in one process: {rate['nt'] / (cores * rate['1t']):.2f} "
          f"({steady['nt'] / (cores * steady['1t']):.2f})")
    per_worker = steady["1w"]
    size = sum(os.path.getsize(p) for p in partitions(cat)) / rows
    print(f"3. Gaia on paper: {GAIA_XP_SOURCES / 1e6:.0f} M sources at {per_worker:.0f} "
          f"stars/s per one-core worker (without start-up), price ${price:.2f} per core-hour; "
          f"each worker reads {per_worker * size / 1e6:.1f} MB/s of this catalogue "
          f"({size:.0f} bytes a row)")
    core_hours = GAIA_XP_SOURCES / per_worker / 3600
    for n in (1, 16, 64, 256, 1024):
        print(f"   {n:5d} workers: {core_hours / n * 60:8.1f} min wall (at efficiency 1), "
              f"{core_hours:5.1f} core-hours, ${core_hours * price:,.2f}")
    print("4. reading the catalogue of 2 whole")
    from xptools.io import read_table

    start = time.perf_counter()
    n = sum(len(read_table(p)) for p in partitions(cat))
    ours = time.perf_counter() - start
    import lsdb

    import contextlib
    import io

    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):   # its progress bar
        frame = lsdb.open_catalog(cat).compute()
    theirs = time.perf_counter() - start
    assert len(frame) == n == rows
    print(f"   xptools Parquet reader {ours:.1f} s; lsdb open_catalog().compute() "
          f"{theirs:.1f} s (a nested-pandas frame, before any conversion to arrays)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--price", type=float, default=0.05)
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(CONTINUOUS):
        sys.exit(f"{CONTINUOUS}: not found (../shared/data)")
    work = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        if not args.skip_equality:
            equality(work)
        if not args.skip_scaling:
            scaling(work, args.rows, args.price)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
