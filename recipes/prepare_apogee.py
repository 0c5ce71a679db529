"""Training and validation tables for the default models, from ../shared/data/apogee_xp.

    python recipes/prepare_apogee.py [--shared ../shared/data] [--out recipes/work]

Joins the XP sampled spectra (xp_sampled.fits) with the APOGEE DR17 labels
(apogee_labels.fits) on source_id, keeping for each star the APOGEE entry with the highest
snr, and splits the stars by a hash of source_id: 10% validation (apogee_valid.fits), the rest
training (apogee_train.fits). The split does not depend on file order, so it is the same on
every machine.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from xptools.io import read_table, write_table

LABEL_COLUMNS = ["apogee_id", "teff", "teff_err", "logg", "logg_err", "fe_h", "fe_h_err",
                 "alpha_m", "alpha_m_err", "snr", "ak_targ", "j_m", "h_m", "ks_m"]
VALID_FRACTION = 0.10


def validation_rows(source_id: np.ndarray) -> np.ndarray:
    """About 10% of stars, chosen by a multiplicative hash of source_id."""
    ids = np.asarray(source_id, dtype=np.uint64)
    mixed = (ids * np.uint64(0xD1B54A32D192ED03)) >> np.uint64(40)
    return (mixed.astype(np.float64) / float(1 << 24)) < VALID_FRACTION


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.path.join(here, "..", "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(here, "work"))
    args = parser.parse_args()
    spectra = read_table(os.path.join(args.shared, "apogee_xp", "xp_sampled.fits"))
    labels = read_table(os.path.join(args.shared, "apogee_xp", "apogee_labels.fits"))
    # one APOGEE entry per star: the highest snr
    order = np.lexsort((-labels["snr"], labels["source_id"]))
    labels = labels.rows(order)
    first = np.r_[True, labels["source_id"][1:] != labels["source_id"][:-1]]
    labels = labels.rows(first)
    index = np.searchsorted(labels["source_id"], spectra["source_id"])
    index = np.minimum(index, len(labels) - 1)
    matched = labels["source_id"][index] == spectra["source_id"]
    table = spectra.rows(matched)
    for name in LABEL_COLUMNS:
        table.add_column(name, labels[name][index[matched]], unit=labels.info[name].unit)
    valid = validation_rows(table["source_id"])
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("apogee_train.fits", ~valid), ("apogee_valid.fits", valid)):
        write_table(table.rows(rows), os.path.join(args.out, name), overwrite=True)
        print(f"{name}: {int(rows.sum())} stars")


if __name__ == "__main__":
    main()
