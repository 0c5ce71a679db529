"""Learning curve of the label model: validation accuracy against the number of training stars.

    python recipes/prepare_apogee.py            # once: recipes/work/apogee_{train,valid}.fits
    python benchmarks/bench_learning_curve.py [--recipe recipes/default.json] [--members 1]
        [--fractions 0.125,0.25,0.5,1] [--threads N] [--data recipes/work]

Trains the recipe's model on nested random subsets of the training split (the same seed, so
each subset contains the smaller ones) and scores each on the whole validation split with the
cuts of bench_accuracy.py: sigma_MAD of prediction - APOGEE, Teff for Teff < 7000 K, the other
labels for all stars with the label. To save time every model has ``--members`` ensemble
members (the shipped model has 4, which lowers its sigma_MAD a little below the 1.0 row).

Last, a power law sigma_MAD = a N^-b fitted through the points, and the N at which it would
reach the targets of the train/infer issue: an extrapolation of a trend, not a measurement,
and only as good as the assumption that the trend goes on (a floor set by the labels' own
errors, for one, would stop it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

TARGETS = {"teff": 50.0, "logg": 0.10, "fe_h": 0.07, "alpha_m": 0.03}


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=os.path.join(here, "..", "recipes", "default.json"))
    parser.add_argument("--data", default=os.path.join(here, "..", "recipes", "work"))
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1")
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from xptools import models
    from xptools.io import read_table
    from xptools.metrics import sigma_mad
    from xptools.models.features import label_array
    from xptools.train import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.recipe) as f:
        recipe = json.load(f)
    recipe.setdefault("hyperparameters", {})["members"] = args.members
    train = read_table(os.path.join(args.data, "apogee_train.fits"))
    valid = read_table(os.path.join(args.data, "apogee_valid.fits"))
    labels = recipe["labels"]
    truth = label_array(valid, labels, "valid")
    cool = truth[:, labels.index("teff")] < 7000 if "teff" in labels else np.ones(len(valid), bool)
    order = np.random.default_rng(recipe.get("seed", 0)).permutation(len(train))

    print(f"recipe {os.path.basename(args.recipe)}, {args.members} member(s); validation: "
          f"{len(valid)} stars; sigma_MAD (Teff for Teff < 7000 K)")
    print(f"{'fraction':>9}{'stars':>8}{'seconds':>9}" + "".join(f"{l:>10}" for l in labels))
    sizes, results = [], []
    for fraction in (float(f) for f in args.fractions.split(",")):
        subset = train.rows(np.sort(order[:int(round(fraction * len(train)))]))
        model = models.model_class(recipe["model"]).create(labels, recipe)
        with tempfile.TemporaryDirectory() as workdir:
            trainer = Trainer(workdir, recipe.get("seed", 0), checkpoint_every=0, quiet=True)
            start = time.perf_counter()
            model.fit_table(subset, "train", trainer)
            seconds = time.perf_counter() - start
        x, observed, _ = model.inputs(valid, "valid")
        pred = model.predict(x, observed)
        cells = [sigma_mad((pred[l][0] - truth[:, j])[cool if l == "teff" else slice(None)])
                 for j, l in enumerate(labels)]
        sizes.append(len(subset))
        results.append(cells)
        print(f"{fraction:>9g}{len(subset):>8}{seconds:>9.0f}"
              + "".join(f"{c:>10.4g}" for c in cells), flush=True)

    if len(sizes) < 2:
        return
    print("\npower law sigma_MAD = a N^-b through these points (an extrapolation):")
    print(f"{'label':>9}{'b':>8}{'target':>9}{'N at target':>14}")
    logn = np.log(sizes)
    for j, label in enumerate(labels):
        slope, intercept = np.polyfit(logn, np.log([r[j] for r in results]), 1)
        target = TARGETS.get(label)
        need = (np.exp((np.log(target) - intercept) / slope)
                if target is not None and slope < 0 else float("nan"))
        print(f"{label:>9}{-slope:>8.3f}{target if target else float('nan'):>9g}"
              f"{need:>14.3g}")


if __name__ == "__main__":
    main()
