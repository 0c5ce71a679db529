"""The figures of `xptools flag --plots DIR` (PNG), drawn from counts gathered chunk by chunk
(`Accumulator`), so that a table of any size costs no more memory than one chunk:

- flag_percentiles.png: per score, the histogram of the input's percentiles against the
  reference stars' (uniform by construction: each 2% bin holds 2% of them), the cut, and the
  fraction of the input beyond it against the nominal fraction;
- flag_kiel.png (when the input has infer's teff and logg): per detector, the mean of its
  "unusualness" (the percentile, or 100 minus it where a low one is unusual) in Teff-log g
  cells, and the fraction failing the basic cut (xp_flag >= 64).

matplotlib is imported here only, through `xptools.calibrate.plots` (object-oriented API, TeX
off, quantised PNGs).
"""

from __future__ import annotations

import numpy as np

from xptools.flag import LOW_IS_UNUSUAL as LOW
from xptools.flags import XP_BASIC_CUT

SCORES = {"mahalanobis_pct": "Mahalanobis", "iforest_pct": "Isolation Forest",
          "gmm_pct": "Gaussian mixture", "recon_pct": "svae reconstruction",
          "phot_pct": "XP vs BP/RP photometry"}
LOW_IS_UNUSUAL = tuple(name + "_pct" for name in LOW)
BINS = np.linspace(0.0, 100.0, 51)
LOG_TEFF = np.linspace(np.log10(3000.0), np.log10(20000.0), 61)
LOGG = np.linspace(-0.5, 5.5, 61)
MIN_CELL = 3   # stars a Kiel cell needs to be drawn
FILES = ("flag_percentiles.png", "flag_kiel.png")


class Accumulator:
    def __init__(self, kiel: bool, cuts: dict[str, float]):
        self.cuts = cuts
        self.histograms = {name: np.zeros(len(BINS) - 1) for name in SCORES}
        self.kiel = kiel
        shape = (len(LOG_TEFF) - 1, len(LOGG) - 1)
        self.count = np.zeros(shape)
        self.sums = {name: np.zeros(shape) for name in ("mahalanobis_pct", "iforest_pct",
                                                          "gmm_pct")}
        self.scored = {name: np.zeros(shape) for name in self.sums}   # finite values
        self.failed = np.zeros(shape)
        self.beyond = {name: 0 for name in SCORES}

    def merge(self, other: "Accumulator") -> None:
        """Add another table's counts (the partitions of a catalogue)."""
        for name in SCORES:
            self.histograms[name] += other.histograms[name]
            self.beyond[name] += other.beyond[name]
        self.count += other.count
        self.failed += other.failed
        for name in self.sums:
            self.sums[name] += other.sums[name]
            self.scored[name] += other.scored[name]

    def add(self, scores: dict[str, np.ndarray], flag: np.ndarray, teff=None, logg=None):
        for name in SCORES:
            pct = scores[name]
            ok = np.isfinite(pct)
            self.histograms[name] += np.histogram(pct[ok], BINS)[0]   # 0..100: every one
            cut = self.cuts[name[:-len("_pct")]]
            self.beyond[name] += int(np.count_nonzero(pct[ok] < cut if name in LOW_IS_UNUSUAL
                                                      else pct[ok] > cut))
        if not self.kiel or teff is None:
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log10(teff)
        ok = np.isfinite(x) & np.isfinite(logg)
        i = np.digitize(x[ok], LOG_TEFF) - 1
        j = np.digitize(logg[ok], LOGG) - 1
        inside = (i >= 0) & (i < len(LOG_TEFF) - 1) & (j >= 0) & (j < len(LOGG) - 1)
        i, j = i[inside], j[inside]
        rows = np.flatnonzero(ok)[inside]
        np.add.at(self.count, (i, j), 1)
        np.add.at(self.failed, (i, j), flag[rows] >= XP_BASIC_CUT)
        for name, total in self.sums.items():
            pct = scores[name][rows]
            unusual = 100.0 - pct if name in LOW_IS_UNUSUAL else pct
            finite = np.isfinite(unusual)
            np.add.at(total, (i[finite], j[finite]), unusual[finite])
            np.add.at(self.scored[name], (i[finite], j[finite]), 1)


def figures(summary: Accumulator, title: str) -> dict[str, bytes]:
    import matplotlib

    from xptools.calibrate.plots import png

    out = {}
    with matplotlib.rc_context({"text.usetex": False, "svg.hashsalt": "xptools"}):
        out["flag_percentiles.png"] = png(percentile_figure(summary, title))
        if summary.kiel and summary.count.sum() > 0:
            out["flag_kiel.png"] = png(kiel_figure(summary, title))
    return out


def percentile_figure(summary: Accumulator, title: str):
    from xptools.calibrate.plots import style, titled_figure

    figure = titled_figure(13.0, 3.0, title)
    axes = figure.subplots(1, len(SCORES), sharey=True)
    centres = (BINS[:-1] + BINS[1:]) / 2
    width = np.diff(BINS)
    for ax, (name, what) in zip(axes, SCORES.items()):
        n = max(summary.histograms[name].sum(), 1)
        density = summary.histograms[name] / n / width * 100   # % of stars per 1% percentile
        ax.bar(centres, density, width=width, color="#3b6fb6", alpha=0.7, label="input")
        ax.axhline(1.0, color="k", lw=1, ls="--", label="reference")
        cut = summary.cuts[name[:-len("_pct")]]
        low = name in LOW_IS_UNUSUAL
        ax.axvline(cut, color="#d1495b", lw=1, label="cut")
        ax.set_title(f"{what}\n{100 * summary.beyond[name] / n:.2f}% beyond the cut "
                     f"(nominal {cut if low else 100 - cut:g}%)", fontsize=8)
        ax.set_xlabel("percentile, " + ("low" if low else "high") + " = unusual", fontsize=7)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, None)
        style(ax)
    axes[0].set_ylabel("% of stars per 1% of percentile", fontsize=7)
    axes[0].legend(fontsize=7, frameon=False, loc="lower center")
    return figure


def kiel_figure(summary: Accumulator, title: str):
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    from xptools.calibrate.plots import style, titled_figure

    panels = [(f"{SCORES[name]}: mean unusualness",
               np.where(summary.scored[name] > 0, total / np.maximum(summary.scored[name], 1),
                        np.nan), "viridis", (0, 100)) for name, total in summary.sums.items()]
    panels.append((f"fraction with xp_flag >= {XP_BASIC_CUT}",
                   summary.failed / np.maximum(summary.count, 1), "magma", (0, 1)))
    figure = titled_figure(12.0, 3.2, title)
    axes = figure.subplots(1, len(panels), sharex=True, sharey=True)
    few = summary.count < MIN_CELL
    for ax, (what, values, cmap, (vmin, vmax)) in zip(axes, panels):
        mesh = ax.pcolormesh(10 ** LOG_TEFF, LOGG,
                             np.ma.masked_where(few | ~np.isfinite(values), values).T,
                             cmap=cmap, vmin=vmin, vmax=vmax, shading="flat", rasterized=True)
        ax.set_xscale("log")
        ax.set_xlim(10 ** LOG_TEFF[-1], 10 ** LOG_TEFF[0])
        ax.set_ylim(LOGG[-1], LOGG[0])
        ax.set_title(what, fontsize=8)
        ax.set_xlabel("Teff (K), infer", fontsize=7)
        ax.xaxis.set_major_locator(FixedLocator([4000, 6000, 10000, 20000]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        style(ax)
        bar = figure.colorbar(mesh, ax=ax, shrink=0.85)
        bar.ax.tick_params(labelsize=6)
    axes[0].set_ylabel("log g, infer", fontsize=7)
    return figure
