"""Acceptance figures of `xptools flag` (docs/flag.md) on the APOGEE validation split, on
injected defects and on faint random DR3 sources.

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_flag.py [--model DIR] [--svae DIR] [--compare] [--speed-rows N]

The model defaults to the shipped `xptools flag` model (msa-apogee with its detectors), the
svae to svae-apogee. Every figure goes through `xptools.flag.Flagger`, the code the command
runs.

0. (--compare) The embedding the detectors read: for each candidate (msa head, msa latent,
   svae z) the detectors are fitted as `recipes/fit_detectors.py` fits them (training rows,
   referenced on the model's monitor split) and measured as in 1-3 below.
1. Held-out stars: each detector's flag rate on the validation split, with its binomial
   error, against its nominal rate (the cut).
2. Stars the model handles badly: "bad" = |msa prediction - APOGEE| > 3 sigma_MAD in any
   label (sigma_MAD over the split); the AUROC of each detector's unusualness (the
   percentile, or 100 minus it where a low one is unusual), of recon_chi2_pct and of xp_flag
   itself (its bits are ordered by severity); then the flag rates of Teff >= 7000 K,
   [Fe/H] < -1 and the BP/RP flux excess against the rest.
3. Injected defects (bench_svae's, plus BP missing and noise x5 with the errors unchanged):
   the fraction caught by any bit and by the basic cut (xp_flag >= 64), beside the clean
   stars' rates, over all stars and over those without a flux excess; and the noise limit
   (bench_svae.noise_limit: the best possible test at 1% false positives).
4. Faint random DR3 sources (xp_continuous_2000, sampled first by `xptools.sampling`): the
   rate of each bit, of the basic cut and of xp_flag == 0.
5. Speed: `xptools flag` on --speed-rows rows (validation stars repeated), stars/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy.stats import chi2 as chi2_dist
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_svae import BP_EDGE, injected, noise_limit  # noqa: E402  (the svae's defects)
from inputs import SHARED  # noqa: E402

from xptools import flags as bits  # noqa: E402
from xptools import models  # noqa: E402
from xptools.flag import FlagOptions, Flagger, LOW_IS_UNUSUAL  # noqa: E402
from xptools.io import read_table, write_table  # noqa: E402
from xptools.metrics import sigma_mad  # noqa: E402
from xptools.models.features import label_array  # noqa: E402
from xptools.xp import DEFAULT_GRID  # noqa: E402

LABELS = ("teff", "logg", "fe_h", "alpha_m")
DETECTORS = ("mahalanobis", "iforest", "gmm")
FALSE_POSITIVES = 0.01


def unusualness(scores, name):
    pct = scores[name + "_pct"]
    return 100.0 - pct if name in LOW_IS_UNUSUAL else pct


def flag(model, svae, table, name="valid"):
    flagger = Flagger(table, name, model, svae, FlagOptions(infer_prefix="msa"))
    return flagger.scores(table)


def labelled(model, table):
    """The validation spectra with `xptools infer`'s msa_* label columns (calibrated as infer
    calibrates them), and the bad stars: |msa - APOGEE| > 3 sigma_MAD in any label."""
    x, observed, _ = model.inputs(table, "valid")
    pred = model.predict(x, observed)
    if model.calibration is not None:
        model.calibration.apply_predictions(pred)
    y = label_array(table, list(LABELS), "valid")
    out = spectra_only(table)
    out.add_column("msa_infer_flag", pred["flag"].astype(np.int16))
    bad = np.zeros(len(table), bool)
    for j, label in enumerate(LABELS):
        out.add_column(f"msa_{label}", pred[label][0])
        out.add_column(f"msa_{label}_error", pred[label][1])
        d = pred[label][0] - y[:, j]
        ok = np.isfinite(d)
        bad[ok] |= np.abs(d[ok]) > 3 * sigma_mad(d[ok])
    return out, bad


def auroc(truth, score):
    ok = np.isfinite(score)
    return roc_auc_score(truth[ok], score[ok]) if truth[ok].any() else float("nan")


def held_out(scores, flag, cuts):
    print("1. held-out stars (validation split): flag rate of each detector")
    clean = flag & bits.XP_FLUX_EXCESS == 0
    for name, bit in (("mahalanobis", bits.XP_OOD_MAHALANOBIS), ("iforest", bits.XP_OOD_IFOREST),
                      ("gmm", bits.XP_OOD_GMM), ("recon", bits.XP_RECONSTRUCTION),
                      ("phot", bits.XP_PHOTOMETRY)):
        # the photometric check is referenced on stars without a flux excess: measured on them
        rows = clean if name == "phot" else np.ones(len(flag), bool)
        n = int(rows.sum())
        rate = np.mean(flag[rows] & bit > 0)
        nominal = cuts[name] / 100 if name in LOW_IS_UNUSUAL else 1 - cuts[name] / 100
        error = np.sqrt(nominal * (1 - nominal) / n)
        print(f"   {name:<12} {100 * rate:6.2f}%  nominal {100 * nominal:.2f}% +- "
              f"{100 * error:.2f}% (binomial, n = {n}): {(rate - nominal) / error:+.1f} sigma")


def handled_badly(scores, flag, bad, table):
    print(f"2. stars the model handles badly: {int(bad.sum())} of {len(bad)} with |msa - APOGEE| "
          f"> 3 sigma_MAD in a label")
    for name in DETECTORS:
        print(f"   AUROC {name:<12} {auroc(bad, unusualness(scores, name)):.3f}")
    print(f"   AUROC {'recon':<12} {auroc(bad, scores['recon_pct']):.3f}")
    print(f"   AUROC {'phot':<12} {auroc(bad, scores['phot_pct']):.3f}")
    print(f"   AUROC {'xp_flag':<12} {auroc(bad, flag.astype(float)):.3f} (with infer's labels: "
          f"the label-side bits too)")
    y = label_array(table, ["teff", "fe_h"], "valid")
    excess = flag & bits.XP_FLUX_EXCESS > 0
    subsets = {"Teff >= 7000 K": y[:, 0] >= 7000, "[Fe/H] < -1": y[:, 1] < -1,
               "BP/RP flux excess": excess}
    rest = ~np.any(list(subsets.values()), axis=0)
    print("   bit rates on the split (with infer's labels): " + ", ".join(
        f"{bit}: {np.mean(flag & bit > 0):.3f}" for bit in sorted(bits.BITS["flag"])))
    print(f"   {'':<20}{'stars':>7}{'maha':>7}{'iforest':>8}{'gmm':>6}{'recon':>7}"
          f"{'phot':>6}{'>=64':>7}{'!=0':>7}   (flag rates)")
    for what, rows in {**subsets, "the rest": rest}.items():
        f = flag[rows]
        print(f"   {what:<20}{int(rows.sum()):>7}"
              f"{np.mean(f & bits.XP_OOD_MAHALANOBIS > 0):>7.3f}"
              f"{np.mean(f & bits.XP_OOD_IFOREST > 0):>8.3f}{np.mean(f & bits.XP_OOD_GMM > 0):>6.3f}"
              f"{np.mean(f & bits.XP_RECONSTRUCTION > 0):>7.3f}"
              f"{np.mean(f & bits.XP_PHOTOMETRY > 0):>6.3f}"
              f"{np.mean(f >= bits.XP_BASIC_CUT):>7.3f}{np.mean(f != 0):>7.3f}")


def spectra_only(table):
    return table.select(["source_id", "flux", "flux_error", "phot_g_mean_mag",
                         "phot_bp_mean_mag", "phot_rp_mean_mag", "j_m", "h_m", "ks_m"])


def defects(model, svae, table):
    """name -> (table with the defect, noise limit)."""
    rng = np.random.default_rng(0)
    base = spectra_only(table)
    flux = np.asarray(base["flux"], np.float64)
    error = np.asarray(base["flux_error"], np.float64)
    g = np.asarray(base["phot_g_mean_mag"], np.float64)
    grid = DEFAULT_GRID
    out = {}
    for kind, a, what in (("BP half scaled by (1 +/- a)", 0.10, "BP half scaled by 1 +/- 0.1"),
                          ("spike of +a x flux at one sample", 0.20, "+20% spike at one sample"),
                          ("G wrong by a mag", 0.20, "G wrong by 0.2 mag")):
        f, gm = injected(flux, g, kind, a, rng, grid, svae.wavelengths)
        t = base.select(base.colnames)
        t.columns["flux"], t.columns["phot_g_mean_mag"] = f.astype(np.float32), gm.astype(np.float32)
        known, _ = noise_limit(kind, a, flux, error, grid, svae.wavelengths)
        out[what] = (t, known)
    t = base.select(base.colnames)
    f, e = flux.copy(), error.copy()
    f[:, grid < BP_EDGE] = np.nan
    e[:, grid < BP_EDGE] = np.nan
    t.columns["flux"], t.columns["flux_error"] = f.astype(np.float32), e.astype(np.float32)
    out["BP missing"] = (t, 1.0)
    t = base.select(base.colnames)
    f = flux + rng.normal(size=flux.shape) * error * np.sqrt(5.0 ** 2 - 1)   # 5x the noise
    t.columns["flux"] = f.astype(np.float32)
    read = np.isin(grid, svae.wavelengths)
    k = int(read.sum())   # the best test: chi2 of the residuals against the stated errors
    out["noise x5 (errors unchanged)"] = (t, float(chi2_dist.sf(chi2_dist.isf(FALSE_POSITIVES, k)
                                                                / 25.0, k)))
    return out


def corruptions(model, svae, table):
    print("3. injected defects: fraction caught (any bit | basic cut, xp_flag >= 64)")
    base = spectra_only(table)
    _, clean = flag(model, svae, base)
    excess = clean & bits.XP_FLUX_EXCESS > 0
    print(f"   {'':<36}{'all stars':>16}{'|C*| <= 3 sigma':>18}{'noise limit':>13}")

    def line(what, f, limit):
        print(f"   {what:<36}{np.mean(f != 0):>8.3f}{np.mean(f >= bits.XP_BASIC_CUT):>8.3f}"
              f"{np.mean(f[~excess] != 0):>9.3f}{np.mean(f[~excess] >= bits.XP_BASIC_CUT):>9.3f}"
              f"{limit:>13}")

    line(f"no defect ({len(clean)} stars, {int((~excess).sum())} |C*| <= 3)", clean,
         f"{FALSE_POSITIVES:.3f}")
    g = np.asarray(table["phot_g_mean_mag"], np.float64)
    for what, (t, limit) in defects(model, svae, table).items():
        _, f = flag(model, svae, t)
        line(what, f, f"{limit:.3f}")
        if what.startswith("BP half"):
            by_g = f
    print("   BP half scaled, caught by any bit, by G: " + ", ".join(
        f"{lo:g}-{hi:g}: {np.mean(by_g[(g >= lo) & (g < hi)] != 0):.3f}"
        for lo, hi in ((8, 11), (11, 13), (13, 14), (14, 16))))
    print("   (target: >= 0.95 by any bit for each defect; the noise limit is the power of the "
          "best test at 1% false positives that knows the defect)")


def faint(model, svae, shared):
    from xptools.io import open_table
    from xptools.io import TableWriter
    from xptools.sampling import run_sample

    path = os.path.join(shared, "xp_continuous", "xp_continuous_2000.fits")
    if not os.path.exists(path):
        print(f"4. faint DR3 sources: {path} missing, skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        sampled = os.path.join(tmp, "sampled.fits")
        with TableWriter(sampled, None, True) as out, open_table(path) as src:
            run_sample(src, out, quiet=True)
        table = read_table(sampled)
    _, f = flag(model, svae, table, "xp_continuous_2000")
    print(f"4. faint random DR3 sources ({len(f)}, xp_continuous_2000 sampled): flag rates")
    for bit, meaning in sorted(bits.BITS["flag"].items()):
        print(f"   {bit:>5} {np.mean(f & bit > 0):6.3f}  {meaning[:70]}")
    print(f"   basic cut passed (xp_flag < 64): {np.mean(f < bits.XP_BASIC_CUT):.3f}; "
          f"strict (== 0): {np.mean(f == 0):.3f}")


def speed(valid, rows):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speed.fits")
        base = spectra_only(valid)
        idx = np.arange(rows) % len(base)
        t = base.rows(idx)
        t.columns["source_id"] = np.arange(rows, dtype=np.int64) + 1
        write_table(t, path)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xptools", "flag", path, "-o",
                        os.path.join(tmp, "out.fits"), "-q"], check=True)
        seconds = time.perf_counter() - started
    print(f"5. speed: xptools flag on {rows} rows (sampled FITS in, FITS out, start-up "
          f"included): {seconds:.1f} s, {rows / seconds:,.0f} stars/s (target >= 5,000)")


def compare(msa, svae, train, valid, bad):
    from xptools.ood import fit_detectors

    print("0. which embedding: detectors fitted per candidate, measured on the validation split")
    print(f"   {'embedding':<14}{'maha':>7}{'iforest':>8}{'gmm':>7}   AUROC bad:"
          f"{'maha':>6}{'iforest':>8}{'gmm':>6}   defects caught by any detector "
          f"(BP, spike, G, noise)")
    base_defects = defects(msa, svae, valid)
    for model, embedding in ((msa, "head"), (msa, "latent"), (svae, "z")):
        seed = int(model.provenance.get("seed", 0))
        saved = model.detectors
        model.detectors = fit_detectors(model, train, "train", seed, embedding)
        scores, f = flag(model, svae, valid)
        ood = bits.XP_OOD_MAHALANOBIS | bits.XP_OOD_IFOREST | bits.XP_OOD_GMM
        caught = []
        for what, (t, _) in base_defects.items():
            if what == "BP missing":
                continue
            _, fd = flag(model, svae, t)
            caught.append(f"{np.mean(fd & ood > 0):.2f}")
        print(f"   {model.kind + ' ' + embedding:<14}"
              f"{np.mean(f & bits.XP_OOD_MAHALANOBIS > 0):>7.3f}"
              f"{np.mean(f & bits.XP_OOD_IFOREST > 0):>8.3f}{np.mean(f & bits.XP_OOD_GMM > 0):>7.3f}"
              f"{'':>13}{auroc(bad, unusualness(scores, 'mahalanobis')):>6.3f}"
              f"{auroc(bad, unusualness(scores, 'iforest')):>8.3f}"
              f"{auroc(bad, unusualness(scores, 'gmm')):>6.3f}   {' '.join(caught)}")
        model.detectors = saved


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--svae", default=None)
    parser.add_argument("--data", default=os.path.join(here, "..", "recipes", "work"))
    parser.add_argument("--shared", default=SHARED)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--speed-rows", type=int, default=100_000)
    args = parser.parse_args()
    from xptools.flag import load_models

    model, svae = load_models(args.model, args.svae)
    valid = read_table(os.path.join(args.data, "apogee_valid.fits"))
    print(f"model {os.path.basename(os.path.normpath(model.path))} "
          f"({model.detectors.embedding} embedding), svae "
          f"{os.path.basename(os.path.normpath(svae.path))}: {len(valid)} validation stars")
    msa = model if model.kind == "msa" else models.load(models.default_path("infer"))
    with_labels, bad = labelled(msa, valid)
    if args.compare:
        train = read_table(os.path.join(args.data, "apogee_train.fits"))
        compare(msa, svae, train, with_labels, bad)
    scores, f = flag(model, svae, with_labels)
    held_out(scores, f, FlagOptions().cuts)
    handled_badly(scores, f, bad, valid)
    corruptions(model, svae, valid)
    faint(model, svae, args.shared)
    if args.speed_rows:
        speed(valid, args.speed_rows)


if __name__ == "__main__":
    main()
