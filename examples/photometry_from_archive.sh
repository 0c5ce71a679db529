#!/usr/bin/env bash
# Synthetic photometry of a list of Gaia DR3 stars, straight from the archive: their XP
# coefficients (DataLink XP_CONTINUOUS) piped into `xptools photometry`, which computes
# Johnson-Kron-Cousins and SDSS magnitudes (GaiaXPy's standardised systems) as GaiaXPy's
# generate does. Writes mags.fits and mags.csv in the current folder.
#
#     examples/photometry_from_archive.sh [IDS_FILE]
#
# IDS_FILE: source_ids, one per line (default: two stars). Offline, point fetch at the
# stand-in archive of tests/archive_server.py (docs/fetch.md).
set -euo pipefail
ids="${1:-}"
if [[ -z $ids ]]; then
    ids="$(mktemp)"
    trap 'rm -f "$ids"' EXIT
    printf '%s\n' 5853498713190525696 505171240162594560 > "$ids"
fi
xptools fetch --ids "$ids" --quiet | xptools photometry - --system JKC_Std,Sdss_Std -o mags.fits --overwrite
xptools info mags.fits | head -4
# with the Montegriffo et al. (2022) error correction, as a CSV of ids and photometry
xptools fetch --ids "$ids" --quiet \
    | xptools photometry - --system JKC_Std,Sdss_Std --error-correction --drop-coefficients --format csv > mags.csv
python - <<'PY'
from xptools.io import read_table
t = read_table("mags.csv")
for row in range(len(t)):
    mags = "  ".join(f"{c.split('_mag_')[1]}={t[c][row]:.3f}" for c in t.colnames if "Std_mag_" in c)
    print(t["source_id"][row], mags, "flag", t["photometry_flag"][row])
PY
