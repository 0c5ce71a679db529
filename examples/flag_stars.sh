#!/usr/bin/env bash
# Flag every star of a table of XP coefficients: sample the spectra, label them with the
# shipped model, flag them (docs/flag.md), and keep the stars of basic reliability
# (xp_flag < 64). Writes flagged.fits, reliable.fits and the figures in flag_plots/ in the
# current folder; by default the 2,000 faint random DR3 sources of ../shared/data.
#
#     examples/flag_stars.sh [XP_COEFFICIENTS_FILE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
input="${1:-$here/../../shared/data/xp_continuous/xp_continuous_2000.fits}"
xptools sample "$input" --quiet | xptools infer - --quiet \
    | xptools flag - -o flagged.fits --plots flag_plots --overwrite
# the recommended cut, with astropy (STILTS: stilts tpipe in=flagged.fits
# cmd='select "xp_flag < 64"' out=reliable.fits)
python -c "
from astropy.table import Table
t = Table.read('flagged.fits')
t[t['xp_flag'] < 64].write('reliable.fits', overwrite=True)
print(f'{(t[\"xp_flag\"] < 64).sum()} of {len(t)} stars pass xp_flag < 64, '
      f'{(t[\"xp_flag\"] == 0).sum()} have xp_flag == 0')
"
# the APOGEE stars shipped with the examples have Gaia photometry: the photometric check too
xptools flag "$here/data/apogee_xp_200.fits" -o flagged_apogee.fits --overwrite
