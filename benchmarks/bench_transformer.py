"""Acceptance figures of the Transformer model (docs/transformer.md) on the APOGEE validation
split.

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_transformer.py [--model DIR] [--msa DIR] [--skip-xgboost]
                                           [--speed-rows N] [--figures DIR]

The model defaults to the shipped transformer-apogee, the comparison to msa-apogee. Every
answer goes through `TransformerModel.answer`, the code `xptools infer` and `generate` run;
the speeds are those commands themselves.

1. TransformerModel.evaluate (also in the model's card): labels from XP + colours (sigma_MAD,
   z-score sigma_MAD with APOGEE's errors), spectra from labels + colours, BP from RP and RP
   from BP (median |relative residual| over 400..1000 nm; per sample the median and
   sigma_MAD of the pulls), and the never-requested colours from XP + the other colours.
2. Labels side by side: the transformer, msa-apogee, their inverse-variance mean (the
   ensemble), and XGBoost (benchmarks/bench_accuracy.py's baseline, trained here on the
   training split; `pip install xgboost-cpu`), scored as bench_accuracy scores: sigma_MAD of
   prediction - APOGEE, Teff for Teff < 7000 K, the others for every star with the label.
3. Log g from Teff and [Fe/H] alone [Sec. 7.3]: its median sigma against that from XP.
4. Speed: `xptools infer --request teff,logg,fe_h,alpha_m` on --speed-rows rows (validation
   stars repeated) and `xptools generate` of spectra from a table of labels and colours.
With --figures DIR: transformer_teff.png (spectra generated along a Teff sequence, dwarfs
and giants) and transformer_pulls.png (the pulls per sample of the three spectrum tasks).
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
from bench_accuracy import xgboost_predictions  # noqa: E402  (the baseline, as it trains it)

from xptools import models  # noqa: E402
from xptools.io import read_table, write_table  # noqa: E402
from xptools.metrics import sigma_mad  # noqa: E402
from xptools.models.features import XPSource, label_array  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "..", "recipes", "work")
INPUTS = ["source_id", "flux", "flux_error", "phot_g_mean_mag", "phot_bp_mean_mag",
          "phot_rp_mean_mag", "j_m", "h_m", "ks_m"]


def transformer_labels(model, table):
    """Means and sigmas (n, labels) from XP + colours, as `xptools infer` answers them."""
    requests = model.request_types("labels")
    pred = model.predict_chunk(table, XPSource(table, "valid", model.features), requests,
                               given="xp,phot")
    return (np.stack([pred[l][0] for l in model.labels], 1),
            np.stack([pred[l][1] for l in model.labels], 1))


def msa_labels(msa, table, labels):
    x, observed, _ = msa.inputs(table, "valid")
    pred = msa.predict(x, observed)
    return (np.stack([pred[l][0] for l in labels], 1),
            np.stack([pred[l][1] for l in labels], 1))


def compare(model, msa, train, valid, skip_xgboost):
    truth = label_array(valid, model.labels, "valid")
    cool = truth[:, model.labels.index("teff")] < 7000
    ours, ours_error = transformer_labels(model, valid)
    theirs, theirs_error = msa_labels(msa, valid, model.labels)
    w1, w2 = ours_error ** -2, theirs_error ** -2
    rows = {"transformer": ours, "msa-apogee": theirs,
            "ensemble (inverse-variance mean)": (w1 * ours + w2 * theirs) / (w1 + w2)}
    if not skip_xgboost:
        start = time.perf_counter()
        rows["XGBoost (bench_accuracy)"] = xgboost_predictions(msa, train, valid)
        print(f"   (XGBoost trained in {time.perf_counter() - start:.0f} s)")
    print(f"   {'model':<34}" + "".join(f"{l:>10}" for l in model.labels))
    for name, p in rows.items():
        cells = [sigma_mad((p[:, j] - truth[:, j])[cool if label == "teff" else
                                                   np.isfinite(truth[:, j])])
                 for j, label in enumerate(model.labels)]
        print(f"   {name:<34}" + "".join(f"{c:>10.4g}" for c in cells))
    z = []
    for j, label in enumerate(model.labels):
        ref = np.asarray(valid[f"{label}_err"], float)
        d = (ours[:, j] - truth[:, j]) / np.sqrt(ours_error[:, j] ** 2 + ref ** 2)
        z.append(sigma_mad(d[cool if label == "teff" else np.isfinite(d)]))
    print(f"   {'z-score sigma_MAD (transformer)':<34}" + "".join(f"{c:>10.3f}" for c in z))


def log_g_from_teff_and_metallicity(model, table):
    """[Sec. 7.3]: the sigma of log g given Teff and [Fe/H] alone, against XP + colours."""
    source = XPSource(table, "valid", model.features)
    logg = model.request_types("logg")
    for given in ("teff,fe_h", "xp,phot", "teff,fe_h,xp,phot"):
        pred = model.predict_chunk(table, source, logg, given=given)
        value, sigma = pred["logg"][0], pred["logg"][1]
        d = value - np.asarray(table["logg"], float)
        print(f"   given {given:<18} log g: median sigma {np.nanmedian(sigma):.3f}, "
              f"sigma_MAD against APOGEE {sigma_mad(d[np.isfinite(d)]):.3f}")


def speed(model_dir, table, rows):
    with tempfile.TemporaryDirectory() as tmp:
        copies = int(np.ceil(rows / len(table)))
        big = table.rows(np.tile(np.arange(len(table)), copies)[:rows]).select(INPUTS)
        src = os.path.join(tmp, "in.fits")
        write_table(big, src)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xptools", "infer", src, "--model", model_dir,
                        "--request", "teff,logg,fe_h,alpha_m", "-o",
                        os.path.join(tmp, "out.fits"), "--quiet"], check=True)
        seconds = time.perf_counter() - start
        print(f"   xptools infer --request teff,logg,fe_h,alpha_m: {rows} rows in "
              f"{seconds:.1f} s = {rows / seconds:.0f} stars/s (start-up included)")
        n = min(rows, 20_000)
        labels = table.rows(np.tile(np.arange(len(table)), copies)[:n]).select(
            [c for c in INPUTS if c not in ("flux", "flux_error")]
            + ["teff", "logg", "fe_h", "alpha_m"])
        src = os.path.join(tmp, "labels.fits")
        write_table(labels, src)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xptools", "generate", src, "--model",
                        model_dir, "-o", os.path.join(tmp, "g.fits"), "--quiet"], check=True)
        seconds = time.perf_counter() - start
        print(f"   xptools generate (labels + colours -> 58 flux samples): {n} spectra in "
              f"{seconds:.1f} s = {n / seconds:.0f} spectra/s (start-up included)")


def figures(model, report, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xptools.io import Table

    w = np.asarray(model.features.wavelengths)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=120, sharey=True)
    teff = np.arange(3750.0, 7001.0, 500.0)
    requests = model.request_types("xp")
    for ax, logg, what in ((axes[0], 4.5, "dwarfs"), (axes[1], 2.5, "giants")):
        grid = Table()
        for name, value in (("teff", teff), ("logg", np.full_like(teff, logg)),
                            ("fe_h", np.zeros_like(teff)), ("alpha_m", np.zeros_like(teff))):
            grid.add_column(name, value)
        answer = model.spectra(grid, None, requests, None)
        flux, scatter = answer["flux"], answer["scatter"]
        colours = plt.cm.coolwarm_r(np.linspace(0, 1, len(teff)))
        for f, s, t, c in zip(flux, scatter, teff, colours):
            norm = np.nanmean(f)
            ax.plot(w, f / norm, color=c, label=f"{t:.0f} K")
            ax.fill_between(w, (f - s) / norm, (f + s) / norm, color=c, alpha=0.25, lw=0)
        ax.set_title(f"{what}: log g {logg}, [Fe/H] 0, [alpha/M] 0", fontsize=9)
        ax.set_xlabel("wavelength (nm)")
        ax.legend(frameon=False, fontsize=7)
    axes[0].set_ylabel("flux / mean flux (band: sigma_pred)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "transformer_teff.png"))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), dpi=120, sharex=True)
    for task, f in report["spectra"].items():
        top.plot(f["wavelength"], f["pull_median"], "o-", ms=3, label=task)
        bottom.plot(f["wavelength"], f["pull_sigma_mad"], "o-", ms=3, label=task)
    for y in (-0.2, 0.2):
        top.axhline(y, color="grey", ls=":")
    bottom.axhline(1.0, color="grey", ls=":")
    top.set_ylabel("median pull")
    bottom.set_ylabel("sigma_MAD of the pulls")
    bottom.set_xlabel("wavelength (nm)")
    top.legend(frameon=False, fontsize=8)
    top.set_title("pulls (prediction - observed) / sqrt(error^2 + sigma_pred^2)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "transformer_pulls.png"))
    print(f"   figures: {out}/transformer_teff.png, {out}/transformer_pulls.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(models.DATA, "transformer-apogee"))
    parser.add_argument("--msa", default=os.path.join(models.DATA, "msa-apogee"))
    parser.add_argument("--data", default=WORK)
    parser.add_argument("--skip-xgboost", action="store_true")
    parser.add_argument("--speed-rows", type=int, default=100_000)
    parser.add_argument("--figures", default=None)
    args = parser.parse_args()
    valid_path = os.path.join(args.data, "apogee_valid.fits")
    if not os.path.exists(valid_path):
        sys.exit(f"{valid_path} is missing: run python recipes/prepare_apogee.py first")
    model = models.load(args.model)
    valid = read_table(valid_path)
    train = None if args.skip_xgboost else read_table(os.path.join(args.data,
                                                                   "apogee_train.fits"))
    print(f"transformer model {args.model}, validation {valid_path} ({len(valid)} stars)")
    print("1. TransformerModel.evaluate:")
    report = model.evaluate(valid, valid_path)
    print(model.report_text(report))
    print("2. labels from XP + colours: sigma_MAD of prediction - APOGEE (Teff for "
          "Teff < 7000 K, the others for all stars with the label):")
    compare(model, models.load(args.msa), train, valid, args.skip_xgboost)
    print("3. log g from Teff and [Fe/H] alone [Sec. 7.3]:")
    log_g_from_teff_and_metallicity(model, valid)
    print("4. speed:")
    speed(args.model, valid, args.speed_rows)
    if args.figures:
        figures(model, report, args.figures)


if __name__ == "__main__":
    main()
