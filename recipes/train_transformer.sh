#!/usr/bin/env bash
# Reproduces the shipped Transformer model, xptools/data/transformer-apogee, from
# ../shared/data, on the same train/validation split as msa-apogee:
#
#     bash recipes/train_transformer.sh [SHARED_DATA_DIR]
#
# After an interruption, run it again with RESUME=1 to continue from the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/data}"
python recipes/prepare_apogee.py --shared "$shared" --out recipes/work
xptools train recipes/work/apogee_train.fits --valid recipes/work/apogee_valid.fits \
    --recipe recipes/transformer.json -o xptools/data/transformer-apogee --overwrite \
    ${RESUME:+--resume}
