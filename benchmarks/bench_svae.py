"""Acceptance figures of a scatter VAE on the APOGEE validation split: reconstruction, what the
latent space knows about stellar labels (k-NN), and outlier scores of spectra with injected
defects.

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_svae.py [--model DIR] [--data recipes/work]

The model defaults to the shipped `xptools embed` model.

1. Reconstruction (z = mu): the median |x_hat - x| / x over stars and samples at 400-1000 nm,
   and per sample the median of R = (x - x_hat) / sigma (and of R with the scatter added to
   sigma in quadrature).
2. k-NN: each validation star's label is the mean over its 20 nearest training stars in z
   (Euclidean); sigma_MAD of prediction - APOGEE. For comparison the same k-NN on the 115
   standardised input features the encoder sees, and on their first 6 principal components;
   the standard deviation of each latent dimension over the training stars (a dimension the
   KL term has pulled onto the prior has mu near 0 for every star); then z and the input
   features for giants and dwarfs apart (APOGEE logg <= 3.5 or above), with the share of hot
   stars (Teff > 7000 K) in each, and by APOGEE's K-band extinction (ak_targ, when present),
   with the share of dwarfs in each bin.
3. Outliers: defects injected into validation spectra (sampled flux, 2 nm grid), each star's
   outlier percentile among the training stars (docs/generate.md): the fraction above 99; for
   comparison, the fraction above the training stars' 99th percentile of chi2 alone. The
   headline amplitudes (*) were fixed before looking at the results: the BP half (< 640 nm)
   scaled by 10%, a spike of +20% of the flux at one sample (400-1000 nm), G wrong by 0.2 mag;
   the other rows show how detection depends on the amplitude. A second column counts only
   the stars without a BP/RP flux excess, |C*| <= 3 sigma_C* (Riello et al. 2021;
   xptools.photometry): beyond that the XP spectrum holds light that G does not (a
   neighbour, a crowded field), so those stars are atypical before any defect is injected.
   The last column is what no outlier score can beat: the power of the most powerful test
   (Neyman-Pearson) at the same 1% false-positive rate for a detector that knows each
   star's true spectrum and the defect exactly (amplitude, sign, which sample), so that only
   the noise, Gaussian with the flux errors, is unknown; averaged over the stars and the
   defect's random sign or sample. For the spike a second figure drops the knowledge of the
   sample: the best test then looks for the largest residual among the candidate samples.
   Last, the wrong G at its headline amplitude split by sign: a G too faint makes the
   spectrum too bright for it, as a BP/RP flux excess C* (xptools.photometry) does, so the
   line also says how many training stars have a flux excess at least that large.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from scipy.stats import norm

from xptools import models
from xptools.io import read_table
from xptools.metrics import sigma_mad
from xptools.flags import FLAG_NO_ERRORS, FLAG_UNUSABLE, FLUX_EXCESS_LIMIT
from xptools.models.features import GAIA_MAGNITUDES, flux_excess_of, label_array
from xptools.models.svae import knn_labels
from xptools.photometry import flux_excess
from xptools.xp import BAND_OVERLAP, DEFAULT_GRID

LABELS = ("teff", "logg", "fe_h", "alpha_m")
FALSE_POSITIVES = 0.01  # the fraction of training stars above their 99th percentile
BP_EDGE = sum(BAND_OVERLAP) / 2  # nm: the middle of the BP/RP overlap; the "BP half" is below
AK_BINS = [(0.0, 0.05), (0.05, 0.2), (0.2, np.inf)]  # mag, for the k-NN by extinction
DWARF_LOGG = 3.5  # APOGEE logg above which a star counts as a dwarf
DEFECTS = {  # name -> amplitudes; the first is the headline
    "BP half scaled by (1 +/- a)": [0.10, 0.05, 0.20],
    "spike of +a x flux at one sample": [0.20, 0.10, 0.50],
    "G wrong by a mag": [0.20, 0.10, 0.50],
}


def usable(model, table, name):
    """Scaled features and errors of the rows with a complete spectrum and errors."""
    x, sigma, _, flags = model.inputs(table, name, errors=True)
    rows = flags & (FLAG_UNUSABLE | FLAG_NO_ERRORS) == 0
    return x[rows], sigma[rows], rows


def reconstructed(model, table, name):
    """The usable rows' x, sigma, their row mask and `model.reconstruct` of them."""
    x, sigma, rows = usable(model, table, name)
    return {"x": x, "sigma": sigma, "rows": rows, **model.reconstruct(x, sigma)}


def reconstruction(model, validation):
    residuals = model.residuals(validation["x"], validation["sigma"], validation)
    print(f"1. reconstruction, {len(validation['x'])} validation stars (z = mu)")
    print(f"   median |x_hat - x| / x, 400-1000 nm               "
          f"{np.nanmedian(residuals['fractional']):.4f}   (target <= 0.02)")
    for what, r in (("sigma", "r_error"), ("sqrt(sigma^2 + s_hat^2)", "r_total")):
        bias = np.abs(np.median(residuals[r], axis=0))
        print(f"   R = (x - x_hat) / {what:<24}: max |median| {bias.max():.3f}, "
              f"samples with |median| >= 0.1: {int((bias >= 0.1).sum())} of {len(bias)} "
              f"(target: none)")


def knn(model, train, training, valid, validation):
    print("2. k-NN (k = 20) from the training stars to the validation stars, sigma_MAD")
    x_train, rows_train, z_train = training["x"], training["rows"], training["z"]
    x_valid, rows_valid, z_valid = validation["x"], validation["rows"], validation["z"]
    mean = x_train.mean(axis=0)
    components = np.linalg.svd(x_train - mean, full_matrices=False)[2][:model.latent]
    spaces = {"z (6-d latent)": (z_train, z_valid),
              "input features (115-d)": (x_train, x_valid),
              "first 6 principal components": ((x_train - mean) @ components.T,
                                               (x_valid - mean) @ components.T)}
    y_train = label_array(train, list(LABELS), "train")[rows_train]
    y_valid = label_array(valid, list(LABELS), "valid")[rows_valid]
    cool = y_valid[:, 0] < 7000

    def knn_errors(a, b):
        """(n_valid, len(LABELS)): k-NN prediction - APOGEE, from training rows a to rows b."""
        columns = []
        for j in range(len(LABELS)):
            known = np.isfinite(y_train[:, j])
            columns.append(knn_labels(a[known], y_train[known, j], b, k=20) - y_valid[:, j])
        return np.stack(columns, axis=1)

    errors = {name: knn_errors(a, b) for name, (a, b) in spaces.items()}

    def row(name, d, stars):
        cells = [sigma_mad(d[stars, 0]), sigma_mad(d[stars & cool, 0]),
                 *(sigma_mad(d[stars, j]) for j in range(1, len(LABELS)))]
        print(f"   {name:<30}" + "".join(f"{c:>8.3g}" if i != 1 else f"{c:>11.3g}"
                                          for i, c in enumerate(cells)))

    print(f"   {'space':<30}{'Teff':>8}{'Teff<7000':>11}{'logg':>8}{'[Fe/H]':>8}"
          f"{'[a/M]':>8}")
    everyone = np.ones(len(y_valid), bool)
    for name, d in errors.items():
        row(name, d, everyone)
    print("   (targets for z: Teff <= 100 K, [Fe/H] <= 0.12 dex)")
    print("   spread of z over the training stars, per latent dimension (near 0: unused): "
          + " ".join(f"{s:.3g}" for s in z_train.std(axis=0)))
    dwarf = y_valid[:, 1] > DWARF_LOGG
    print(f"   giants (logg <= {DWARF_LOGG:g}) and dwarfs (logg > {DWARF_LOGG:g}) (stars; share "
          f"with Teff > 7000 K):")
    for name, stars in (("giants", ~dwarf), ("dwarfs", dwarf)):
        hot = np.mean(y_valid[stars, 0] > 7000)
        row(f"z, {name} ({int(stars.sum())}; {hot:.2f})", errors["z (6-d latent)"], stars)
        row("input features, same", errors["input features (115-d)"], stars)
    if "ak_targ" in valid:
        ak = np.asarray(valid["ak_targ"], np.float64)[rows_valid]
        print(f"   by APOGEE's K-band extinction ak_targ (stars; dwarfs, logg > {DWARF_LOGG:g}):")
        for low, high in AK_BINS:
            stars = (ak >= low) & (ak < high)
            dwarfs = np.mean(dwarf[stars])
            row(f"z, A_K {low:g}-{high:g} ({int(stars.sum())}; {dwarfs:.2f})",
                errors["z (6-d latent)"], stars)
            row("input features, same", errors["input features (115-d)"], stars)


def injected(flux, g, kind, amplitude, rng, grid, model_grid):
    """A copy of flux (n, 343) and G (n,) with one defect per star (a spike lands on one of
    the samples the model reads, ``model_grid``)."""
    flux, g = flux.copy(), g.copy()
    n = len(flux)
    if kind.startswith("BP"):
        sign = rng.choice([-1.0, 1.0], n)[:, None]
        flux[:, grid < BP_EDGE] *= 1 + sign * amplitude
    elif kind.startswith("spike"):
        candidates = np.flatnonzero(np.isin(grid, model_grid) & (grid >= 400) & (grid <= 1000))
        where = rng.choice(candidates, n)
        flux[np.arange(n), where] *= 1 + amplitude
    else:
        g += rng.choice([-1.0, 1.0], n) * amplitude
    return flux, g


def noise_limit(kind, amplitude, flux, error, grid, model_grid, fpr=FALSE_POSITIVES):
    """Mean over stars (and over the defect's sign or sample) of the power of the most powerful
    test at false-positive rate ``fpr`` for the defect alone against Gaussian noise: with
    d = ||delta / sigma|| over the samples the model reads, Phi(d - z_(1-fpr)). For the spike
    also the power when the sample is unknown: the largest of the N candidate residuals
    r_i / sigma_i against the threshold t with Phi(t)^N = 1 - fpr. The observed flux stands in
    for the true one."""
    read = np.isin(grid, model_grid)
    grid = grid[read]
    snr = np.abs(flux[:, read]) / error[:, read]
    z = norm.isf(fpr)
    if kind.startswith("BP"):
        d = amplitude * np.sqrt(np.sum(snr[:, grid < BP_EDGE] ** 2, axis=1))
        return np.mean(norm.cdf(d - z)), None
    if kind.startswith("G"):
        whole = np.sqrt(np.sum(snr ** 2, axis=1))
        powers = [norm.cdf(abs(10 ** (0.4 * sign * amplitude) - 1) * whole - z)
                  for sign in (-1.0, 1.0)]
        return np.mean(powers), None
    d = amplitude * snr[:, (grid >= 400) & (grid <= 1000)]   # one column per candidate sample
    n = d.shape[1]
    t = norm.ppf((1 - fpr) ** (1 / n))
    unknown = 1 - norm.cdf(t) ** (n - 1) * norm.cdf(t - d)
    return np.mean(norm.cdf(d - z)), np.mean(unknown)


def outliers(model, train, training, valid, rows):
    print("3. outliers: fraction of validation stars above the training 99th percentile")
    chi2_p99 = np.percentile(training["chi2"], 99)
    kept = valid.rows(rows)
    table = kept.select(["source_id", "flux", "flux_error", "phot_g_mean_mag"])
    grid = DEFAULT_GRID
    flux = np.asarray(table["flux"], np.float64)
    error = np.asarray(table["flux_error"], np.float64)
    g = np.asarray(table["phot_g_mean_mag"], np.float64)

    def above(f, gmag):
        """Per star: outlier_percentile above 99, and chi2 above the training 99th percentile."""
        table.columns["flux"], table.columns["phot_g_mean_mag"] = f, gmag
        x, sigma, _ = usable(model, table, "valid")
        statistics = model.reconstruct(x, sigma)
        return model.outlier_percentile(statistics) > 99, statistics["chi2"] > chi2_p99

    blended = np.abs(flux_excess_of(kept)) > FLUX_EXCESS_LIMIT
    rows_train = training["rows"]

    def line(name, flagged, limit=""):
        print(f"   {name:<44}{np.mean(flagged[0]):>10.3f}{np.mean(flagged[0][~blended]):>12.3f}"
              f"{np.mean(flagged[1]):>12.3f}{limit:>16}")

    print(f"   {'':<44}{'outlier_percentile':>22}{'chi2 alone':>12}{'noise limit':>16}")
    cut = f"|C*| <= {FLUX_EXCESS_LIMIT:g}"
    print(f"   {'':<44}{'all':>10}{cut:>12}{'all':>12}{'all':>16}")
    clean = above(flux, g)
    line(f"no defect ({len(flux)} stars, {int((~blended).sum())} with {cut})", clean,
         f"{FALSE_POSITIVES:.3f}")
    rng = np.random.default_rng(0)
    for kind, amplitudes in DEFECTS.items():
        for i, a in enumerate(amplitudes):
            f, gm = injected(flux, g, kind, a, rng, grid, model.wavelengths)
            known, unknown = noise_limit(kind, a, flux, error, grid, model.wavelengths)
            limit = f"{known:.3f}" + (f" ({unknown:.3f})" if unknown is not None else "")
            flagged = above(f, gm)
            line(kind + ", a = " + format(a, "g") + ("*" if i == 0 else " "), flagged, limit)
            if kind.startswith("G") and i == 0:
                g_headline = a, gm > g, flagged[0]
    print("   (target: >= 0.95 for each defect at the headline amplitude *; noise limit in "
          "brackets: the spike's sample unknown)")
    a, fainter, flagged = g_headline
    _, bp, rp = (np.asarray(kept[c], np.float64) for c in GAIA_MAGNITUDES)
    excess = np.nanmedian(flux_excess(g + a, bp, rp)[fainter])
    trained = flux_excess(*(np.asarray(train[c], np.float64) for c in GAIA_MAGNITUDES))
    print(f"   G wrong by {a:g} mag, split by sign: too faint {np.mean(flagged[fainter]):.3f}, "
          f"too bright {np.mean(flagged[~fainter]):.3f}")
    print(f"   (too faint: the spectrum is {10 ** (0.4 * a):.2f} x too bright for G, like a BP/RP "
          f"flux excess C* of {excess:.2f}, the median over those stars; "
          f"{np.mean(trained[rows_train] >= excess):.3f} of the training stars have C* >= "
          f"{excess:.2f})")
    print(f"   no defect, the {int(blended.sum())} stars with |C*| > {FLUX_EXCESS_LIMIT:g} "
          f"sigma_C* (BP/RP flux excess): {np.mean(clean[0][blended]):.3f} above 99")


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=os.path.join(here, "..", "recipes", "work"))
    args = parser.parse_args()
    model = models.load(args.model or models.default_path("embed"))
    train = read_table(os.path.join(args.data, "apogee_train.fits"))
    valid = read_table(os.path.join(args.data, "apogee_valid.fits"))
    print(f"model {os.path.basename(os.path.normpath(model.path))}: {len(train)} training, "
          f"{len(valid)} validation stars")
    validation = reconstructed(model, valid, "valid")
    training = reconstructed(model, train, "train")
    reconstruction(model, validation)
    knn(model, train, training, valid, validation)
    outliers(model, train, training, valid, validation["rows"])


if __name__ == "__main__":
    main()
