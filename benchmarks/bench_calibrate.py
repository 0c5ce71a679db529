"""The shipped `infer` model's error bars on the validation split, before and after
`xptools calibrate --fit scale` (fitted on one half, measured on the other), and the speed of
`xptools calibrate`.

    python benchmarks/bench_calibrate.py [--rows 100000] [--workdir DIR] [--threads 1]

1. The validation split, recipes/work/apogee_valid.fits (made by recipes/prepare_apogee.py
   when missing), labelled with the shipped model's raw outputs: a copy of
   xptools/data/msa-apogee without config.json's calibration section (the same weights), so
   that "before" is the uncalibrated model whether or not the shipped one is calibrated.
2. The stars split in two halves by a hash of source_id (column `half`). For each half H:
   `xptools calibrate --fit scale --fit-where "half == H" --where "half == 1-H"` fits s on H
   and reports the other half before and after: 68% and 95% coverage, sigma_MAD of z, D_KS
   of the PIT and its p-value; for each --scale-target (mad, the default, and coverage), then
   both targets' s and held-out figures side by side.
3. Speed: `xptools calibrate --fit scale` on ROWS rows (the labelled validation rows repeated,
   every column of the infer output, spectra included), without and with --plots; best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VALID = os.path.join(REPO, "recipes", "work", "apogee_valid.fits")
SHIPPED = os.path.join(REPO, "xptools", "data", "msa-apogee")
LABELS = ("teff", "logg", "fe_h", "alpha_m")


def xptools(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xptools", *args], check=True, env=env,
                          capture_output=True, text=True)


def raw_model(work: str) -> str:
    """The shipped model without its calibration (same weights)."""
    path = os.path.join(work, "msa-apogee-raw")
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(SHIPPED, path)
    config_file = os.path.join(path, "config.json")
    with open(config_file) as f:
        config = json.load(f)
    config.pop("calibration", None)
    with open(config_file, "w") as f:
        json.dump(config, f, indent=1)
    return path


def halves(source_id: np.ndarray) -> np.ndarray:
    """0 or 1 per star, from a multiplicative hash of source_id (not the one that made the
    validation split)."""
    ids = np.asarray(source_id, dtype=np.uint64)
    return ((ids * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)).astype(np.int16)


def labelled(work: str, threads: int) -> tuple[str, str]:
    from xptools.io import read_table, write_table

    if not os.path.exists(VALID):
        subprocess.run([sys.executable, os.path.join(REPO, "recipes", "prepare_apogee.py")],
                       check=True)
    model = raw_model(work)
    out = os.path.join(work, "valid_raw.fits")
    env = dict(os.environ, XPTOOLS_THREADS=str(threads))
    xptools("infer", VALID, "--model", model, "--prefix", "msa", "-o", out, "--overwrite",
            "--quiet", env=env)
    table = read_table(out)
    table.add_column("half", halves(table["source_id"]))
    write_table(table, out, overwrite=True)
    return out, model


def held_out(labeled: str, model: str, work: str, target: str) -> None:
    print(f"validation split: {VALID}; predictions of the shipped model without calibration")
    print(f"--fit scale --scale-target {target}: s fitted on one half (bootstrap error); the "
          f"other half before -> after:\n")
    head = (f"{'label':8s} {'fit on':7s} {'s':>15s} | {'68% coverage':>15s} | "
            f"{'95% coverage':>15s} | {'z sigma_MAD':>15s} | {'D_KS (KS p)':>29s}")
    print(head)
    print("-" * len(head))
    for fit_half in (0, 1):
        other = f"half == {1 - fit_half}"
        report = os.path.join(work, f"fit_half{fit_half}.json")
        xptools("calibrate", labeled, "--prefix", "msa", "--model", model, "--fit", "scale",
                "--scale-target", target, "--fit-where", f"half == {fit_half}", "--where",
                other, "--report", report, "--overwrite", "--quiet")
        with open(report) as f:
            r = json.load(f)
        for label in LABELS:
            c = r["fit"]["labels"][label]
            b, a = r["before"][other][label], r["after"][other][label]

            def pair(key, spec):
                return f"{format(b[key], spec)} -> {format(a[key], spec)}"

            ks = (f"{b['ks']:.4f} ({b['ks_p']:.1g}) -> {a['ks']:.4f} ({a['ks_p']:.1g})")
            print(f"{label:8s} {'half ' + str(fit_half):7s} {c['s']:7.3f} +- {c['s_error']:.3f} | "
                  f"{pair('coverage_68', '.3f'):>15s} | {pair('coverage_95', '.3f'):>15s} | "
                  f"{pair('z_sigma_mad', '.3f'):>15s} | {ks:>29s}")
    report = os.path.join(work, "fit_all.json")
    xptools("calibrate", labeled, "--prefix", "msa", "--model", model, "--fit", "scale",
            "--scale-target", target, "--report", report, "--overwrite", "--quiet")
    with open(report) as f:
        r = json.load(f)
    print("\nfitted on the whole split: " + ", ".join(
        f"{l} s = {r['fit']['labels'][l]['s']:.3f} +- {r['fit']['labels'][l]['s_error']:.3f}"
        for l in LABELS))
    print("nominal: 68% coverage 0.683, 95% coverage 0.954, z sigma_MAD 1 (Gaussian), "
          "D_KS small with KS p not tiny\n")


def targets(labeled: str) -> None:
    """The two targets for s (`fit.SCALE_TARGETS`), fitted on one half and measured on the
    other: s, and the held-out 68% coverage and D_KS."""
    from xptools.calibrate import fit
    from xptools.calibrate.diagnostics import ks_distance, pit
    from xptools.io import read_table

    t = read_table(labeled)
    print("\nthe two --scale-target choices, fitted on one half, measured on the other "
          "(68% coverage, D_KS):")
    for fit_half in (0, 1):
        for label in LABELS:
            m, e = (np.asarray(t[f"msa_{label}{s}"], float) for s in ("", "_error"))
            y, e_y = (np.asarray(t[f"{label}{s}"], float) for s in ("", "_err"))
            ok = np.isfinite(m) & np.isfinite(e) & np.isfinite(y) & np.isfinite(e_y)
            on, off = ok & (t["half"] == fit_half), ok & (t["half"] != fit_half)

            def measured(s):
                width = np.sqrt((s * e[off]) ** 2 + e_y[off] ** 2)
                inside = np.mean(np.abs(m[off] - y[off]) <= width)
                return f"{inside:.3f}, {ks_distance(pit(m[off], y[off], width)):.4f}"

            found = {target: fit.fit_scale((m - y)[on], e[on], e_y[on],
                                           np.random.default_rng(0), 0, target)["s"]
                     for target in fit.SCALE_TARGETS}
            print(f"  {label:8s} fit on half {fit_half}: raw ({measured(1.0)})"
                  + "".join(f"; {target} s = {s:.3f} ({measured(s)})"
                            for target, s in found.items()))


def speed(labeled: str, rows: int, work: str) -> None:
    from xptools.io import read_table, write_table

    big = os.path.join(work, f"labeled_{rows}.fits")
    if not os.path.exists(big):
        table = read_table(labeled)
        table = table.rows(np.arange(rows) % len(table))
        table.columns["source_id"] = np.arange(rows, dtype=np.int64) + 10 ** 12
        write_table(table, big, overwrite=True)
    size = os.path.getsize(big) / 1e6
    print(f"\nspeed: {rows:,} rows ({size:.0f} MB FITS, every infer output column, spectra "
          f"included), best of 3, whole command:")
    plots = os.path.join(work, "plots")
    for name, extra in (("--fit scale", []), ("--fit scale --plots DIR", ["--plots", plots]),
                        ("--fit linear", ["--fit", "linear"])):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            xptools("calibrate", big, "--prefix", "msa", "--fit", "scale", *extra,
                    "--overwrite", "--quiet")
            times.append(time.perf_counter() - start)
        print(f"  {name:28s} {min(times):5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--threads", type=int, default=1, help="infer's threads")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="xptools-bench-calibrate-")
    os.makedirs(work, exist_ok=True)
    labeled, model = labelled(work, args.threads)
    for target in ("mad", "coverage"):
        held_out(labeled, model, work, target)
    targets(labeled)
    speed(labeled, args.rows, work)


if __name__ == "__main__":
    main()
