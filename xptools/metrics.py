"""Accuracy and calibration of predicted labels against reference labels.

- sigma_MAD = 1.4826 x median |d - median(d)| of the differences d = prediction - reference;
- bias = median(d);
- z = d / sqrt(sigma_pred^2 + sigma_ref^2): for honest uncertainties its sigma_MAD is near 1;
- coverage = fraction of references inside [q16, q84] (0.68 for calibrated quantiles).
"""

from __future__ import annotations

import numpy as np


def sigma_mad(d: np.ndarray) -> float:
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    return float(1.4826 * np.median(np.abs(d - np.median(d)))) if len(d) else float("nan")


def label_metrics(pred: np.ndarray, error: np.ndarray, q16: np.ndarray, q84: np.ndarray,
                  ref: np.ndarray, ref_error: np.ndarray | None = None) -> dict:
    ok = np.isfinite(pred) & np.isfinite(ref)
    d = pred[ok] - ref[ok]
    out = {"n": int(ok.sum()), "sigma_mad": sigma_mad(d),
           "bias": float(np.median(d)) if len(d) else float("nan"),
           "mae": float(np.mean(np.abs(d))) if len(d) else float("nan"),
           "coverage_68": float(np.mean((ref[ok] >= q16[ok]) & (ref[ok] <= q84[ok])))
           if len(d) else float("nan")}
    sigma = error[ok] ** 2 + (ref_error[ok] ** 2 if ref_error is not None else 0.0)
    z = d / np.sqrt(sigma)
    out["z_sigma_mad"] = sigma_mad(z)
    return out


def report_table(report: dict, subsets: list[str] | None = None) -> str:
    """A validation report (subset -> label -> metrics) as a Markdown table."""
    lines = ["| subset | label | N | sigma_MAD | bias | MAE | z sigma_MAD | 68% coverage |",
             "|---|---|---|---|---|---|---|---|"]
    for subset in subsets or [k for k, v in report.items() if isinstance(v, dict)]:
        for label, m in report.get(subset, {}).items():
            if not m["n"]:
                continue
            lines.append(f"| {subset} | {label} | {m['n']} | {m['sigma_mad']:.4g} | "
                         f"{m['bias']:.3g} | {m['mae']:.4g} | {m['z_sigma_mad']:.3f} | "
                         f"{m['coverage_68']:.3f} |")
    return "\n".join(lines)
