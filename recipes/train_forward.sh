#!/usr/bin/env bash
# Reproduces the shipped forward model (ZGR23), xptools/data/forward-apogee, from
# ../shared/data (the same train/validation split as msa-apogee):
#
#     bash recipes/train_forward.sh [SHARED_DATA_DIR]
#
# After an interruption, run it again with RESUME=1 to continue from the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/data}"
python recipes/prepare_apogee.py --shared "$shared" --out recipes/work
xptools train recipes/work/apogee_train.fits --model forward --valid recipes/work/apogee_valid.fits \
    --recipe recipes/forward.json -o xptools/data/forward-apogee --overwrite ${RESUME:+--resume}
