"""Size and write/read time of each output format, on the APOGEE XP sampled spectra
(35,886 rows of flux and flux_error, 343 float32 each) and on their first 200 rows.

    python benchmarks/bench_formats.py [--rows N]

Writes through xptools' own writers (TableWriter, 10,000-row chunks, as the commands do) into a
temporary folder; prints one line per format: bytes, bytes / FITS bytes, write and read seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from inputs import SHARED

from xptools.io import TableWriter, read_table

FORMATS = {"fits": "fits", "hdf5": "h5", "ecsv": "ecsv", "csv": "csv", "votable": "vot"}


def measure(table, folder: str, label: str) -> None:
    print(f"{label}: {len(table)} rows")
    print(f"   {'format':<8} {'bytes':>12} {'x FITS':>7} {'write s':>8} {'read s':>7}")
    fits_size = None
    for fmt, ext in FORMATS.items():
        path = os.path.join(folder, f"{label}.{ext}")
        start = time.perf_counter()
        with TableWriter(path) as out:
            for first in range(0, len(table), 10_000):
                out.write(table.rows(slice(first, first + 10_000)))
        write = time.perf_counter() - start
        start = time.perf_counter()
        read_table(path)
        read = time.perf_counter() - start
        size = os.path.getsize(path)
        fits_size = fits_size or size
        print(f"   {fmt:<8} {size:>12,} {size / fits_size:>7.2f} {write:>8.2f} {read:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="use only the first N rows")
    args = parser.parse_args()
    table = read_table(os.path.join(SHARED, "apogee_xp", "xp_sampled.fits"))
    if args.rows:
        table = table.rows(slice(0, args.rows))
    with tempfile.TemporaryDirectory() as folder:
        measure(table, folder, "apogee_xp")
        measure(table.rows(slice(0, 200)), folder, "first_200")


if __name__ == "__main__":
    main()
