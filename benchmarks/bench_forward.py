"""Acceptance figures of the forward model (docs/forward.md) on the APOGEE validation split.

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_forward.py [--model DIR] [--speed-rows N] [--figures DIR]

The model defaults to the shipped forward-apogee. Every fit goes through
`ForwardModel.fit_stars`, the code `xptools infer` runs; the speed is `xptools infer` itself.

1. Labels: sigma_MAD, bias and z-score width (Fisher errors with APOGEE's in quadrature)
   against APOGEE, all stars and Teff < 7000 K.
2. Extinction: ext against ak_targ (sigma_MAD, bias).
3. The learned curve: (R - R(Ks)) / (R(442) - R(552)) over 400..990 nm against CCM R_V = 3.1
   (maximum and rms relative difference), and the CCM R_V closest to it (least squares).
4. chi2/dof on the validation stars (Teff < 7000 K): its percentiles and the fraction above
   the flag's 2; as an outlier score, the fraction flagged (infer_flag bit 1024) among stars
   with bench_svae's injected defects.
5. Speed: `xptools infer --model DIR` on --speed-rows rows (validation stars repeated),
   stars/s, and `xptools generate --grid` spectra/s.
With --figures DIR: forward_curve.png (the curve beside CCM) and forward_spectra.png (spectra
generated along a Teff sequence and an extinction sequence).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_svae import injected  # noqa: E402  (the svae benchmark's defects)

from xptools import models  # noqa: E402
from xptools.flags import FLAG_FIT_CHI2  # noqa: E402
from xptools.io import read_table, write_table  # noqa: E402
from xptools.models.forward import XP_WAVELENGTHS, ccm89, curve_table  # noqa: E402
from xptools.xp import DEFAULT_GRID  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VALID = os.path.join(HERE, "..", "recipes", "work", "apogee_valid.fits")


def closest_rv(model) -> float:
    """The CCM R_V whose normalised curve is nearest the learned one over 400..990 nm."""
    table = curve_table(model)
    w = table["wavelength"]
    over = (w >= 400) & (w <= 990)
    best, best_rv = np.inf, np.nan
    for rv in np.arange(2.0, 5.0, 0.01):
        a = ccm89(w, rv)
        ccm = (a - a[-1]) / (ccm89(np.array([442.0]), rv)[0] - ccm89(np.array([552.0]), rv)[0])
        rms = np.sqrt(np.mean((table["r_normalised"][over] - ccm[over]) ** 2))
        if rms < best:
            best, best_rv = rms, rv
    return float(best_rv)


def defects(model, table):
    """Fraction of stars flagged by chi2/dof > 2 with each injected defect."""
    rng = np.random.default_rng(0)
    flux = np.asarray(table["flux"], np.float64)
    error = np.asarray(table["flux_error"], np.float64)
    g = np.asarray(table["phot_g_mean_mag"], np.float64)
    clean = model.fit_stars(table, "valid")["flags"]
    print(f"   no defect: {np.mean(clean & FLAG_FIT_CHI2 > 0):.3f}")
    for kind, a, what in (("BP half scaled by (1 +/- a)", 0.10, "BP half scaled by 1 +/- 0.1"),
                          ("spike of +a x flux at one sample", 0.20, "+20% spike at one sample"),
                          ("G wrong by a mag", 0.20, "G wrong by 0.2 mag")):
        f, gm = injected(flux, g, kind, a, rng, DEFAULT_GRID, XP_WAVELENGTHS)
        t = table.select(table.colnames)
        t.columns["flux"], t.columns["phot_g_mean_mag"] = f.astype(np.float32), gm
        flagged = model.fit_stars(t, "valid")["flags"] & FLAG_FIT_CHI2 > 0
        print(f"   {what}: {np.mean(flagged):.3f}")
    t = table.select(table.colnames)
    t.columns["flux"] = (flux + rng.normal(size=flux.shape) * error * np.sqrt(24.0)).astype(
        np.float32)                                        # 5x the noise, errors unchanged
    print(f"   noise x5 (errors unchanged): "
          f"{np.mean(model.fit_stars(t, 'valid')['flags'] & FLAG_FIT_CHI2 > 0):.3f}")


def speed(model_dir, table, rows):
    with tempfile.TemporaryDirectory() as tmp:
        copies = int(np.ceil(rows / len(table)))
        big = table.rows(np.tile(np.arange(len(table)), copies)[:rows])
        big = big.select(["source_id", "flux", "flux_error", "phot_g_mean_mag",
                          "phot_bp_mean_mag", "phot_rp_mean_mag", "j_m", "h_m", "ks_m"])
        src = os.path.join(tmp, "in.fits")
        write_table(big, src)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xptools", "infer", src, "--model", model_dir,
                        "-o", os.path.join(tmp, "out.fits"), "--quiet"], check=True)
        seconds = time.perf_counter() - start
        print(f"   xptools infer: {rows} rows in {seconds:.1f} s = {rows / seconds:.0f} stars/s "
              f"(start-up included)")
        grid = "teff=3500:7000:1,logg=2.5,fe_h=0,ext=0:0.9:0.1"    # 3501 x 10 spectra
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xptools", "generate", "--model", model_dir,
                        "--grid", grid, "-o", os.path.join(tmp, "g.fits"), "--quiet"],
                       check=True)
        seconds = time.perf_counter() - start
        print(f"   xptools generate --grid: 35010 spectra in {seconds:.1f} s = "
              f"{35010 / seconds:.0f} spectra/s (start-up included)")


def figures(model, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = curve_table(model)
    xp = slice(0, len(XP_WAVELENGTHS))
    rv = closest_rv(model)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(table["wavelength"][xp], table["r_normalised"][xp], "k-", label="learned (XP)")
    ax.plot(table["wavelength"][xp.stop:], table["r_normalised"][xp.stop:], "ko",
            label="learned (2MASS J, H, Ks)")
    w = np.linspace(390, 2200, 400)
    for value, style in ((3.1, "C0--"), (rv, "C1:")):
        a = ccm89(w, value)
        ccm = (a - ccm89(np.array([2159.0]), value)[0]) / (
            ccm89(np.array([442.0]), value)[0] - ccm89(np.array([552.0]), value)[0])
        ax.plot(w, ccm, style, label=f"CCM R_V = {value:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("(R - R(Ks)) / (R(442) - R(552))")
    ax.set_title(f"{os.path.basename(os.path.normpath(model.path))}: learned extinction curve")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "forward_curve.png"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=120, sharey=True)
    teff = np.arange(3750.0, 7001.0, 500.0)
    spectra = model.spectra(np.c_[teff, np.full_like(teff, 4.4), np.zeros_like(teff)],
                            np.zeros_like(teff), np.ones_like(teff))
    colours = plt.cm.coolwarm_r(np.linspace(0, 1, len(teff)))
    for s, t, c in zip(spectra, teff, colours):
        left.plot(XP_WAVELENGTHS, s[xp] / s[xp].mean(), color=c, label=f"{t:.0f} K")
    left.set_title("log g 4.4, [Fe/H] 0, ext 0")
    ext = np.arange(0.0, 1.01, 0.25)
    spectra = model.spectra(np.tile([4750.0, 2.5, 0.0], (len(ext), 1)), ext, np.ones_like(ext))
    for s, e, c in zip(spectra, ext, plt.cm.copper_r(np.linspace(0.1, 0.9, len(ext)))):
        right.plot(XP_WAVELENGTHS, s[xp] / s[xp].mean(), color=c, label=f"ext {e:g}")
    right.set_title("4750 K, log g 2.5, [Fe/H] 0")
    for ax in (left, right):
        ax.set_xlabel("wavelength (nm)")
        ax.legend(frameon=False, fontsize=7)
    left.set_ylabel("flux / mean flux")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "forward_spectra.png"))
    print(f"   figures: {out}/forward_curve.png, {out}/forward_spectra.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(models.DATA, "forward-apogee"))
    parser.add_argument("--valid", default=VALID)
    parser.add_argument("--speed-rows", type=int, default=20_000)
    parser.add_argument("--figures", default=None)
    args = parser.parse_args()
    if not os.path.exists(args.valid):
        sys.exit(f"{args.valid} is missing: run python recipes/prepare_apogee.py first")
    model = models.load(args.model)
    table = read_table(args.valid)
    print(f"forward model {args.model} ({model.to_config()['mode']}), validation "
          f"{args.valid} ({len(table)} stars)")
    report = model.evaluate(table, args.valid)
    print("1-4. labels, extinction, curve, chi2/dof (ForwardModel.evaluate):")
    print(model.report_text(report))
    print(f"   CCM R_V closest to the learned curve (400..990 nm): {closest_rv(model):.2f}")
    print("4. chi2/dof > 2 (infer_flag 1024) with bench_svae's injected defects:")
    defects(model, table)
    print("5. speed:")
    speed(args.model, table, args.speed_rows)
    if args.figures:
        figures(model, args.figures)


if __name__ == "__main__":
    main()
