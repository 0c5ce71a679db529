"""Can XP coefficients be recovered from sampled spectra? (Why the sVAE reads sampled flux.)

    python benchmarks/bench_coefficient_recovery.py

Laroche & Speagle feed their VAE the 110 BP/RP coefficients divided by the G flux. The APOGEE
library in ../shared/data/apogee_xp holds sampled spectra only (343 samples), so that input
would have to be fitted back from the samples: flux = c @ M with M the (110, 343) merged
design matrix of GaiaXPy's default grid, solved by least squares. This prints the condition
number of M and, for the two stars whose true coefficients are known
(xp_continuous/overlap_with_apogee_xp.npz), how far the fitted coefficients are from the true
ones in units of their archive errors, and how well both reproduce the sampled flux.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from inputs import SHARED  # noqa: E402

from xptools.basis import load_basis  # noqa: E402


def main() -> None:
    basis = load_basis()
    design = np.concatenate([basis.merged["bp"], basis.merged["rp"]])   # (110, 343)
    print(f"merged design matrix {design.shape}: rank {np.linalg.matrix_rank(design)}, "
          f"condition number {np.linalg.cond(design):.3g}")
    overlap = np.load(os.path.join(SHARED, "xp_continuous", "overlap_with_apogee_xp.npz"))
    flux = overlap["sampled_flux_Wm2nm"].astype(np.float64)
    true = overlap["coeffs"].astype(np.float64)
    fitted = np.linalg.lstsq(design.T, flux.T, rcond=None)[0].T
    pull = np.abs(fitted - true) / overlap["coeff_errors"]
    for i, source in enumerate(overlap["source_id"]):
        def misfit(c):
            return np.max(np.abs(c @ design - flux[i]) / np.abs(flux[i]))

        print(f"source {source}: fitted - true coefficients, max {pull[i].max():.3g} errors "
              f"(median {np.median(pull[i]):.3g}); max relative flux misfit: true "
              f"{misfit(true[i]):.2g}, fitted {misfit(fitted[i]):.2g}")


if __name__ == "__main__":
    main()
