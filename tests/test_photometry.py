"""The BP/RP flux excess C* of Riello et al. (2021)."""

import numpy as np
import pytest

from xptools.photometry import (ZERO_POINT, clean_excess_factor, flux_excess,
                                flux_excess_sigma, flux_excess_significance)


def magnitudes(i_g, i_bp, i_rp):
    return tuple(-2.5 * np.log10(i) + ZERO_POINT[b]
                 for i, b in ((i_g, "g"), (i_bp, "bp"), (i_rp, "rp")))


@pytest.mark.parametrize("bp_rp, clean", [(0.3, 1.154360 + 0.033772 * 0.3 + 0.032277 * 0.09),
                                          (1.2, 1.162004 + 0.011464 * 1.2 + 0.049255 * 1.44
                                           - 0.005879 * 1.728),
                                          (4.5, 1.057572 + 0.140537 * 4.5)])
def test_flux_excess_is_c_minus_its_colour_term(bp_rp, clean):
    assert clean_excess_factor(bp_rp) == pytest.approx(clean, rel=1e-12)
    i_bp = 1e5
    i_rp = i_bp * 10 ** (0.4 * (bp_rp - ZERO_POINT["bp"] + ZERO_POINT["rp"]))
    _, bp, rp = magnitudes(1.0, i_bp, i_rp)
    assert bp - rp == pytest.approx(bp_rp, abs=1e-9)
    i_g = (i_bp + i_rp) / clean                               # a clean source: C* = 0
    assert flux_excess(*magnitudes(i_g, i_bp, i_rp)) == pytest.approx(0.0, abs=1e-9)
    blended = flux_excess(*magnitudes(i_g / 1.1, i_bp, i_rp))  # G 10% fainter than BP + RP
    assert blended == pytest.approx(0.1 * clean, rel=1e-6)


def test_flux_excess_sigma_and_significance():
    assert flux_excess_sigma(15.0) == pytest.approx(0.0059898 + 8.817481e-12 * 15 ** 7.618399)
    assert flux_excess_sigma(10.0) < flux_excess_sigma(15.0) < flux_excess_sigma(20.0)
    g, bp, rp = magnitudes(np.array([1e5, 1e5 / 1.2]), np.array([6e4, 6e4]),
                           np.array([5e4, 5e4]))
    s = flux_excess_significance(g, bp, rp)
    assert s[1] > 3 + s[0]
    assert np.isnan(flux_excess_significance([12.0], [np.nan], [11.0])).all()
