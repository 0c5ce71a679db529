"""Accuracy of a label model against APOGEE on the validation split, next to an XGBoost
baseline trained on the same training split and the same inputs.

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_accuracy.py [--model DIR] [--data recipes/work] [--skip-xgboost]

The model defaults to the shipped `xptools infer` model. The baseline is one gradient-boosted
tree model per label (xgboost, `pip install xgboost-cpu`) on the model's unscaled inputs:
log10(flux / G flux) on its wavelength grid and the colours against G, with early stopping on
5% of the training stars. Both are scored with the same cuts: sigma_MAD of prediction - APOGEE
for all stars and for Teff < 7000 K, and the z-score sigma_MAD with the APOGEE errors (same cuts);
and sigma_MAD apart for the stars without and with a BP/RP flux excess, |C*| > 3 sigma_C*(G)
(infer_flag 256), whose XP spectra hold a neighbour's light.

A second table takes inputs away from the validation stars (2MASS, all photometry but G, the
BP or RP half of the spectrum: NaN below 636 nm or above 642 nm, as a source without that
band) and shows the model's sigma_MAD, z-score sigma_MAD and median uncertainty for each case:
less input should mean wider uncertainties, not a z-score far above 1.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from xptools import models
from xptools.io import read_table
from xptools.metrics import sigma_mad
from xptools.models.features import (FLUX_EXCESS_LIMIT, XPSource, flux_excess_of, label_array,
                                     monitor_split)
from xptools.xp import BAND_OVERLAP, DEFAULT_GRID

MISSING = {  # case -> (columns removed, flux samples set to NaN)
    "all inputs": ((), None),
    "no 2MASS": (("j_m", "h_m", "ks_m"), None),
    "XP + G only": (("j_m", "h_m", "ks_m", "phot_bp_mean_mag", "phot_rp_mean_mag"), None),
    "no BP (RP alone)": ((), DEFAULT_GRID < BAND_OVERLAP[0]),
    "no RP (BP alone)": ((), DEFAULT_GRID > BAND_OVERLAP[1]),
}


def xgboost_predictions(model, train, valid) -> np.ndarray:
    import xgboost

    spec = model.features

    def inputs(table, name):
        xp, _ = XPSource(table, name, spec)(table)
        values, _, observed, _ = spec.raw(table, xp, None)
        return np.where(observed, values, np.nan)

    x_train, x_valid = inputs(train, "train"), inputs(valid, "valid")
    y = label_array(train, model.labels, "train")
    held = monitor_split(train, 0.05, 0)
    out = np.full((len(valid), len(model.labels)), np.nan)
    params = {"eta": 0.05, "max_depth": 7, "subsample": 0.8, "colsample_bytree": 0.5,
              "tree_method": "hist", "nthread": os.cpu_count(), "seed": 0}
    for j, label in enumerate(model.labels):
        ok = np.isfinite(y[:, j])
        fit = xgboost.DMatrix(x_train[ok & ~held], label=y[ok & ~held, j])
        stop = xgboost.DMatrix(x_train[ok & held], label=y[ok & held, j])
        booster = xgboost.train(params, fit, num_boost_round=3000, evals=[(stop, "monitor")],
                                early_stopping_rounds=100, verbose_eval=False)
        out[:, j] = booster.predict(xgboost.DMatrix(x_valid),
                                    iteration_range=(0, booster.best_iteration + 1))
    return out


def scores(pred, truth, cool, labels, table):
    """Per label: sigma_MAD of prediction - truth (Teff < 7000 K for teff), the z-score
    sigma_MAD (when the table has <label>_err) and the median predicted error."""
    out = []
    for j, label in enumerate(labels):
        value, error = pred[label][0], pred[label][1]
        d = value - truth[:, j]
        rows = np.isfinite(d) & (cool if label == "teff" and cool is not None else True)
        ref = (np.asarray(table[f"{label}_err"], float) if f"{label}_err" in table
               else np.full(len(d), np.nan))
        z = d / np.sqrt(error ** 2 + ref ** 2)
        out.append((sigma_mad(d[rows]), sigma_mad(z[rows]), float(np.median(error[rows]))))
    return out


def missing_inputs(model, valid, truth, cool) -> None:
    print(f"\nmissing inputs (xptools model; Teff for Teff < 7000 K): sigma_MAD / z-score "
          f"sigma_MAD / median error")
    print(f"{'case':<20}" + "".join(f"{l:>26}" for l in model.labels))
    for case, (drop, blank) in MISSING.items():
        table = valid.select([c for c in valid.colnames if c not in drop])
        if blank is not None:
            flux = np.array(table["flux"], np.float64)
            flux[:, blank] = np.nan
            table.columns["flux"] = flux
        x, observed, _ = model.inputs(table, "valid")
        cells = scores(model.predict(x, observed), truth, cool, model.labels, table)
        print(f"{case:<20}" + "".join(f"{f'{a:.4g} / {z:.2f} / {e:.4g}':>26}"
                                      for a, z, e in cells))


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=os.path.join(here, "..", "recipes", "work"))
    parser.add_argument("--skip-xgboost", action="store_true")
    args = parser.parse_args()
    model = models.load(args.model or models.default_path("infer"))
    train = read_table(os.path.join(args.data, "apogee_train.fits"))
    valid = read_table(os.path.join(args.data, "apogee_valid.fits"))
    truth = label_array(valid, model.labels, "valid")
    cool = truth[:, model.labels.index("teff")] < 7000 if "teff" in model.labels else None

    x, observed, _ = model.inputs(valid, "valid")
    pred = model.predict(x, observed)
    ours = np.stack([pred[l][0] for l in model.labels], 1)
    rows = {"xptools " + os.path.basename(os.path.normpath(model.path)): ours}
    if not args.skip_xgboost:
        start = time.perf_counter()
        rows["XGBoost baseline"] = xgboost_predictions(model, train, valid)
        print(f"(XGBoost trained in {time.perf_counter() - start:.0f} s)")
    print(f"validation: {len(valid)} stars; sigma_MAD of prediction - APOGEE "
          f"(Teff for Teff < 7000 K, the others for all stars with the label)")
    print(f"{'model':<28}" + "".join(f"{l:>10}" for l in model.labels))

    def line(name, p, subset=True):
        cells = []
        for j, label in enumerate(model.labels):
            d = (p[:, j] - truth[:, j])[subset & (cool if label == "teff" and cool is not None
                                                  else True)]
            cells.append(sigma_mad(d))
        print(f"{name:<28}" + "".join(f"{c:>10.4g}" for c in cells))

    for name, p in rows.items():
        line(name, p)
    z = [zz for _, zz, _ in scores(pred, truth, cool, model.labels, valid)]
    print(f"{'z-score sigma_MAD (xptools)':<28}" + "".join(f"{c:>10.3f}" for c in z))
    blended = np.abs(flux_excess_of(valid)) > FLUX_EXCESS_LIMIT
    for name, p in rows.items():
        for subset, sign in ((~blended, "<="), (blended, ">")):
            line(f"{name.split()[0]}, |C*| {sign} {FLUX_EXCESS_LIMIT:g} ({int(subset.sum())})", p,
                 subset)
    missing_inputs(model, valid, truth, cool)


if __name__ == "__main__":
    main()
