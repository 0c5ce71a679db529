"""The alpha experiment of Laroche & Speagle (2024, their Table 1) with a scatter VAE: can random
forests tell the high-alpha from the low-alpha sequence of cool giants from the latents z, from
the labels (Teff, logg, [Fe/H]), and from both?

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_alpha.py [--model DIR] [--data recipes/work]

Sample: giants (logg < 3.5) with Teff < 5000 K and -1 < [Fe/H] < 0.5 (below -1 there is one
sequence only) with APOGEE [Fe/H] and [alpha/M]. The line between the sequences is
[alpha/M] = ALPHA_LINE: the density of these giants of the *training* split in the
([Fe/H], [alpha/M]) plane has its valley between the two sequences at [alpha/M] = 0.16 to 0.20
for every 0.1 dex bin of -0.9 < [Fe/H] < -0.1 (and no high-alpha stars above [Fe/H] = 0.1).

The forests (scikit-learn, 500 trees, class weights balanced) are trained on the training
split's giants and scored on the validation split's giants. Printed: the accuracy, and the
balanced accuracy (the mean of the two classes' recalls: the accuracy on a sample with as many
high- as low-alpha stars), since about one star in five is high-alpha.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from xptools import models
from xptools.io import read_table
from xptools.flags import FLAG_UNUSABLE
from xptools.models.features import label_array

ALPHA_LINE = 0.18      # dex: [alpha/M] above it is the high-alpha sequence
TEFF_MAX = 5000.0      # K
LOGG_MAX = 3.5
FE_H_RANGE = (-1.0, 0.5)


def giants(model, table, name):
    """z, labels (Teff, logg, [Fe/H]) and high-alpha (bool) of the sample's stars."""
    y = label_array(table, ["teff", "logg", "fe_h", "alpha_m"], name)
    x, _, _, flags = model.inputs(table, name, errors=False)
    with np.errstate(invalid="ignore"):
        keep = ((y[:, 0] < TEFF_MAX) & (y[:, 1] < LOGG_MAX) & (y[:, 2] > FE_H_RANGE[0])
                & (y[:, 2] < FE_H_RANGE[1]) & np.isfinite(y[:, 3])
                & (flags & FLAG_UNUSABLE == 0))
    z, _ = model.embed(x[keep])
    return z, y[keep, :3], y[keep, 3] > ALPHA_LINE


def main() -> None:
    from sklearn.ensemble import RandomForestClassifier

    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=os.path.join(here, "..", "recipes", "work"))
    args = parser.parse_args()
    model = models.load(args.model or models.default_path("embed"))
    z_train, labels_train, high_train = giants(
        model, read_table(os.path.join(args.data, "apogee_train.fits")), "train")
    z_valid, labels_valid, high_valid = giants(
        model, read_table(os.path.join(args.data, "apogee_valid.fits")), "valid")
    print(f"giants, Teff < {TEFF_MAX:g} K, {FE_H_RANGE[0]} < [Fe/H] < {FE_H_RANGE[1]}, high-alpha "
          f"where [alpha/M] > {ALPHA_LINE}: {len(z_train)} training stars "
          f"({high_train.mean():.0%} high-alpha), {len(z_valid)} validation stars "
          f"({high_valid.mean():.0%})")
    inputs = {"z (latents)": (z_train, z_valid),
              "Teff, logg, [Fe/H] (labels)": (labels_train, labels_valid),
              "z + labels": (np.hstack([z_train, labels_train]),
                             np.hstack([z_valid, labels_valid]))}
    print(f"{'random forest from':<30}{'accuracy':>10}{'balanced':>10}")
    for name, (a, b) in inputs.items():
        forest = RandomForestClassifier(n_estimators=500, min_samples_leaf=2,
                                        class_weight="balanced", random_state=0,
                                        n_jobs=os.cpu_count())
        predicted = forest.fit(a, high_train).predict(b)
        accuracy = np.mean(predicted == high_valid)
        balanced = 0.5 * (np.mean(predicted[high_valid]) + np.mean(~predicted[~high_valid]))
        print(f"{name:<30}{accuracy:>10.3f}{balanced:>10.3f}")
    print("(paper, Table 1: 0.84 from the latents, 0.70 from the labels; targets: z >= 0.84, "
          "z + labels above labels alone)")


if __name__ == "__main__":
    main()
