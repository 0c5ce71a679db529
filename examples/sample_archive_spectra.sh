#!/usr/bin/env bash
# XP coefficients as downloaded from the Gaia archive (DataLink XP_CONTINUOUS, any format)
# -> sampled spectra with errors, then a quick look. Give the file as the first argument;
# by default the real DR3 spectra in ../shared/data are used.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
input="${1:-$here/../../shared/data/gaiaxpy_reference/xp_continuous/XP_CONTINUOUS_RAW_with_missing_BP.csv}"
xptools sample "$input" -o "$here/spectra.fits" --overwrite   # GaiaXPy calibrate's numbers
xptools info "$here/spectra.fits"
# the same, in float32, on a coarser grid, as HDF5, through a pipe
xptools sample "$input" --grid 400:1000:10 --dtype float32 --format hdf5 > "$here/spectra_10nm.h5"
# internally calibrated BP and RP (GaiaXPy convert), piped into info
xptools sample "$input" --internal | xptools info -
