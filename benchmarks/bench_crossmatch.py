"""xptools crossmatch --sky against astropy's match_to_catalog_sky, end to end, on 1e6 x 1e6.

    python benchmarks/bench_crossmatch.py [--rows 1000000] [--radius 1] [--scatter 0.3]
                                          [--repeat 3] [--workdir DIR]

Builds two FITS files: RIGHT holds N positions spread evenly over the sky (id, ra, dec, mag);
LEFT the same positions, each moved in a random direction by a 2-D Gaussian offset with an
RMS of --scatter arcsec in total (source_id, ra, dec). Then times two whole commands that
read both files, match every left position to its nearest right one within --radius, and write
the matched rows (left columns, right columns, separation) to FITS:

- astropy: Table.read (both), SkyCoord.match_to_catalog_sky, keep separation <= radius,
  hstack, Table.write
- xptools: xptools crossmatch LEFT RIGHT --sky RADIUS -o OUT

and prints both times (best and median of --repeat runs, alternating), whether the two found
the same pairs, the fraction of left positions matched to their true counterpart, and the
largest separation of a matched pair by astropy's own formula (must not exceed the radius).
The same checks run on positions within 0.5 deg of RA = 0/360 and within 2 deg of each pole.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ASTROPY = """
import sys
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table, hstack

left, right, out, radius = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
left, right = Table.read(left), Table.read(right)
idx, sep, _ = SkyCoord(left["ra"], left["dec"], unit="deg").match_to_catalog_sky(
    SkyCoord(right["ra"], right["dec"], unit="deg"))
ok = sep <= radius * u.arcsec
matched = hstack([left[ok], right[idx[ok]]])
matched["separation"] = sep[ok].to(u.arcsec)
matched.write(out, overwrite=True)
"""


def positions(n: int, rng, region: str) -> tuple[np.ndarray, np.ndarray]:
    """n positions spread evenly over the sky, or over a band or cap of it."""
    if region == "sky":
        return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    if region == "ra0":  # |RA| < 0.5 deg across 0/360, |Dec| < 80
        return rng.uniform(-0.5, 0.5, n) % 360, np.degrees(np.arcsin(
            rng.uniform(-np.sin(np.radians(80)), np.sin(np.radians(80)), n)))
    # a cap of 2 deg around a pole, evenly over its area
    polar = np.degrees(np.arccos(rng.uniform(np.cos(np.radians(2)), 1, n)))
    return rng.uniform(0, 360, n), (90 - polar) if region == "north" else (polar - 90)


def scattered(ra, dec, rms_arcsec: float, rng):
    """Positions moved in a random direction by a 2-D Gaussian offset of total RMS rms."""
    a, d = np.radians(ra), np.radians(dec)
    u = np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    p = np.column_stack([-np.sin(a), np.cos(a), np.zeros_like(a)])
    q = np.column_stack([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    sigma = np.radians(rms_arcsec / 3600) / np.sqrt(2)
    moved = u + sigma * (rng.normal(size=(len(a), 1)) * p + rng.normal(size=(len(a), 1)) * q)
    moved /= np.linalg.norm(moved, axis=1)[:, None]
    return (np.degrees(np.arctan2(moved[:, 1], moved[:, 0])) % 360,
            np.degrees(np.arcsin(moved[:, 2])))


def build(work: str, name: str, n: int, scatter: float, region: str, seed: int):
    from xptools.io import Table, write_table

    left_path = os.path.join(work, f"{name}_left.fits")
    right_path = os.path.join(work, f"{name}_right.fits")
    rng = np.random.default_rng(seed)
    ra, dec = positions(n, rng, region)
    right = Table()
    right.add_column("id", np.arange(n, dtype=np.int64))
    right.add_column("ra", ra, unit="deg")
    right.add_column("dec", dec, unit="deg")
    right.add_column("mag", rng.uniform(10, 20, n).astype(np.float32), unit="mag")
    write_table(right, right_path, overwrite=True)
    ra2, dec2 = scattered(ra, dec, scatter, rng)
    left = Table()
    left.add_column("source_id", np.arange(n, dtype=np.int64) + 10**12)
    left.add_column("ra", ra2, unit="deg")
    left.add_column("dec", dec2, unit="deg")
    write_table(left, left_path, overwrite=True)
    return left_path, right_path


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def commands(left, right, radius, ours, theirs):
    xptools = [sys.executable, "-m", "xptools", "crossmatch", left, right, "--sky", str(radius),
               "-o", ours, "--overwrite", "--quiet"]
    astropy = [sys.executable, "-c", ASTROPY, left, right, theirs, str(radius)]
    return xptools, astropy


def check(ours_path: str, theirs_path: str, n: int, radius: float) -> dict:
    """Agreement of the two outputs, recovery, and the largest separation by astropy."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from xptools.io import read_table

    ours, theirs = read_table(ours_path), read_table(theirs_path)
    ours_pairs = set(zip(ours["source_id"].tolist(), ours["id"].tolist()))
    theirs_pairs = set(zip(theirs["source_id"].tolist(), theirs["id"].tolist()))
    sep = SkyCoord(ours["ra"], ours["dec"], unit="deg").separation(
        SkyCoord(ours["ra_r"], ours["dec_r"], unit="deg")).to(u.arcsec).value
    return {"ours": len(ours_pairs), "theirs": len(theirs_pairs),
            "common": len(ours_pairs & theirs_pairs),
            "recovered": np.count_nonzero(ours["id"] == ours["source_id"] - 10**12) / n,
            "max_sep": float(sep.max()) if len(sep) else float("nan"),
            "max_reported": float(np.max(ours["match_separation"])) if len(ours) else np.nan,
            "beyond": int(np.count_nonzero(sep > radius))}


def report(label: str, n: int, result: dict, radius: float) -> None:
    same = result["ours"] == result["theirs"] == result["common"]
    print(f"  {label}: {n:,} left x {n:,} right")
    print(f"    matched pairs: xptools {result['ours']:,}, astropy {result['theirs']:,}, "
          f"in both {result['common']:,} -> {'identical' if same else 'DIFFERENT'}")
    print(f"    recovered (true counterpart): {100 * result['recovered']:.4f}%")
    print(f"    largest separation of a match: {result['max_sep']:.6f}\" by astropy, "
          f"{result['max_reported']:.6f}\" reported; beyond {radius:g}\": {result['beyond']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--radius", type=float, default=1.0, help="arcsec")
    parser.add_argument("--scatter", type=float, default=0.3, help="total RMS offset, arcsec")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="xptools-xmatch-")
    os.makedirs(work, exist_ok=True)
    ours, theirs = os.path.join(work, "xptools.fits"), os.path.join(work, "astropy.fits")

    print(f"building inputs in {work} ...", file=sys.stderr)
    left, right = build(work, "sky", args.rows, args.scatter, "sky", seed=1)
    xptools, astropy = commands(left, right, args.radius, ours, theirs)
    times = {"xptools": [], "astropy": []}
    for _ in range(args.repeat):
        times["astropy"].append(timed(astropy))
        times["xptools"].append(timed(xptools))
    print(f"crossmatch {args.rows:,} x {args.rows:,} positions, radius {args.radius:g}\", "
          f"offsets of {args.scatter:g}\" RMS; FITS in, FITS out; {os.cpu_count()} cores; "
          f"best / median of {args.repeat}")
    for name, values in times.items():
        print(f"  {name:8s} {min(values):6.2f} s / {float(np.median(values)):6.2f} s")
    print(f"  xptools is {min(times['astropy']) / min(times['xptools']):.2f}x as fast "
          f"(best times)")
    report("all sky", args.rows, check(ours, theirs, args.rows, args.radius), args.radius)
    for seed, (region, label) in enumerate((("ra0", "within 0.5 deg of RA = 0/360"),
                                            ("north", "within 2 deg of the north pole"),
                                            ("south", "within 2 deg of the south pole")), 2):
        n = args.rows // 10
        left, right = build(work, region, n, args.scatter, region, seed)
        xptools, astropy = commands(left, right, args.radius, ours, theirs)
        subprocess.run(xptools, check=True)
        subprocess.run(astropy, check=True)
        report(label, n, check(ours, theirs, n, args.radius), args.radius)


if __name__ == "__main__":
    main()
