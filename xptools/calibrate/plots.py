"""The figures of `xptools calibrate --plots DIR` (and of a calibrated model directory), as
PNG bytes. matplotlib is imported here only, its object-oriented API only (as in
`xptools.plot`), with TeX off (GaiaXPy may have turned it on) and a fixed SVG salt.

- calibrate_pit.png: per label, the PIT histogram (Eq. 3) against U(0, 1), before (and after
  --fit), and below it the label-only PIT (App. A).
- calibrate_reliability.png: observed against nominal coverage of the central PIT intervals.
- calibrate_kiel.png: ln D_KS of each label's PIT in hexagonal (Teff, log g) cells (Fig. 7).
- calibrate_residuals.png: prediction - reference against the combined sigma, with the +-1 and
  +-2 sigma lines and the 68% quantile of |difference| in bins of sigma.
"""

from __future__ import annotations

import io
import math

import numpy as np

from xptools.calibrate import baseline
from xptools.calibrate.diagnostics import LEVELS, PIT_BINS

DPI = 80
SCATTER_MAX = 5_000      # points drawn in the residual panels (the binned quantiles use all)
BEFORE, AFTER, LABEL_ONLY = "#3b6fb6", "#d1495b", "#6c757d"
NAMES = {"teff": "Teff", "logg": "log g", "fe_h": "[Fe/H]", "alpha_m": "[alpha/M]",
         "m_h": "[M/H]"}


def _name(label: str) -> str:
    return NAMES.get(label, label)


def style(ax) -> None:
    ax.tick_params(labelsize=7, direction="in", top=True, right=True)
    for side in ("top", "right"):
        ax.spines[side].set_alpha(0.5)


def png(figure) -> bytes:
    from xptools import __version__

    from PIL import Image, PngImagePlugin

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    # 256 colours are plenty for these figures and a third of the bytes (they ship in docs/
    # and in model directories)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(256)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"xptools {__version__}")
    out = io.BytesIO()
    image.save(out, format="png", optimize=True, pnginfo=info)
    return out.getvalue()


def figures(result, title: str) -> dict[str, bytes]:
    """file name -> PNG bytes of every figure the result can draw."""
    import matplotlib

    out = {}
    with matplotlib.rc_context({"text.usetex": False, "svg.hashsalt": "xptools"}):
        out["calibrate_pit.png"] = png(pit_figure(result, title))
        out["calibrate_reliability.png"] = png(reliability_figure(result, title))
        if result.report.get("kiel") and result.report["kiel"]["before"].get("extent"):
            out["calibrate_kiel.png"] = png(kiel_figure(result, title))
        out["calibrate_residuals.png"] = png(residual_figure(result, title))
    return out


def titled_figure(width: float, height: float, title: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    figure.suptitle(title, fontsize=9, x=0.01, ha="left", parse_math=False)
    return figure


def _step(ax, counts, colour, label, style="-"):
    counts = np.asarray(counts, float)
    n = counts.sum()
    if not n:
        return
    density = counts / n * PIT_BINS
    edges = np.linspace(0, 1, PIT_BINS + 1)
    ax.stairs(density, edges, color=colour, lw=1.3, ls=style, label=label)


def pit_figure(result, title: str):
    r = result.report
    labels = r["labels"]
    name, section = baseline(r)
    before, after = section["all"], (r["after"] or {}).get("all")
    figure = titled_figure(2.5 * len(labels) + 0.4, 4.6, title)
    axes = figure.subplots(2, len(labels), squeeze=False, sharex=True)
    for j, label in enumerate(labels):
        top, bottom = axes[0, j], axes[1, j]
        m = before[label]
        n = m["n"]
        for ax in (top, bottom):
            ax.axhline(1.0, color="k", lw=0.8)
            if n:  # +-2 sigma of a bin's density for uniform PIT values
                band = 2 * math.sqrt(PIT_BINS / n * (1 - 1 / PIT_BINS))
                ax.axhspan(1 - band, 1 + band, color="0.85", lw=0)
            style(ax)
        _step(top, m["pit_histogram"], BEFORE, f"{name}: D_KS {m['ks']:.3f}")
        if after is not None:
            a = after[label]
            _step(top, a["pit_histogram"], AFTER, f"after fit: D_KS {a['ks']:.3f}", "--")
        top.set_title(f"{_name(label)} (N = {n})", fontsize=8)
        top.legend(fontsize=6, frameon=False, loc="upper center")
        lo = m["label_only"]
        _step(bottom, lo["pit_histogram"], LABEL_ONLY, f"label errors only: {lo['pit_shape']}")
        bottom.legend(fontsize=6, frameon=False, loc="upper center")
        bottom.set_xlabel("PIT", fontsize=8)
        for ax in (top, bottom):
            high = ax.get_ylim()[1]
            ax.set_ylim(0, max(high * 1.25, 1.6))
    axes[0, 0].set_ylabel("density: model and label errors", fontsize=7)
    axes[1, 0].set_ylabel("density: label errors only", fontsize=7)
    return figure


def reliability_figure(result, title: str):
    r = result.report
    figure = titled_figure(4.4, 4.0, title)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], color="k", lw=0.8)
    colours = ["#3b6fb6", "#e07a1f", "#3a9a5b", "#8e5ea2", "#b0413e", "#5b8e9a"]
    for j, label in enumerate(r["labels"]):
        colour = colours[j % len(colours)]
        name, section = baseline(r)
        m = section["all"][label]
        ax.plot(LEVELS, m["reliability"], "o-", color=colour, ms=3, lw=1.2,
                label=f"{_name(label)}" + (f" ({name})" if r["after"] else ""))
        if r["after"]:
            ax.plot(LEVELS, r["after"]["all"][label]["reliability"], "s--", color=colour,
                    ms=3, lw=1.0, label=f"{_name(label)} (after fit)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage of the central interval", fontsize=8)
    ax.set_ylabel("observed coverage", fontsize=8)
    ax.text(0.97, 0.05, "below the line: over-confident\nabove: conservative", fontsize=6,
            ha="right", va="bottom", transform=ax.transAxes, color="0.3")
    ax.legend(fontsize=6, frameon=False, loc="upper left", ncol=1 if not r["after"] else 2)
    style(ax)
    return figure


def kiel_ticks(ax) -> None:
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(FixedLocator([3000, 4000, 5000, 7000, 10000, 15000, 20000,
                                             30000]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _hexagons(ax, centres, values, gridsize, extent, vmin, vmax, cmap):
    from matplotlib.collections import PolyCollection

    xmin, xmax, ymin, ymax = extent
    sx = (xmax - xmin) / gridsize
    ny = max(int(gridsize / math.sqrt(3)), 1)
    sy = (ymax - ymin) / ny
    corners = np.array([[0.5, -0.5], [0.5, 0.5], [0.0, 1.0], [-0.5, 0.5], [-0.5, -0.5],
                        [0.0, -1.0]]) * [sx, sy / 3]     # matplotlib's hexbin hexagon
    keep = np.isfinite(values)
    polygons = [c + corners for c in centres[keep]]
    polygons = [np.column_stack([10 ** p[:, 0], p[:, 1]]) for p in polygons]
    collection = PolyCollection(polygons, array=values[keep], cmap=cmap, edgecolors="face",
                                linewidths=0.2)
    collection.set_clim(vmin, vmax)
    ax.add_collection(collection)
    return collection


def kiel_figure(result, title: str):
    r = result.report
    maps = r["kiel"]
    rows = ["before"] + (["after"] if "after" in maps else [])
    labels = r["labels"]
    figure = titled_figure(2.6 * len(labels) + 0.8, 2.7 * len(rows) + 0.4, title)
    axes = figure.subplots(len(rows), len(labels), squeeze=False, sharex=True, sharey=True)
    all_values = [v for row in rows for lab in labels
                  for v in maps[row]["labels"][lab]["ks"] if v is not None]
    if not all_values:
        all_values = [0.1]
    vmin, vmax = math.log(max(min(all_values), 1e-3)), math.log(max(all_values))
    vmax = max(vmax, vmin + 0.5)
    teff, logg = result.kiel
    good = np.isfinite(teff) & np.isfinite(logg) & (teff > 0)
    collection = None
    for i, row in enumerate(rows):
        m = maps[row]
        extent, centres = m["extent"], np.asarray(m["centres"])
        for j, label in enumerate(labels):
            ax = axes[i, j]
            ax.scatter(teff[good], logg[good], s=0.3, color="0.8", rasterized=True, lw=0)
            values = np.array([np.nan if v is None else math.log(v)
                               for v in m["labels"][label]["ks"]])
            collection = _hexagons(ax, centres, values, m["gridsize"], extent, vmin, vmax,
                                   "viridis")
            ax.set_xscale("log")
            ax.set_xlim(10 ** extent[1], 10 ** extent[0])
            ax.set_ylim(extent[3], extent[2])
            shown = int(np.isfinite(values).sum())
            ax.set_title(f"{_name(label)} {baseline(r)[0] if row == 'before' else 'after fit'} "
                         f"({shown} cells)", fontsize=8)
            style(ax)
            if i == len(rows) - 1:
                ax.set_xlabel("Teff (K), reference", fontsize=8)
            if j == 0:
                ax.set_ylabel("log g, reference", fontsize=8)
    for ax in axes.ravel():
        kiel_ticks(ax)
    if collection is not None:
        bar = figure.colorbar(collection, ax=axes, shrink=0.8)
        bar.set_label("ln D_KS (cells of >= 5 stars)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    return figure


def residual_figure(result, title: str):
    """|prediction - reference| against sigma = sqrt(e^2 + e_y^2), log-log: honest errors put
    68% of the points below the line |d| = sigma and 95% below 2 sigma. The red points are
    the 68% quantile of |d| in ten bins of sigma (all rows; at most `SCATTER_MAX` drawn)."""
    r = result.report
    labels = r["labels"]
    figure = titled_figure(2.6 * len(labels) + 0.4, 2.9, title)
    axes = figure.subplots(1, len(labels), squeeze=False)[0]
    everything = np.ones(len(next(iter(result.data.values())).ok), bool)
    rng = np.random.default_rng(0)
    for ax, label in zip(axes, labels):
        source = result.raw if r.get("raw") else result.data   # the baseline's values
        pred, error, _, _, ref, ref_error = source[label].rows(everything)
        sigma = np.sqrt(error ** 2 + ref_error ** 2)
        d = np.abs(pred - ref)
        good = sigma > 0
        sigma, d = sigma[good], d[good]
        if not len(d):
            continue
        lo, hi = np.percentile(sigma, [0.5, 99.5])
        floor = max(np.percentile(d, 1), lo / 100)
        shown = rng.choice(len(d), SCATTER_MAX, replace=False) if len(d) > SCATTER_MAX \
            else slice(None)
        ax.scatter(sigma[shown], np.maximum(d[shown], floor), s=1.5, lw=0, color=BEFORE,
                   alpha=0.35, rasterized=True)
        grid = np.array([lo, hi])
        ax.plot(grid, grid, "k-", lw=0.8, label="|d| = sigma")
        ax.plot(grid, 2 * grid, "k--", lw=0.8, label="|d| = 2 sigma")
        edges = np.quantile(sigma, np.linspace(0, 1, 11))
        which = np.clip(np.searchsorted(edges, sigma, side="right") - 1, 0, 9)
        centres, q68 = [], []
        for b in range(10):
            inside = which == b
            if inside.sum() >= 10:
                centres.append(np.median(sigma[inside]))
                q68.append(np.quantile(d[inside], 0.6827))
        ax.plot(centres, q68, "o", color=AFTER, ms=3.5, label="68% quantile of |d|")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(floor, max(np.percentile(d, 99.9), 3 * hi))
        unit = " (K)" if label == "teff" else ""
        ax.set_title(f"{_name(label)} ({baseline(r)[0]})", fontsize=8)
        ax.set_xlabel(f"sigma = sqrt(sigma_pred^2 + sigma_ref^2){unit}", fontsize=7)
        ax.legend(fontsize=6, frameon=False, loc="upper left")
        style(ax)
        _plain_log_ticks(ax)
    axes[0].set_ylabel("|prediction - reference|", fontsize=8)
    return figure


def _plain_log_ticks(ax, x: bool = True, y: bool = False) -> None:
    """Log axes labelled at 1, 2, 5 x 10^k in plain numbers, without crowded minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for axis, on in ((ax.xaxis, x), (ax.yaxis, y)):
        if not on:
            continue
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)
        axis.set_minor_formatter(NullFormatter())
