"""The corrections `xptools calibrate --fit` makes (ours, not the paper's), with bootstrap
errors.

scale: one factor s per label for the predicted errors, chosen by one of two targets (both
    exact, no iterations). Row i has |z_i| <= w, z_i = d_i / sqrt((s e_i)^2 + e_y,i^2), when
    s^2 >= t_i = (d_i^2 / w^2 - e_y,i^2) / e_i^2, so s^2 is a quantile q of t:
    - ``mad`` (the default): the z of the fitted stars have sigma_MAD 1,
      i.e. half of them within |z| <= 1 / 1.4826 (q = 0.5, w = 0.6745; sigma_MAD is taken about
      zero, not about the median z, so a bias widens the errors instead of hiding);
    - ``coverage``: +-1 sigma holds 68.27% of the differences, as a 1-sigma error should
      (q = 0.6827, w = 1). The two agree for Gaussian differences; on heavier-tailed ones (real
      labels) they differ, and benchmarks/bench_calibrate.py measures both on held-out stars.
    When the quantile is <= 0 the reference errors alone already hold that share of the
    differences (the label-only floor, `diagnostics.at_floor`): the errors cannot be made
    smaller against these labels, and s = 1 is kept, with a note.
linear: E[y | m] = a m + b, fitted by weighted least squares (weights 1 / (e^2 + e_y^2)) with
    outliers beyond 4 sigma_MAD of the weighted residuals left out, repeated until the set of
    kept rows settles. It is the mean reference label given the prediction (what a mapped
    prediction should be), not the inverse relation. s is then fitted on the mapped values.

Bootstrap: `BOOTSTRAP` resamplings of the rows (with replacement), fixed seed; the error is
their standard deviation. Above `BOOTSTRAP_ROWS` rows each resampling draws that many rows and
the spread is scaled by sqrt(BOOTSTRAP_ROWS / n) (the m-out-of-n bootstrap; the estimators'
errors fall as 1/sqrt(n)), so that the time stays bounded.
"""

from __future__ import annotations

import math

import numpy as np

from xptools.calibrate.diagnostics import NOMINAL_68
from xptools.metrics import sigma_mad

BOOTSTRAP = 200
BOOTSTRAP_ROWS = 20_000
CLIP = 4.0          # linear fit: outliers beyond this many sigma_MAD are left out


SCALE_TARGETS = {"mad": (0.5, 1 / 1.482602218505602),   # (quantile q, width w), above
                 "coverage": (NOMINAL_68, 1.0)}


def scale_terms(d: np.ndarray, error: np.ndarray, ref_error: np.ndarray,
                width: float = 1.0) -> np.ndarray:
    """t_i: row i is within |z| <= width when s^2 >= t_i."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ((d / width) ** 2 - ref_error ** 2) / error ** 2
    # a zero predicted error: inside for any s when the reference error covers d, else never
    inside = (d / width) ** 2 <= ref_error ** 2
    return np.where(error > 0, t, np.where(inside, -np.inf, np.inf))


def _scale_of(t: np.ndarray, q: float) -> float:
    value = float(np.quantile(t, q)) if len(t) else float("nan")
    return math.sqrt(value) if value > 0 else 0.0


def _resamples(n: int, rng: np.random.Generator, count: int):
    """(row indices, error factor) of each bootstrap resampling."""
    m = min(n, BOOTSTRAP_ROWS)
    factor = math.sqrt(m / n) if n else 1.0
    for _ in range(count):
        yield rng.integers(0, n, m), factor


def fit_scale(d, error, ref_error, rng: np.random.Generator, bootstrap: int = BOOTSTRAP,
              target: str = "mad") -> dict:
    """s and its bootstrap error for a target of SCALE_TARGETS; ``floor`` True when the
    reference errors alone meet the target (s = 1 kept)."""
    q, width = SCALE_TARGETS[target]
    t = scale_terms(d, error, ref_error, width)
    s = _scale_of(t, q)
    if s == 0.0:
        return {"s": 1.0, "s_error": 0.0, "floor": True}
    draws = [(_scale_of(t[idx], q), f) for idx, f in _resamples(len(t), rng, bootstrap)]
    values = np.array([v for v, _ in draws])
    error_s = float(np.std(values) * draws[0][1]) if len(draws) > 1 else float("nan")
    return {"s": s, "s_error": error_s, "floor": False}


def _wls(x, y, w):
    """Weighted least squares y = a x + b."""
    sw = w.sum()
    xm, ym = (w * x).sum() / sw, (w * y).sum() / sw
    sxx = (w * (x - xm) ** 2).sum()
    a = (w * (x - xm) * (y - ym)).sum() / sxx if sxx > 0 else float("nan")
    return a, ym - a * xm


def robust_line(x, y, w) -> tuple[float, float, np.ndarray]:
    """(a, b, rows kept) of the clipped weighted least-squares fit y = a x + b."""
    keep = np.ones(len(x), bool)
    a = b = float("nan")
    for _ in range(20):
        a, b = _wls(x[keep], y[keep], w[keep])
        r = (y - a * x - b) * np.sqrt(w)
        centre, width = np.median(r[keep]), sigma_mad(r[keep])
        new = np.abs(r - centre) <= CLIP * width if width > 0 else keep
        if np.array_equal(new, keep) or new.sum() < 3:
            break
        keep = new
    return float(a), float(b), keep


def fit_linear(pred, ref, error, ref_error, rng: np.random.Generator,
               bootstrap: int = BOOTSTRAP) -> dict:
    """a, b with bootstrap errors and their correlation (each resampling refits on the rows
    the full fit kept)."""
    w = 1.0 / (error ** 2 + ref_error ** 2)
    a, b, keep = robust_line(pred, ref, w)
    x, y, w = pred[keep], ref[keep], w[keep]
    draws = np.array([_wls(x[idx], y[idx], w[idx]) + (f,)
                      for idx, f in _resamples(len(x), rng, bootstrap)])
    if len(draws) > 1:
        factor = draws[0, 2]
        a_error, b_error = (float(np.std(draws[:, i]) * factor) for i in (0, 1))
        corr = float(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1])
    else:
        a_error = b_error = corr = float("nan")
    return {"a": a, "b": b, "a_error": a_error, "b_error": b_error, "ab_correlation": corr,
            "clipped": int((~keep).sum())}
