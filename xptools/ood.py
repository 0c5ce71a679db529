"""Out-of-distribution detectors on a model's embedding (Shen, Speagle & Ho 2026, Sec. III.2
and IV.3), fitted on the training stars, with percentiles against held-out reference stars.

Three detectors, each a raw score per star:

- `Mahalanobis`: the distance sqrt((e - mu)^T Sigma^-1 (e - mu)) to the training embeddings'
  mean under their one full covariance (high = unusual);
- `IsolationForest` (Liu, Ting & Zhou 2008): the normality score -2^(-E[h(e)] / c(psi)), with
  E[h] the mean path length of e over the trees and c(psi) the mean path length of an
  unsuccessful search in a binary tree of psi points (low = unusual; scikit-learn's
  ``score_samples``);
- `GaussianMixture`: ln p(e) under a K = 10 component full-covariance mixture (low = unusual).

Beside them, one check that reads no embedding (`PhotometricConsistency`): whether the XP
spectrum holds the light of the star's BP and RP magnitudes.

Each raw score becomes a percentile: the percentage of reference stars with a lower score
(`Reference`). The reference stars are held out of training (the model's monitor split), since
the percentiles of the very points a detector was fitted on are biased. So the Mahalanobis
percentile is high for an unusual star, the other two low (the cuts follow: > 99.5, < 2.5,
< 0.5 by default).

Fitting uses scikit-learn (imported by `fit_detectors` only); the fitted detectors are plain
arrays (`Detectors.arrays`, saved as ``detectors.safetensors`` in the model directory, never
pickled) and scoring is numpy alone, here, so that a model directory runs no code on loading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xptools.errors import UserError

FILE = "detectors.safetensors"
NAMES = ("mahalanobis", "iforest", "gmm")
GMM_COMPONENTS = 10           # Shen, Speagle & Ho: K = 10
FOREST_TREES = 100            # Liu, Ting & Zhou 2008: 100 trees of psi = 256 points
FOREST_SAMPLES = 256
LABEL_PERCENTILES = (1.0, 99.0)   # the training labels' range the label-side flag uses
EULER_GAMMA = 0.5772156649015329


class Mahalanobis:
    def __init__(self, mean: np.ndarray, precision_cholesky: np.ndarray):
        self.mean, self.precision_cholesky = mean, precision_cholesky

    @classmethod
    def fit(cls, e: np.ndarray) -> "Mahalanobis":
        mean = e.mean(axis=0)
        covariance = np.cov(e, rowvar=False).reshape(e.shape[1], e.shape[1])
        # a tiny ridge keeps a degenerate dimension (constant over the training stars) finite
        covariance += np.eye(len(mean)) * 1e-9 * max(np.trace(covariance) / len(mean), 1e-30)
        lower = np.linalg.cholesky(covariance)                   # Sigma = L L^T
        return cls(mean, np.linalg.inv(lower).T)                 # d^2 = |(e - mu) L^-T|^2

    def score(self, e: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum(((e - self.mean) @ self.precision_cholesky) ** 2, axis=1))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "precision_cholesky": self.precision_cholesky}


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n) = 2 H(n - 1) - 2 (n - 1) / n, the mean path length of an unsuccessful search in a
    binary search tree of n points (Liu, Ting & Zhou 2008, Eq. 1); c(2) = 1, c(n <= 1) = 0."""
    n = np.asarray(n, np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    out[n == 2] = 1.0
    return out


class IsolationForest:
    """Trees as arrays (one row per tree, padded): the children of each node (-1 at a leaf),
    the feature and threshold it splits on (x[feature] <= threshold goes left), and the
    training points that reached it."""

    def __init__(self, left, right, feature, threshold, samples, max_samples: int):
        self.left, self.right = left.astype(np.int64), right.astype(np.int64)
        self.feature, self.threshold = feature.astype(np.int64), threshold
        self.samples = samples
        self.max_samples = int(np.asarray(max_samples).ravel()[0])   # (an array when loaded)

    @classmethod
    def fit(cls, e: np.ndarray, seed: int) -> "IsolationForest":
        from sklearn.ensemble import IsolationForest as Forest

        forest = Forest(n_estimators=FOREST_TREES, max_samples=min(FOREST_SAMPLES, len(e)),
                        random_state=seed).fit(e)
        trees = [t.tree_ for t in forest.estimators_]
        width = max(t.node_count for t in trees)

        def padded(get, fill, dtype):
            out = np.full((len(trees), width), fill, dtype)
            for i, t in enumerate(trees):
                out[i, :t.node_count] = get(i, t)
            return out

        # a tree's features index the columns it was given (estimators_features_): map back
        features = forest.estimators_features_
        return cls(padded(lambda i, t: t.children_left, -1, np.int64),
                   padded(lambda i, t: t.children_right, -1, np.int64),
                   padded(lambda i, t: np.where(t.feature >= 0,
                                                features[i][np.maximum(t.feature, 0)], 0),
                          0, np.int64),
                   padded(lambda i, t: t.threshold, 0.0, np.float64),
                   padded(lambda i, t: t.n_node_samples, 0, np.float64),
                   forest.max_samples_)

    def score(self, e: np.ndarray) -> np.ndarray:
        n_trees = len(self.left)
        node = np.zeros((n_trees, len(e)), np.int64)
        depth = np.zeros((n_trees, len(e)))
        trees = np.arange(n_trees)[:, None]
        while True:
            left = self.left[trees, node]
            inner = left >= 0
            if not inner.any():                 # every path has reached its leaf
                break
            value = np.take_along_axis(e.T, self.feature[trees, node], axis=0)
            go_left = value <= self.threshold[trees, node]
            node = np.where(inner, np.where(go_left, left, self.right[trees, node]), node)
            depth += inner
        # E[h]: the edges walked plus c(points left at the leaf), averaged over the trees
        path = depth + average_path_length(self.samples[trees, node])
        scale = average_path_length(np.array([self.max_samples]))[0]
        return -(2.0 ** (-path.mean(axis=0) / scale))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"left": self.left, "right": self.right, "feature": self.feature,
                "threshold": self.threshold, "samples": self.samples,
                "max_samples": np.array([self.max_samples], np.int64)}


class GaussianMixture:
    def __init__(self, weights: np.ndarray, means: np.ndarray, precision_cholesky: np.ndarray):
        self.weights, self.means = weights, means
        self.precision_cholesky = precision_cholesky       # (K, d, d): y = (e - mu_k) P_k

    @classmethod
    def fit(cls, e: np.ndarray, seed: int) -> "GaussianMixture":
        from sklearn.mixture import GaussianMixture as Mixture

        mixture = Mixture(n_components=min(GMM_COMPONENTS, len(e)), covariance_type="full",
                          random_state=seed, max_iter=500, reg_covar=1e-6).fit(e)
        return cls(mixture.weights_, mixture.means_, mixture.precisions_cholesky_)

    def score(self, e: np.ndarray) -> np.ndarray:
        """ln p(e) = ln sum_k w_k N(e | mu_k, Sigma_k)."""
        d = e.shape[1]
        log_det = np.log(np.diagonal(self.precision_cholesky, axis1=1, axis2=2)).sum(axis=1)
        terms = np.empty((len(e), len(self.weights)))
        for k, (mean, chol) in enumerate(zip(self.means, self.precision_cholesky)):
            y = (e - mean) @ chol
            terms[:, k] = (np.log(self.weights[k]) + log_det[k] - 0.5 * d * math.log(2 * math.pi)
                           - 0.5 * np.sum(y * y, axis=1))
        top = terms.max(axis=1)
        return top + np.log(np.exp(terms - top[:, None]).sum(axis=1))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "means": self.means,
                "precision_cholesky": self.precision_cholesky}


class PhotometricConsistency:
    """Does the XP spectrum hold the light of the star's BP and RP magnitudes? Per band, the
    flux I_band from the mean magnitude (DR3 zero points) against its estimate from the
    spectrum on the model grid, sum_l w_l F_l: the weights w, an effective passband, are fitted
    by least squares (sum_l w_l F_l / I_band = 1) on the training stars without a BP/RP flux
    excess. r = ln(sum_l w_l F_l / I_band) is then about 0.5% (BP) and 0.2% (RP) at G = 12
    on APOGEE stars, and its robust spread sigma(G) is kept per magnitude bin. The score is
    the larger |r - median(G)| / sigma(G) of the bands that have a value, high = unusual (a
    BP half scaled by 10% is a 10-20 sigma excursion); NaN without the magnitudes or the
    samples; +inf where a band's weighted flux is not positive."""

    MAGNITUDES = {"bp": "phot_bp_mean_mag", "rp": "phot_rp_mean_mag"}
    G_EDGES = np.array([-np.inf, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, np.inf])
    MIN_BIN = 50   # stars a magnitude bin needs for its own sigma

    def __init__(self, weights: np.ndarray, g_centres: np.ndarray, centre: np.ndarray,
                 sigma: np.ndarray):
        self.weights = weights                          # (2, samples of the model grid)
        self.g_centres = g_centres                      # (m,): magnitude bins' median G
        self.centre, self.sigma = centre, sigma         # (2, m): median and spread of r

    @classmethod
    def _inputs(cls, chunk, n: int):
        from xptools.models.features import REFERENCE, float_column
        from xptools.photometry import ZERO_POINT

        band_flux = np.stack([10.0 ** (-0.4 * (float_column(chunk, c, n) - ZERO_POINT[b]))
                              for b, c in cls.MAGNITUDES.items()], axis=1)
        return band_flux, float_column(chunk, REFERENCE, n)

    @staticmethod
    def _log_ratios(weights, flux, band_flux):
        """r per band from the band's own samples (NaN where one of them is missing)."""
        r = np.full(band_flux.shape, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            for b in range(2):
                used = weights[b] != 0
                estimate = flux[:, used] @ weights[b, used]
                r[:, b] = np.where(estimate > 0, np.log(estimate / band_flux[:, b]),
                                   np.where(np.isfinite(estimate) & np.isfinite(band_flux[:, b]),
                                            np.inf, np.nan))   # no positive flux: +inf
        return r

    @classmethod
    def fit(cls, wavelengths, flux, chunk, clean) -> "PhotometricConsistency | None":
        """From the training rows' flux on the model grid (``clean``: the rows without a flux
        excess); None when too few have the magnitudes."""
        from xptools.metrics import sigma_mad
        from xptools.xp import BAND_OVERLAP

        wavelengths = np.asarray(wavelengths, np.float64)
        band_flux, g = cls._inputs(chunk, len(flux))
        ok = (clean & np.isfinite(flux).all(axis=1) & np.isfinite(band_flux).all(axis=1)
              & np.isfinite(g))
        if ok.sum() < max(2 * len(wavelengths), 200):
            return None
        edge = sum(BAND_OVERLAP) / 2
        weights = np.zeros((2, len(wavelengths)))
        for b, half in enumerate((wavelengths < edge, wavelengths >= edge)):
            x = flux[ok][:, half] / band_flux[ok, b, None]
            weights[b, half] = np.linalg.lstsq(x, np.ones(len(x)), rcond=None)[0]
        r = cls._log_ratios(weights, flux[ok], band_flux[ok])
        which = np.digitize(g[ok], cls.G_EDGES) - 1
        bins = [which == k for k in range(len(cls.G_EDGES) - 1)
                if (which == k).sum() >= cls.MIN_BIN] or [np.ones(len(which), bool)]
        centres = np.array([np.median(g[ok][rows]) for rows in bins])
        centre = np.array([[np.median(r[rows, b]) for rows in bins] for b in range(2)])
        sigma = np.array([[sigma_mad(r[rows, b]) for rows in bins] for b in range(2)])
        return cls(weights, centres, centre, sigma)

    def score(self, flux: np.ndarray, chunk) -> np.ndarray:
        """max over the bands with a value of |r - median(G)| / sigma(G); NaN when neither
        band has one."""
        band_flux, g = self._inputs(chunk, len(flux))
        r = self._log_ratios(self.weights, flux, band_flux)
        z = np.stack([np.abs(r[:, b] - np.interp(g, self.g_centres, self.centre[b]))
                      / np.interp(g, self.g_centres, self.sigma[b]) for b in range(2)], axis=1)
        return np.fmax(z[:, 0], z[:, 1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "g_centres": self.g_centres, "centre": self.centre,
                "sigma": self.sigma}


class Reference:
    """The sorted scores of the reference stars: a score's percentile is the percentage of
    them with a lower score (0..100; NaN for a NaN score)."""

    def __init__(self, scores: np.ndarray):
        self.scores = np.sort(np.asarray(scores, np.float64))

    def percentile(self, score: np.ndarray) -> np.ndarray:
        score = np.asarray(score, np.float64)
        below = np.searchsorted(self.scores, score, side="left")
        return np.where(np.isnan(score), np.nan, 100.0 * below / len(self.scores))


DETECTORS = {"mahalanobis": Mahalanobis, "iforest": IsolationForest, "gmm": GaussianMixture}


@dataclass
class Detectors:
    """What `xptools flag` needs from a model directory: the embedding the detectors read
    (e.g. ``head`` of an msa), the fitted detectors, their reference scores, and (for a label
    model) the training labels' 1st and 99th percentiles."""

    embedding: str
    detectors: dict[str, object]
    references: dict[str, Reference]
    label_range: dict[str, list[float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)   # rows fitted on and referenced, seed
    photometry: PhotometricConsistency | None = None   # referenced as "photometry"

    def scores(self, e: np.ndarray, flux: np.ndarray | None = None,
               chunk=None) -> dict[str, np.ndarray]:
        """Raw score and percentile of each detector, NaN for rows with a non-finite embedding;
        with the rows' ``flux`` on the model grid (and their ``chunk``), the photometric
        consistency too."""
        ok = np.isfinite(e).all(axis=1)
        out = {}
        for name, detector in self.detectors.items():
            raw = np.full(len(e), np.nan)
            if ok.any():
                raw[ok] = detector.score(np.asarray(e[ok], np.float64))
            out[name] = raw
            out[name + "_pct"] = self.references[name].percentile(raw)
        if self.photometry is not None and flux is not None:
            out["photometry"] = self.photometry.score(flux, chunk)
            out["photometry_pct"] = self.references["photometry"].percentile(out["photometry"])
        return out

    # -- in a model directory: arrays in detectors.safetensors, the rest in config.json

    def to_config(self) -> dict:
        return {"embedding": self.embedding, "label_range": self.label_range, **self.info}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        parts = {**self.detectors, **({"photometry": self.photometry}
                                      if self.photometry is not None else {})}
        for name, detector in parts.items():
            out.update({f"{name}.{k}": np.ascontiguousarray(v)
                        for k, v in detector.arrays().items()})
            out[f"{name}.reference"] = self.references[name].scores
        return out

    @classmethod
    def from_arrays(cls, config: dict, arrays: dict[str, np.ndarray], file: str) -> "Detectors":
        def part(name: str) -> dict[str, np.ndarray]:
            return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}

        try:
            detectors, references, photometry = {}, {}, None
            for name, kind in DETECTORS.items():
                values = part(name)
                references[name] = Reference(values.pop("reference"))
                detectors[name] = kind(**values)
            values = part("photometry")
            if values:   # (a model without magnitudes in its training table has none)
                references["photometry"] = Reference(values.pop("reference"))
                photometry = PhotometricConsistency(**values)
            info = {k: v for k, v in config.items() if k not in ("embedding", "label_range")}
            return cls(config["embedding"], detectors, references,
                       dict(config.get("label_range", {})), info, photometry)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise UserError(f"{file}: bad detectors ({type(e).__name__}: {e})") from e


def fit_detectors(model, table, name: str, seed: int, embedding: str | None = None) -> Detectors:
    """Fit the three detectors on the embeddings of ``table``'s training rows and take their
    reference scores on its held-out rows: the model's monitor split (the rows early stopping
    watched, never trained on), chosen by the same hash of source_id as in training.
    ``embedding``: one of the model's EMBEDDINGS (default: the first)."""
    from xptools.flags import FLUX_EXCESS_LIMIT
    from xptools.models.features import XPSource, flux_excess_of, label_array, monitor_split

    if "source_id" not in table:
        raise UserError(f"{name}: no source_id column: the held-out reference stars are found "
                        f"by the hash of source_id that training used")
    embedding = embedding or model.EMBEDDINGS[0]
    xp, _ = XPSource(table, name, model.features)(table)
    e, _ = model.embedding(table, xp, embedding)
    ok = np.isfinite(e).all(axis=1)
    held = monitor_split(table, model.hyper.monitor_fraction, seed)
    fit, reference = ok & ~held, ok & held
    if fit.sum() < 2 * e.shape[1] or reference.sum() < 20:
        raise UserError(f"{name}: too few rows to fit the out-of-distribution detectors "
                        f"({int(fit.sum())} to fit on, {int(reference.sum())} held out; "
                        f"need {2 * e.shape[1]} and 20)")
    e = np.asarray(e, np.float64)
    detectors = {"mahalanobis": Mahalanobis.fit(e[fit]),
                 "iforest": IsolationForest.fit(e[fit], seed),
                 "gmm": GaussianMixture.fit(e[fit], seed)}
    references = {n: Reference(d.score(e[reference])) for n, d in detectors.items()}
    photometry = None
    if model.features.xp == "sampled":
        clean = ~(np.abs(flux_excess_of(table)) > FLUX_EXCESS_LIMIT)
        photometry = PhotometricConsistency.fit(model.features.wavelengths, xp[fit],
                                                table.rows(fit), clean[fit])
    if photometry is not None:   # referenced on held-out stars without a flux excess too
        rows = reference & clean
        scores = photometry.score(xp[rows], table.rows(rows))
        if np.isfinite(scores).sum() >= 20:
            references["photometry"] = Reference(scores[np.isfinite(scores)])
        else:
            photometry = None
    label_range = {}
    labels = getattr(model, "labels", None) or []
    if labels and all(l in table for l in labels):
        y = label_array(table, labels, name)[fit]
        label_range = {l: np.nanpercentile(y[:, j], LABEL_PERCENTILES).tolist()
                       for j, l in enumerate(labels) if np.isfinite(y[:, j]).any()}
    info = {"fitted_rows": int(fit.sum()), "reference_rows": int(reference.sum()),
            "seed": int(seed), "gmm_components": len(detectors["gmm"].weights),
            "forest_trees": len(detectors["iforest"].left)}
    return Detectors(embedding, detectors, references, label_range, info, photometry)
