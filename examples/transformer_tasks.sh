#!/usr/bin/env bash
# The shipped Transformer model (Leung & Bovy 2024) on 200 APOGEE stars, one model for every
# task: labels from XP + colours, log g from Teff and [Fe/H] alone, spectra from labels, and
# the BP half of each spectrum filled from its RP half.
set -euo pipefail
cd "$(dirname "$0")"
# 1. labels from spectra (the table's APOGEE labels are named apogee_*, so they are not given)
xptools infer data/apogee_xp_200.fits --model transformer-apogee -o labelled.fits --overwrite
# 2. label -> label: log g from Teff and [Fe/H] alone (a table without spectra will do)
printf 'teff,fe_h\n4800,-0.2\n5800,0.0\n' > two_stars.csv
xptools infer two_stars.csv --model transformer-apogee --request logg --given teff,fe_h \
    -o logg.csv --overwrite
# 3. spectra from labels: a Teff sequence of dwarfs
xptools generate --model transformer-apogee -o sequence.fits --overwrite \
    --grid 'teff=4000:7000:500,logg=4.5,fe_h=0,alpha_m=0'
# 4. inpainting: BP from RP
xptools generate --model transformer-apogee --inpaint data/apogee_xp_200.fits \
    --given rp --request bp -o inpainted.fits --overwrite
python - <<'PY'
import numpy as np
from xptools.io import read_table
from xptools.metrics import sigma_mad

t = read_table("labelled.fits")
for label in ("teff", "logg", "fe_h", "alpha_m"):
    d = t[label] - t["apogee_" + label]
    ok = np.isfinite(d)
    print(f"{label}: sigma_MAD {sigma_mad(d[ok]):.3g} against APOGEE, median sigma "
          f"{np.median(t[label + '_error'][ok]):.3g}")
g = read_table("logg.csv")
for i in range(len(g)):
    print(f"Teff {g['teff'][i]:.0f} K, [Fe/H] {g['fe_h'][i]:+.1f}: log g {g['logg'][i]:.2f} "
          f"+- {g['logg_error'][i]:.2f} (a giant or a dwarf: wide)")
s = read_table("sequence.fits")
print(f"{len(s)} spectra on {s.meta['WAVEMIN']:g}..{s.meta['WAVEMAX']:g} nm every "
      f"{s.meta['WAVESTEP']:g} nm (a star of G = 0)")
i = read_table("inpainted.fits")
bp = np.arange(336.0, 1021.0, 12.0) < 640
observed = read_table("data/apogee_xp_200.fits")["flux"][:, ::6]
r = np.abs(i["flux"][:, bp] / observed[:, bp] - 1)
print(f"BP from RP: median |relative residual| {np.nanmedian(r[:, 6:]):.3f} at 408..636 nm")
PY
