#!/usr/bin/env bash
# Label Gaia DR3 XP spectra with APOGEE DR17 stellar parameters.
#
#     examples/label_with_apogee.sh [APOGEE_XP_FOLDER] [OUTPUT]
#
# The APOGEE table carries the Gaia DR3 source_id of each star, so this is an id join. Some
# stars were observed by APOGEE more than once (280 of them in this table): --best snr keeps the
# entry with the highest signal-to-noise, and match_count says how many there were. Stars
# without APOGEE labels stay in the output with --how left (NaN labels, match_count 0).
set -euo pipefail
data=${1:-"$(dirname "$0")/../../shared/data/apogee_xp"}
out=${2:-labeled.fits}

xptools crossmatch "$data/xp_sampled.fits" "$data/apogee_labels.fits" \
    --on source_id --best snr --how left \
    --columns apogee_id,teff,teff_err,logg,logg_err,fe_h,fe_h_err,alpha_m,alpha_m_err,snr \
    -o "$out" --overwrite
xptools info "$out"

# The same join, every APOGEE entry kept (a star observed twice appears twice; the spectra pass
# through as always):
#     xptools crossmatch xp_sampled.fits apogee_labels.fits --on source_id --all -o pairs.fits
