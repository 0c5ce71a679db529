"""Fits the out-of-distribution detectors of `xptools flag` (xptools.ood) for models that were
trained without them (the shipped msa-apogee and svae-apogee predate them; `xptools train`
fits them for new models), in place: the same weights (checked by checksum), config.json
gains the ``detectors`` section, the directory detectors.safetensors, the card a section.

    python recipes/fit_detectors.py [--model DIR ...] [--embedding NAME]
                                    [--train recipes/work/apogee_train.fits]
                                    [--valid recipes/work/apogee_valid.fits] [--out DIR]

Without --model: both shipped models (msa-apogee on its head, svae-apogee on z). Run after
`python recipes/prepare_apogee.py` (which writes recipes/work/).

The detectors are fitted on the training table's rows that trained the model and referenced
on the rows its early stopping held out (the model's monitor split: the same hash of
source_id and seed as in training). Which embedding, and why: docs/flag.md and
`python benchmarks/bench_flag.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import numpy as np

from xptools import models
from xptools.calibrate import replace_section
from xptools.io import read_table
from xptools.ood import FILE, fit_detectors

HEADING = "## Out-of-distribution detectors"


def validation_rates(model, valid) -> str:
    """The detectors' flag rates at the default cuts on the validation table's stars."""
    from xptools.flag import DEFAULT_CUTS, LOW_IS_UNUSUAL
    from xptools.models.features import XPSource

    xp, _ = XPSource(valid, "valid", model.features)(valid)
    e, _ = model.embedding(valid, xp, model.detectors.embedding)
    scores = model.detectors.scores(e)
    parts = []
    for name in ("mahalanobis", "iforest", "gmm"):
        pct, cut = scores[name + "_pct"], DEFAULT_CUTS[name]
        ok = np.isfinite(pct)
        low = name in LOW_IS_UNUSUAL
        rate = np.mean(pct[ok] < cut) if low else np.mean(pct[ok] > cut)
        parts.append(f"{name} {'<' if low else '>'} {cut:g}: {100 * rate:.2f}% (nominal "
                     f"{cut if low else 100 - cut:g}%)")
    return f"On the {len(valid)} validation stars: " + "; ".join(parts) + "."


def card_section(model, train: str, rates: str) -> str:
    detectors = model.detectors
    info = detectors.info
    ranges = ", ".join(f"{label} {lo:.4g}..{hi:.4g}"
                       for label, (lo, hi) in detectors.label_range.items())
    return "\n".join([
        HEADING, "",
        f"`xptools flag` reads this model's `{detectors.embedding}` embedding"
        + (" (the first ensemble member's)" if model.kind == "msa" else "")
        + f" with three detectors (Shen, Speagle & Ho 2026): a Mahalanobis "
        f"distance, an Isolation Forest of {info['forest_trees']} trees and a Gaussian mixture "
        f"of {info['gmm_components']} components, fitted on the embeddings of "
        f"{info['fitted_rows']} training stars of {train} and referenced on the "
        f"{info['reference_rows']} stars held out for early stopping (percentiles of the "
        f"fitted points are biased). Arrays in {FILE}, no pickles."
        + (" With them, the consistency of the XP flux with the BP and RP magnitudes (an "
           "effective passband per band, fitted on the same stars)."
           if detectors.photometry is not None else ""), "",
        f"Training labels' 1st..99th percentiles (the label-side flag): {ranges or 'none'}.", "",
        rates + " What the flags catch (defects, badly labelled stars, faint stars): "
        "`python benchmarks/bench_flag.py`, docs/flag.md.", ""])


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model directory (repeatable; "
                        "default: the shipped msa-apogee and svae-apogee)")
    parser.add_argument("--embedding", default=None, help="one of the model's EMBEDDINGS "
                        "(default: its first)")
    parser.add_argument("--train", default=os.path.join(here, "work", "apogee_train.fits"))
    parser.add_argument("--valid", default=os.path.join(here, "work", "apogee_valid.fits"),
                        help="validation table: the card's flag rates")
    parser.add_argument("--out", default=None, help="model directory to write (default: "
                        "--model, in place)")
    args = parser.parse_args()
    paths = args.model or [models.default_path("flag"), models.default_path("embed")]
    if args.out and len(paths) > 1:
        parser.error("--out needs a single --model")
    table = read_table(args.train)
    valid = read_table(args.valid)
    with open(args.train, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    for path in paths:
        model = models.load(path)
        if model.provenance.get("train_sha256") not in (None, digest):
            parser.error(f"{args.train} is not the table {path} was trained on (its SHA-256 "
                         f"differs from the model's provenance): the held-out rows would be "
                         f"wrong")
        seed = int(model.provenance.get("seed", 0))
        model.detectors = fit_detectors(model, table, os.path.basename(args.train), seed,
                                        args.embedding)
        with open(os.path.join(path, models.CARD)) as f:
            card = replace_section(f.read(), card_section(
                model, os.path.basename(args.train), validation_rates(model, valid)), HEADING)
        out = args.out or path
        models.save(model, out, card, overwrite=True,
                    extra_files=models.other_files(path), checksum=model.checksum)
        print(f"{model.kind} detectors ({model.detectors.embedding}) written to {out}")


if __name__ == "__main__":
    main()
