"""Makes docs/latent_space.png: the shipped scatter VAE's latent space for the APOGEE validation
stars, coloured by APOGEE Teff and [Fe/H] (labels the model never saw).

    python recipes/prepare_apogee.py      # once: recipes/work/apogee_valid.fits
    python docs/latent_space.py [--model DIR] [--data recipes/work] [-o docs/latent_space.png]

Each column is one pair of latent dimensions (z0-z1, z2-z3, z4-z5); the top row is coloured
by Teff, the bottom row by [Fe/H] (giants and dwarfs alike).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from xptools import models
from xptools.io import read_table
from xptools.models.features import FLAG_UNUSABLE, label_array


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=os.path.join(here, "..", "recipes", "work"))
    parser.add_argument("-o", "--output", default=os.path.join(here, "latent_space.png"))
    args = parser.parse_args()
    model = models.load(args.model or models.default_path("embed"))
    valid = read_table(os.path.join(args.data, "apogee_valid.fits"))
    x, _, _, flags = model.inputs(valid, "valid", errors=False)
    rows = flags & FLAG_UNUSABLE == 0
    z, _ = model.embed(x[rows])
    teff, fe_h = label_array(valid, ["teff", "fe_h"], "valid")[rows].T
    pairs = [(2 * i, 2 * i + 1) for i in range(model.latent // 2)]
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 7.6),
                             constrained_layout=True)
    for row, (values, name, cmap, limits) in enumerate(
            [(teff, "APOGEE Teff (K)", "plasma", (3500, 6500)),
             (fe_h, "APOGEE [Fe/H]", "viridis", (-1.5, 0.4))]):
        order = np.argsort(np.nan_to_num(values, nan=-np.inf))  # NaN labels drawn first, grey
        for col, (a, b) in enumerate(pairs):
            ax = axes[row, col]
            known = np.isfinite(values[order])
            ax.scatter(z[order][~known, a], z[order][~known, b], s=2, c="0.8", lw=0)
            image = ax.scatter(z[order][known, a], z[order][known, b], s=2, lw=0,
                               c=values[order][known], cmap=cmap, vmin=limits[0],
                               vmax=limits[1])
            ax.set_xlabel(f"z{a}")
            ax.set_ylabel(f"z{b}")
        fig.colorbar(image, ax=axes[row], label=name, shrink=0.9)
    fig.suptitle(f"{os.path.basename(os.path.normpath(model.path))}: latent means of "
                 f"{rows.sum()} APOGEE validation stars (grey: no label)")
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
