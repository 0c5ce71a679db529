import os
import subprocess
import sys

import numpy as np
import pytest

from xptools.io import Table, write_table

SHARED = os.environ.get("XPTOOLS_SHARED_DATA",
                        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session", autouse=True)
def basis_cache(tmp_path_factory):
    """One design-matrix cache for the whole test session (GaiaXPy runs once per grid)."""
    path = str(tmp_path_factory.mktemp("xptools-cache"))
    os.environ["XPTOOLS_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def shared():
    """../shared/data, or skip the test when it is absent."""
    if not os.path.isdir(SHARED):
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def run(*args, stdin=None, cwd=None, env=None):
    """Run the xptools command in a subprocess; returns CompletedProcess with bytes output."""
    return subprocess.run([sys.executable, "-m", "xptools", *map(str, args)], input=stdin,
                          capture_output=True, cwd=cwd, env=env, timeout=300)


def synthetic_continuous(n=5, seed=0, correlations=True, missing_bp=(), missing_rp=()):
    """A small table in the archive's array layout with plausible random coefficients."""
    rng = np.random.default_rng(seed)
    t = Table()
    t.add_column("source_id", np.arange(n, dtype=np.int64) + 1000)
    t.add_column("ra", rng.uniform(0, 360, n), unit="deg")
    for band in ("bp", "rp"):
        scale = np.exp(-np.arange(55) / 8.0)
        coeffs = rng.normal(size=(n, 55)) * scale * 100 + np.r_[500.0, np.zeros(54)]
        errors = np.abs(rng.normal(size=(n, 55))) * 0.5 + 0.5
        t.add_column(f"{band}_standard_deviation", np.ones(n, np.float32) * 1.1)
        t.add_column(f"{band}_coefficients", coeffs)
        t.add_column(f"{band}_coefficient_errors", errors.astype(np.float32))
        if correlations:  # valid (positive definite) correlation matrices, packed
            a = rng.normal(size=(n, 55, 8)) * 0.4
            cov = a @ np.transpose(a, (0, 2, 1)) + np.eye(55)
            scale = 1 / np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
            corr = cov * scale[:, :, None] * scale[:, None, :]
            i, j = np.tril_indices(55, -1)
            t.add_column(f"{band}_coefficient_correlations", corr[:, i, j].astype(np.float32))
        t.add_column(f"{band}_n_relevant_bases", np.full(n, 40, np.int16))
        for i in (missing_bp if band == "bp" else missing_rp):
            t[f"{band}_coefficients"][i] = np.nan
            t[f"{band}_coefficient_errors"][i] = np.nan
            if correlations:
                t[f"{band}_coefficient_correlations"][i] = np.nan
            t[f"{band}_standard_deviation"][i] = np.nan
    return t


@pytest.fixture
def continuous_fits(tmp_path):
    path = tmp_path / "continuous.fits"
    write_table(synthetic_continuous(missing_bp=(2,)), str(path))
    return path


def synthetic_sampled(n=400, seed=0):
    """Sampled spectra on GaiaXPy's default grid whose shape depends on two labels, with Gaia
    and 2MASS photometry: enough structure for a tiny model to learn something."""
    rng = np.random.default_rng(seed)
    grid = np.arange(336.0, 1021.0, 2.0)
    teff = rng.uniform(3800, 6500, n)
    logg = rng.uniform(1.0, 4.8, n)
    g = rng.uniform(9, 15, n)
    peak = 2.9e6 / teff                                   # Wien, nm
    shape = np.exp(-0.5 * ((grid[None] - peak[:, None]) / 250.0) ** 2)
    shape *= 1 - 0.05 * (logg[:, None] - 3) * np.exp(-0.5 * ((grid - 390) / 15) ** 2)
    flux = shape * 1e-16 * 10 ** (-0.4 * (g[:, None] - 12))
    t = Table(meta={"WAVEMIN": 336.0, "WAVEMAX": 1020.0})
    t.add_column("source_id", rng.integers(1, 2**60, n, dtype=np.int64))
    t.add_column("flux", flux * (1 + 0.002 * rng.normal(size=flux.shape)))
    t.add_column("flux_error", 0.002 * flux)
    t.add_column("phot_g_mean_mag", g.astype(np.float32))
    bp, rp = gaia_bp_rp(g, 0.8 + 3000 / teff)          # no BP/RP flux excess
    t.add_column("phot_bp_mean_mag", bp.astype(np.float32))
    t.add_column("phot_rp_mean_mag", rp.astype(np.float32))
    for band, offset in (("j_m", 1.2), ("h_m", 1.6), ("ks_m", 1.7)):
        t.add_column(band, (g - offset - 3000 / teff).astype(np.float32))
    t.add_column("teff", teff.astype(np.float32))
    t.add_column("teff_err", np.full(n, 50.0, np.float32))
    t.add_column("logg", logg.astype(np.float32))
    t.add_column("logg_err", np.full(n, 0.05, np.float32))
    return t


def gaia_bp_rp(g, bp_rp, excess=1.0):
    """BP and RP magnitudes of colour ``bp_rp`` for G magnitudes ``g``, with ``excess`` times
    the BP + RP flux of a clean source (Riello et al. 2021): excess 1 gives C* = 0."""
    from xptools.photometry import ZERO_POINT, clean_excess_factor

    i_g = 10 ** (-0.4 * (np.asarray(g, float) - ZERO_POINT["g"]))
    bp_rp = np.asarray(bp_rp, float)
    rp_over_bp = 10 ** (-0.4 * (ZERO_POINT["bp"] - ZERO_POINT["rp"] - bp_rp))  # I_RP / I_BP
    i_bp = clean_excess_factor(bp_rp) * i_g * np.asarray(excess) / (1 + rp_over_bp)
    bp = -2.5 * np.log10(i_bp) + ZERO_POINT["bp"]
    return bp, bp - bp_rp
