"""Benchmark inputs made from real Gaia DR3 XP spectra in ../shared/data.

The real sources with the full archive schema (coefficients, errors, correlations, ...) are
repeated with new source_ids until the requested number of rows, and written in the archive's
own FITS layout (variable-length array columns, as DataLink XP_CONTINUOUS delivers them), which
GaiaXPy reads too.
"""

from __future__ import annotations

import os

import numpy as np

SHARED = os.environ.get("XPTOOLS_SHARED_DATA",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
REAL_FULL_SCHEMA = [
    "gaiaxpy_reference/xp_continuous/XP_CONTINUOUS_RAW.fits",
    "xp_continuous/xp_continuous_4_full_schema.vot",
]


def real_sources():
    """The real full-schema sources as one table (the archive's columns)."""
    from xptools.io import concat, read_table

    tables = [read_table(os.path.join(SHARED, p)) for p in REAL_FULL_SCHEMA]
    names = [n for n in tables[0].colnames if all(n in t for t in tables)]
    tables = [t.select(names) for t in tables]
    for t in tables:  # one dtype per column across files
        for n in names:
            t.columns[n] = t[n].astype(tables[0][n].dtype)
    return concat(tables)


def repeated(rows: int, start: int = 0):
    """Rows ``start .. start+rows`` of the repeated real sources, with new source_ids."""
    src = real_sources()
    idx = np.arange(start, start + rows) % len(src)
    out = src.rows(idx)
    out.columns["source_id"] = np.arange(start, start + rows, dtype=np.int64) + 1_000_000_000
    return out


def write_archive_fits(path: str, rows: int) -> None:
    """Archive FITS layout: variable-length array columns, as DataLink XP_CONTINUOUS.

    Written in one go: appending rows to a table with a heap moves the heap every time.
    """
    import fitsio

    table = repeated(rows)
    dtype = [(n, "O") if table[n].ndim == 2 else (n, table[n].dtype) for n in table.colnames]
    rec = np.empty(rows, dtype=dtype)
    for n in table.colnames:
        rec[n] = list(table[n]) if table[n].ndim == 2 else table[n]
    if os.path.exists(path):
        os.remove(path)
    fitsio.write(path, rec, extname="XP_CONTINUOUS")


def write_fixed(path: str, rows: int, chunk: int = 50_000) -> None:
    """Any format xptools writes (fixed-length arrays), chunk by chunk: for very large inputs."""
    from xptools.io import TableWriter

    with TableWriter(path, overwrite=True) as out:
        for start in range(0, rows, chunk):
            out.write(repeated(min(chunk, rows - start), start))


def archive_input(workdir: str | None, rows: int) -> tuple[str, str]:
    """(work folder, path) of ``rows`` rows in the archive FITS layout, in ``workdir`` (a new
    temporary folder when None), made once and reused by later runs with the same folder."""
    import sys
    import tempfile

    work = workdir or tempfile.mkdtemp(prefix="xptools-bench-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"xp_continuous_{rows}.fits")
    if not os.path.exists(path):
        print(f"building {path} ...", file=sys.stderr)
        write_archive_fits(path, rows)
    return work, path
