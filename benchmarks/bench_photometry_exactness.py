"""xptools photometry against GaiaXPy's generate, run live, on real data.

    python benchmarks/bench_photometry_exactness.py [--rows 2000] [--quick]

Every photometric system GaiaXPy ships (all 28 in one call), without and with
--error-correction and --truncate (the four combinations), on

- GaiaXPy's own test inputs, ../shared/data/gaiaxpy_reference/xp_continuous/*: every file
  both read (CSV, ECSV, FITS, VOTable and plain XML; avro is GaiaXPy's internal format, which
  xptools does not read): two real sources, the same with a third one without BP, and a
  single source without BP;
- the 2,000 real DR3 sources of ../shared/data/xp_continuous/xp_continuous_2000.fits (one
  column per coefficient, no correlations, a layout GaiaXPy does not read: it gets them as a
  DataFrame), and the same with a missing band (BP removed from every 7th source, RP from every
  11th).

It prints the largest relative difference in flux and in flux error, the largest magnitude
difference, and how many values are NaN in one output only, against the issue's limits
(1e-10, 1e-8, 1e-9 mag, none), in two columns:

A  GaiaXPy reads the file itself;
B  GaiaXPy gets the numbers xptools reads from the file (`xptools.synthetic.gaiaxpy_input`).

B is the computation alone. A also holds how the two read the files, which shows in the flux
errors only. The archive's coefficient errors and correlations are float32. From FITS both
read those float32 values, but GaiaXPy divides the errors by the standard deviation in
float32 (numpy keeps a float32 array float32 when divided by a Python float): up to 3e-8.
ECSV and plain XML files declare them float32: xptools reads float32 (the values of the FITS
file), GaiaXPy parses their text as float64 decimals, which differ from the float32 values by
up to half a float32 step: up to 1.5e-7. From CSV (no types) and VOTable both read the same
numbers. The last lines compare each program with itself across the formats of one file:
GaiaXPy's flux errors from FITS and CSV differ by 1.4e-7; xptools' are identical from FITS,
ECSV, VOTable and plain XML (CSV, untyped, is read as float64 decimals like GaiaXPy does).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from inputs import SHARED  # noqa: E402

LIMITS = {"flux": 1e-10, "flux_error": 1e-8, "mag": 1e-9}


def gaiaxpy_photometry(source, *, error_correction: bool, truncation: bool):
    """GaiaXPy's generate in every system (its stdout and stderr silenced)."""
    import gaiaxpy

    from xptools.basis import silenced

    with silenced():
        return gaiaxpy.generate(source, photometric_system=list(gaiaxpy.PhotometricSystem),
                                truncation=truncation, error_correction=error_correction,
                                save_file=False)


def xptools_photometry(path: str, work: str, *, error_correction: bool, truncation: bool):
    """xptools photometry in every system (the command's own pipeline, through a file)."""
    from xptools.io import TableWriter, open_table, read_table
    from xptools.synthetic import find_systems, load_systems, run_photometry

    out_path = os.path.join(work, "xptools.fits")
    systems = find_systems(list(load_systems()))
    with TableWriter(out_path, overwrite=True) as out, open_table(path) as src:
        # every system: 886 new columns; without the 223 coefficient columns of the 2,000
        # sources' layout they fit FITS's 999
        run_photometry(src, out, systems, error_correction=error_correction,
                       truncate=truncation, drop_coefficients=True, quiet=True,
                       warn=lambda m: None)
    return read_table(out_path)


def compare(ours, theirs) -> dict[str, float]:
    """Largest differences over every GaiaXPy column, and NaN mismatches."""
    worst = {"flux": 0.0, "flux_error": 0.0, "mag": 0.0, "nan": 0, "values": 0}
    ids = np.asarray(theirs["source_id"], np.int64)
    if not np.array_equal(np.asarray(ours["source_id"], np.int64), ids):
        raise SystemExit("the outputs list different sources")
    for column in theirs.columns:
        if column == "source_id":
            continue
        kind = "flux_error" if "_flux_error_" in column else \
            "flux" if "_flux_" in column else "mag"
        a = np.asarray(ours[column], np.float64)
        b = theirs[column].to_numpy(np.float64)
        worst["nan"] += int(np.count_nonzero(np.isnan(a) != np.isnan(b)))
        ok = np.isfinite(a) & np.isfinite(b)
        worst["values"] += int(np.count_nonzero(ok))
        if not ok.any():
            continue
        d = np.abs(a[ok] - b[ok])
        if kind != "mag":
            d = d / np.abs(b[ok])
        worst[kind] = max(worst[kind], float(d.max()))
    return worst


def with_missing_bands(table):
    """The table with BP removed from every 7th source and RP from every 11th (never both:
    GaiaXPy stops at a source without either)."""
    t = table.rows(np.arange(len(table)))
    bp = np.arange(0, len(t), 7)
    rp = np.setdiff1d(np.arange(5, len(t), 11), bp)
    for band, rows in (("bp", bp), ("rp", rp)):
        for i in range(55):
            for prefix in ("", "e_"):
                column = np.array(t[f"{prefix}{band}_coeff_{i}"], dtype=np.float32)
                column[rows] = np.nan
                t.columns[f"{prefix}{band}_coeff_{i}"] = column
    return t


def row(label: str, *worsts: dict) -> str:
    cells = []
    for worst in worsts:
        bad = any(worst[k] > LIMITS[k] for k in LIMITS) or worst["nan"]
        cells.append(f"{worst['flux']:8.1e} {worst['flux_error']:8.1e} {worst['mag']:8.1e} "
                     f"{worst['nan']:3d}{'!' if bad else ' '}")
    return f"{label:<52}" + "  ".join(cells)


def merge(total: dict, worst: dict) -> None:
    for k, v in worst.items():
        total[k] = total.get(k, 0) + v if k == "values" else max(total.get(k, 0), v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000,
                        help="real sources of xp_continuous_2000.fits to use")
    parser.add_argument("--quick", action="store_true",
                        help="the missing-BP files only, with --error-correction only")
    args = parser.parse_args()
    import gaiaxpy

    from xptools.io import read_table, write_table
    from xptools.synthetic import gaiaxpy_input

    work = tempfile.mkdtemp(prefix="xptools-phot-exact-")
    ref = os.path.join(SHARED, "gaiaxpy_reference", "xp_continuous")
    files = sorted(p for p in glob.glob(os.path.join(ref, "*")) if not p.endswith(".avro"))
    options = [(False, False), (True, False), (False, True), (True, True)]
    if args.quick:
        files = [p for p in files if "with_missing_BP." in p]
        options = options[1:2]
    real = read_table(os.path.join(SHARED, "xp_continuous", "xp_continuous_2000.fits"))
    real = real.rows(slice(0, args.rows))
    reals = {"real": real, "real_missing": with_missing_bands(real)}
    real_paths = {}
    for name, table in reals.items():
        real_paths[name] = os.path.join(work, f"{name}.fits")
        write_table(table, real_paths[name], overwrite=True)

    n_systems = len(list(gaiaxpy.PhotometricSystem))
    print(f"GaiaXPy {gaiaxpy.__version__}: generate in all {n_systems} photometric systems, one "
          f"call per input; xptools photometry in the same systems.")
    print(f"Largest differences: flux and flux error relative, magnitude in mag; 'NaN' counts "
          f"values NaN in one output only; '!' marks a row over the limits (flux "
          f"{LIMITS['flux']:.0e}, flux error {LIMITS['flux_error']:.0e}, magnitude "
          f"{LIMITS['mag']:.0e} mag, no NaN mismatch).")
    print("A: GaiaXPy reads the file itself.  B: GaiaXPy gets the numbers xptools reads from "
          "it (a DataFrame).")
    head = f"{'flux':>8} {'error':>8} {'mag':>8} {'NaN':>3} "
    print(f"{'input (options)':<52}{'A':^29}  {'B':^29}")
    print(f"{'':<52}{head} {head}")
    start = time.perf_counter()
    totals = {"A csv/votable": {}, "A fits": {}, "A ecsv/plain": {}, "B": {}}
    for ec, trunc in options:
        tag = " ".join(o for o, on in (("--error-correction", ec), ("--truncate", trunc)) if on)
        tag = f" ({tag})" if tag else ""
        for path in files:
            ours = xptools_photometry(path, work, error_correction=ec, truncation=trunc)
            a = compare(ours, gaiaxpy_photometry(path, error_correction=ec, truncation=trunc))
            b = compare(ours, gaiaxpy_photometry(gaiaxpy_input(read_table(path), path),
                                                 error_correction=ec, truncation=trunc))
            name = os.path.basename(path)
            merge(totals["A fits" if name.endswith(".fits") else "A ecsv/plain"
                         if name.endswith(".ecsv") or "plain" in name else "A csv/votable"], a)
            merge(totals["B"], b)
            print(row(os.path.basename(path).replace("XP_CONTINUOUS_RAW", "") + tag, a, b),
                  flush=True)
        for name, table in reals.items():
            ours = xptools_photometry(real_paths[name], work, error_correction=ec,
                                      truncation=trunc)
            b = compare(ours, gaiaxpy_photometry(gaiaxpy_input(table), error_correction=ec,
                                                 truncation=trunc))
            merge(totals["B"], b)
            label = f"{len(table)} real sources" + (", BP or RP missing in some"
                                                    if "missing" in name else "")
            print(f"{label + tag:<52}{'(GaiaXPy reads no such file)':^29}  "
                  + row("", b).strip(), flush=True)
    print()
    print("Largest over everything above:")
    print(row("B: GaiaXPy given the same numbers", totals["B"]))
    print(row("A: CSV and VOTable files", totals["A csv/votable"]))
    print(row("A: FITS files", totals["A fits"]))
    print(row("A: ECSV and plain XML files", totals["A ecsv/plain"]))
    import pandas as pd

    print("Each program against itself, the same two sources read from two files "
          "(XP_CONTINUOUS_RAW.*, no options):")
    fits = xptools_photometry(os.path.join(ref, "XP_CONTINUOUS_RAW.fits"), work,
                              error_correction=False, truncation=False)
    columns = [c for c in fits.colnames if "_mag_" in c or "_flux_" in c]
    for other in ("XP_CONTINUOUS_RAW.ecsv", "XP_CONTINUOUS_RAW.xml",
                  "XP_CONTINUOUS_RAW_plain.xml", "XP_CONTINUOUS_RAW.csv"):
        table = xptools_photometry(os.path.join(ref, other), work, error_correction=False,
                                   truncation=False)
        frame = pd.DataFrame({c: np.asarray(fits[c]) for c in ["source_id", *columns]})
        print(row(f"xptools: {other[17:]} vs .fits", compare(table, frame)))
    csv = gaiaxpy_photometry(os.path.join(ref, "XP_CONTINUOUS_RAW.csv"),
                             error_correction=False, truncation=False)
    for other in ("XP_CONTINUOUS_RAW.fits", "XP_CONTINUOUS_RAW.ecsv",
                  "XP_CONTINUOUS_RAW_plain.xml"):
        theirs = gaiaxpy_photometry(os.path.join(ref, other), error_correction=False,
                                    truncation=False)
        print(row(f"GaiaXPy: {other[17:]} vs .csv", compare(theirs, csv)))
    print(f"values compared: {totals['B']['values']:,} (B); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
