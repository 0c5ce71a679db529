#!/usr/bin/env bash
# Reproduces the shipped `xptools embed` / `xptools generate` model, xptools/data/svae-apogee,
# from ../shared/data (the same training/validation split as the shipped infer model):
#
#     bash recipes/train_svae.sh [SHARED_DATA_DIR]
#
# The sVAE learns from the spectra alone; the APOGEE labels of the validation split only feed
# the k-NN lines of the validation report. After an interruption, run it again with RESUME=1
# to continue from the checkpoints. The shipped model's 8000 epochs took 10,083 s on one CPU
# thread (its card).
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${1:-../shared/data}"
python recipes/prepare_apogee.py --shared "$shared" --out recipes/work
xptools train recipes/work/apogee_train.fits --valid recipes/work/apogee_valid.fits \
    --recipe recipes/svae.json -o xptools/data/svae-apogee --overwrite ${RESUME:+--resume}
