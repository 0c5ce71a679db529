#!/usr/bin/env bash
# Label a FITS table of XP spectra with the shipped model, then compare with APOGEE.
set -euo pipefail
cd "$(dirname "$0")"
xptools infer data/apogee_xp_200.fits -o labeled.fits --overwrite
xptools info labeled.fits | head -5
python - <<'PY'
import numpy as np
from xptools.io import read_table
from xptools.metrics import sigma_mad
t = read_table("labeled.fits")
for label in ("teff", "logg", "fe_h", "alpha_m"):
    d = t[label] - t["apogee_" + label]
    z = d / np.hypot(t[label + "_error"], t["apogee_" + label + "_err"])
    print(f"{label:8s} sigma_MAD vs APOGEE {sigma_mad(d):8.3f}   z-score sigma_MAD {sigma_mad(z):5.2f}")
PY
