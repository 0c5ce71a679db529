"""How well predicted uncertainties describe the differences from reference labels.

For predictions m with errors e (and quantiles q16, q84) against reference labels y with
errors e_y:

- PIT (Shen, Speagle & Ho 2026, Eq. 3): p = Phi((y - m) / sqrt(e^2 + e_y^2)). For honest
  errors p is uniform on (0, 1); a U-shaped histogram means over-confident errors, an
  inverted U conservative ones, a skew a bias.
- label-only PIT (their App. A): the same with e_y alone, the floor set by the reference
  labels' own errors. If it is already flat or an inverted U, the reference errors alone
  explain the differences, and the model's errors cannot be tested for being too large.
- D_KS: the Kolmogorov-Smirnov distance of the PIT values from U(0, 1), and its p-value;
  per hexagonal (Teff, log g) cell with at least `MIN_CELL` stars (their Fig. 7).

Ours (the paper only diagnoses):
- coverage: the fraction of references inside [q16, q84] (each half-width widened by e_y in
  quadrature, as Eq. 3 adds e_y), within +-1 and +-2 sqrt(e^2 + e_y^2); nominal 0.683, 0.954;
- z = (m - y) / sqrt(e^2 + e_y^2) and its sigma_MAD (1 for Gaussian, honest errors);
- a reliability diagram: the observed coverage of the central PIT intervals of nominal
  probability 0.05, 0.15, ..., 0.95 (|2p - 1| <= level);
- bias = median(m - y) and sigma_MAD of m - y.
"""

from __future__ import annotations

import math

import numpy as np

from xptools.metrics import sigma_mad

LEVELS = np.round(np.arange(0.05, 1.0, 0.1), 2)   # reliability diagram: 10 nominal levels
PIT_BINS = 20
MIN_CELL = 5             # stars in a Kiel cell for its D_KS
NOMINAL_68 = math.erf(1 / math.sqrt(2))   # 0.6827
NOMINAL_95 = math.erf(2 / math.sqrt(2))   # 0.9545
TAILS = 0.32             # nominal fraction of PIT values below 0.16 or above 0.84


def normal_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def pit(pred: np.ndarray, ref: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Eq. 3: Phi((y - m) / sigma); sigma = 0 gives 0, 0.5 or 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (ref - pred) / sigma
    beyond = np.where(ref > pred, np.inf, np.where(ref < pred, -np.inf, 0.0))
    return normal_cdf(np.where(sigma > 0, x, beyond))


def ks_distance(p: np.ndarray) -> float:
    """sup |F_n(p) - p| of values p in [0, 1] against U(0, 1)."""
    p = np.sort(p)
    n = len(p)
    if not n:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(max((i / n - p).max(), (p - (i - 1) / n).max()))


def ks_test(p: np.ndarray) -> tuple[float, float]:
    """(D_KS, p-value) of PIT values against U(0, 1): the exact two-sided distribution up to
    10,000 values, Kolmogorov's asymptotic one above (as scipy.stats.kstest chooses), which
    spares importing scipy.stats for large tables."""
    n = len(p)
    if n == 0:
        return float("nan"), float("nan")
    d = ks_distance(p)
    if n <= 10_000:
        from scipy.stats import kstwo

        return d, float(np.clip(kstwo.sf(d, n), 0, 1))
    from scipy.special import kolmogorov

    return d, float(np.clip(kolmogorov(math.sqrt(n) * d), 0, 1))


def pit_shape(p: np.ndarray) -> str:
    """In words: flat, U (over-confident) or inverted U (conservative), and skewed, when the
    tail fraction (p < 0.16 or p > 0.84, nominal 0.32) or the fraction below 0.5 differ from
    their nominal values by more than 3 binomial sigma and by 0.02."""
    n = len(p)
    if n == 0:
        return "-"
    tails = float(np.mean((p < 0.16) | (p > 0.84)))
    low = float(np.mean(p < 0.5))
    tol_tails = max(0.02, 3 * math.sqrt(TAILS * (1 - TAILS) / n))
    tol_low = max(0.02, 3 * math.sqrt(0.25 / n))
    words = []
    if tails > TAILS + tol_tails:
        words.append("U: over-confident")
    elif tails < TAILS - tol_tails:
        words.append("inverted U: conservative")
    if low > 0.5 + tol_low:
        words.append("skewed: predictions high")
    elif low < 0.5 - tol_low:
        words.append("skewed: predictions low")
    return ", ".join(words) or "flat"


def reliability(p: np.ndarray) -> list[float]:
    """Observed coverage of the central PIT intervals of nominal probability `LEVELS`."""
    if len(p) == 0:
        return [float("nan")] * len(LEVELS)
    width = np.sort(np.abs(2 * p - 1))
    return (np.searchsorted(width, LEVELS, side="right") / len(p)).tolist()


def histogram(p: np.ndarray) -> list[int]:
    return np.histogram(p, bins=PIT_BINS, range=(0, 1))[0].tolist()


def _mean(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else float("nan")


def label_diagnostics(pred, error, q16, q84, ref, ref_error) -> dict:
    """Every diagnostic of one label on rows whose values are all finite (the caller's job)."""
    d = pred - ref
    sigma = np.sqrt(error ** 2 + ref_error ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = d / sigma
    p = pit(pred, ref, sigma)
    p_label = pit(pred, ref, ref_error)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_label = d / ref_error
    ks, ks_p = ks_test(p)
    ks_label, _ = ks_test(p_label)
    out = {
        "n": int(len(d)),
        "bias": float(np.median(d)) if len(d) else float("nan"),
        "sigma_mad": sigma_mad(d),
        "z_sigma_mad": sigma_mad(z),
        "coverage_68": _mean(np.abs(z) <= 1),
        "coverage_95": _mean(np.abs(z) <= 2),
        "coverage_68_quantiles": None,
        "ks": ks, "ks_p": ks_p, "pit_shape": pit_shape(p),
        "pit_histogram": histogram(p), "reliability": reliability(p),
        "median_error": float(np.median(error)) if len(d) else float("nan"),
        "median_ref_error": float(np.median(ref_error)) if len(d) else float("nan"),
        "label_only": {"z_sigma_mad": sigma_mad(z_label),
                       "coverage_68": _mean(np.abs(z_label) <= 1), "ks": ks_label,
                       "pit_shape": pit_shape(p_label), "pit_histogram": histogram(p_label)},
    }
    if q16 is not None and q84 is not None:
        low = pred - np.sqrt((pred - q16) ** 2 + ref_error ** 2)
        high = pred + np.sqrt((q84 - pred) ** 2 + ref_error ** 2)
        out["coverage_68_quantiles"] = _mean((ref >= low) & (ref <= high))
    out["label_only"]["floor"] = at_floor(out)
    return out


def at_floor(diagnostics: dict) -> bool:
    """Whether the reference errors alone already cover at least 68.3% of the differences:
    the label-only PIT is flat or an inverted U, so no scaling of the model's errors can be
    fitted against these labels (`fit.fit_scale` keeps s = 1)."""
    return bool(diagnostics["label_only"]["coverage_68"] >= NOMINAL_68)


# -- the Kiel diagram in hexagonal cells -------------------------------------------------------

def hex_cells(x: np.ndarray, y: np.ndarray, gridsize: int, extent: tuple[float, ...]):
    """The hexagonal cell of each point (x, y), as matplotlib's hexbin places them for the
    same gridsize and extent: returns (cell index per point, cell centres (k, 2)).

    Two rectangular lattices, the second offset by half a cell, and each point goes to the
    nearer centre in a metric where the hexagons are regular."""
    xmin, xmax, ymin, ymax = extent
    nx = gridsize
    ny = max(int(nx / math.sqrt(3)), 1)
    sx = (xmax - xmin) / nx or 1.0
    sy = (ymax - ymin) / ny or 1.0
    ix = (x - xmin) / sx
    iy = (y - ymin) / sy
    ix1, iy1 = np.round(ix), np.round(iy)
    ix2, iy2 = np.floor(ix), np.floor(iy)
    d1 = (ix - ix1) ** 2 + 3.0 * (iy - iy1) ** 2
    d2 = (ix - ix2 - 0.5) ** 2 + 3.0 * (iy - iy2 - 0.5) ** 2
    first = d1 < d2
    cx = np.where(first, ix1, ix2 + 0.5)
    cy = np.where(first, iy1, iy2 + 0.5)
    key = np.stack([cx, cy], axis=1)
    centres, cell = np.unique(key, axis=0, return_inverse=True)
    centres = np.column_stack([xmin + centres[:, 0] * sx, ymin + centres[:, 1] * sy])
    return cell.ravel(), centres


def cell_ks(cell: np.ndarray, p: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the number of values and D_KS of its PIT values against U(0, 1)."""
    counts = np.bincount(cell, minlength=n_cells)
    order = np.lexsort((p, cell))
    c, v = cell[order], p[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(v)) - starts[c]           # 0-based rank within the cell
    n = counts[c]
    distance = np.maximum((rank + 1) / n - v, v - rank / n)
    d = np.full(n_cells, np.nan)
    filled = counts > 0
    d[filled] = np.maximum.reduceat(distance, starts[filled]) if len(v) else np.nan
    return counts, d


def kiel_map(teff: np.ndarray, logg: np.ndarray, pits: dict[str, np.ndarray],
             gridsize: int = 18) -> dict:
    """D_KS of each label's PIT values in hexagonal (log10 Teff, log g) cells of at least
    `MIN_CELL` stars. ``pits``: label -> PIT per row (NaN where the label has none)."""
    good = np.isfinite(teff) & np.isfinite(logg) & (teff > 0)
    if good.sum() < MIN_CELL:
        return {"cells": [], "gridsize": gridsize, "extent": None}
    x, y = np.log10(teff[good]), logg[good]
    lo_x, hi_x = np.percentile(x, [0.5, 99.5])
    lo_y, hi_y = np.percentile(y, [0.5, 99.5])
    extent = (float(lo_x), float(hi_x) + 1e-9, float(lo_y), float(hi_y) + 1e-9)
    inside = (x >= extent[0]) & (x <= extent[1]) & (y >= extent[2]) & (y <= extent[3])
    cell, centres = hex_cells(x[inside], y[inside], gridsize, extent)
    out = {"gridsize": gridsize, "extent": list(extent), "log10_teff": True,
           "centres": centres.tolist(), "labels": {}}
    for label, p in pits.items():
        p = p[good][inside]
        known = np.isfinite(p)
        counts, d = cell_ks(cell[known], p[known], len(centres))
        d[counts < MIN_CELL] = np.nan
        out["labels"][label] = {"n": counts.tolist(),
                                "ks": [None if not np.isfinite(v) else float(v) for v in d]}
    return out
