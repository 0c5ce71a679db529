#!/usr/bin/env bash
# Incremental, cron-friendly fetch: keep XP spectra for a growing list of Gaia DR3 stars.
#
#     examples/cron_fetch.sh IDS_FILE OUT_DIR
#
# IDS_FILE is a text file of source_ids (one per line) or a table with a source_id column;
# append new stars to it whenever you like. Each run writes
#
#     OUT_DIR/xp_continuous.fits   every star's XP coefficients, in the order of IDS_FILE
#     OUT_DIR/xp_sampled.fits      the same, sampled (xptools sample)
#     OUT_DIR/missing.csv          the stars the archive has no XP spectrum for
#
# and asks the archive only for stars that no earlier run asked for: finished requests stay in
# the cache (OUT_DIR/cache unless XPTOOLS_CACHE is set). A run that is killed or fails (network
# down) leaves the previous outputs in place; the next run continues where it stopped.
#
# crontab line, every night at 03:15 (only errors reach the cron mail):
#     15 3 * * *  /path/to/xptools/examples/cron_fetch.sh /data/targets.txt /data/xp
#
# To read the Gaia DR3 bulk files instead of DataLink (better for hundreds of thousands of
# stars), set XPTOOLS_FETCH_SOURCE to the bulk folder, e.g.
#     XPTOOLS_FETCH_SOURCE=https://cdn.gea.esac.esa.int/Gaia/gdr3/Spectroscopy/xp_continuous_mean_spectrum/
set -euo pipefail

ids=${1:?usage: cron_fetch.sh IDS_FILE OUT_DIR}
out=${2:?usage: cron_fetch.sh IDS_FILE OUT_DIR}
mkdir -p "$out"
export XPTOOLS_CACHE=${XPTOOLS_CACHE:-$out/cache}

# One run at a time: a run still busy from yesterday makes today's a no-op.
exec 9>"$out/.lock"
flock -n 9 || { echo "cron_fetch: a previous run is still busy" >&2; exit 0; }

source_args=()
if [[ -n ${XPTOOLS_FETCH_SOURCE:-} ]]; then
    source_args=(--bulk "$XPTOOLS_FETCH_SOURCE")
fi

xptools fetch --ids "$ids" ${source_args[@]+"${source_args[@]}"} --quiet --overwrite \
    -o "$out/xp_continuous.fits" --missing "$out/missing.csv"
xptools sample "$out/xp_continuous.fits" --quiet --overwrite -o "$out/xp_sampled.fits"
