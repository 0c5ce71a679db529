#!/usr/bin/env bash
# Calibrates the shipped `xptools infer` model, xptools/data/msa-apogee, on the validation
# split (the stars its training never saw), in place: the same weights, config.json gains the
# calibration (one error scale per label, `--fit scale`), the card a calibration section with
# the diagnostics, the directory calibration.json and the figures; docs/ gets the figures of
# docs/calibrate.md. Run after recipes/train_default.sh:
#
#     bash recipes/calibrate_default.sh [SHARED_DATA_DIR]
#
# Rerunning it gives the same calibration: calibrate undoes the shipped calibration of the
# labels before fitting (the labeled table's header says which, XPTCALIB). Why the shipped
# model is calibrated: `python benchmarks/bench_calibrate.py` (a fit on one half of the
# split, measured on the other), docs/calibrate.md.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/data}"
[ -f recipes/work/apogee_valid.fits ] || \
    python recipes/prepare_apogee.py --shared "$shared" --out recipes/work
xptools infer recipes/work/apogee_valid.fits --prefix msa \
    -o recipes/work/apogee_valid_labeled.fits --overwrite
xptools calibrate recipes/work/apogee_valid_labeled.fits --prefix msa \
    --reference recipes/work/apogee_valid.fits --on source_id --where "teff_ref < 7000" \
    --fit scale --scale-target coverage --plots docs -o xptools/data/msa-apogee --overwrite
