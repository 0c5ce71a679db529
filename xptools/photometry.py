"""Gaia DR3 photometric consistency: the corrected BP/RP flux excess C* of Riello et al. (2021,
A&A 649, A3, Sect. 6).

BP and RP collect light in a 3.5 x 2.1 arcsec window while G is fitted with a point-spread
function, so a neighbour, a galaxy or a bad background puts more light into BP + RP (and into
the XP spectrum) than G says. C = (I_BP + I_RP) / I_G measures that, C* removes its colour term
and is about zero for a clean point source; sigma_C*(G) is its 1-sigma spread for such sources.
Computed here from the three magnitudes (their fluxes by the DR3 Vega zero points), so only the
columns every XP table carries are needed.
"""

from __future__ import annotations

import numpy as np

# Gaia (E)DR3 Vega zero points (Riello et al. 2021), mag: I = 10^(-0.4 (m - ZP)) in e-/s
ZERO_POINT = {"g": 25.6873668671, "bp": 25.3385422158, "rp": 24.7478955012}


def clean_excess_factor(bp_rp) -> np.ndarray:
    """C = (I_BP + I_RP) / I_G of a clean source of colour BP - RP (Riello et al. 2021, Eq. 6
    with the coefficients of Table 2)."""
    x = np.asarray(bp_rp, np.float64)
    return np.where(x < 0.5, 1.154360 + 0.033772 * x + 0.032277 * x ** 2,
                    np.where(x < 4.0,
                             1.162004 + 0.011464 * x + 0.049255 * x ** 2 - 0.005879 * x ** 3,
                             1.057572 + 0.140537 * x))


def flux_excess(g, bp, rp) -> np.ndarray:
    """C* = C - C(clean source of the same colour), with C = (I_BP + I_RP) / I_G from the
    three magnitudes; NaN where a magnitude is missing."""
    g, bp, rp = (np.asarray(m, np.float64) for m in (g, bp, rp))
    with np.errstate(invalid="ignore", over="ignore"):
        flux = {band: 10.0 ** (-0.4 * (m - ZERO_POINT[band]))
                for band, m in (("g", g), ("bp", bp), ("rp", rp))}
        return (flux["bp"] + flux["rp"]) / flux["g"] - clean_excess_factor(bp - rp)


def flux_excess_sigma(g) -> np.ndarray:
    """sigma_C*(G), the 1-sigma spread of C* for clean sources (Riello et al. 2021, Eq. 18)."""
    return 0.0059898 + 8.817481e-12 * np.asarray(g, np.float64) ** 7.618399


def flux_excess_significance(g, bp, rp) -> np.ndarray:
    """C* / sigma_C*(G): beyond +-3 a source's XP flux and its G disagree (NaN when unknown)."""
    return flux_excess(g, bp, rp) / flux_excess_sigma(g)
