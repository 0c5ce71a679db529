#!/usr/bin/env bash
# Reproduces the shipped `xptools infer` model, xptools/data/msa-apogee, from ../shared/data:
#
#     bash recipes/train_default.sh [SHARED_DATA_DIR]
#
# After an interruption, run it again with RESUME=1 to continue from the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/data}"
python recipes/prepare_apogee.py --shared "$shared" --out recipes/work
xptools train recipes/work/apogee_train.fits --valid recipes/work/apogee_valid.fits \
    --recipe recipes/default.json -o xptools/data/msa-apogee --overwrite ${RESUME:+--resume}
