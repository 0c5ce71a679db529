"""`xptools plot`: a quick look at a table as an image (PNG, PDF or SVG).

- **Spectra** (the default): flux against wavelength with a shaded +-1 sigma band
  (``flux_error``; ``flux_scatter`` for the decoded spectra of `xptools generate`), one line per
  row, the legend by source_id. XP coefficients are sampled first, with their errors, by
  `xptools.sampling.run_sample`, exactly as `xptools sample` does.
- **Reconstructions** (an svae ``model``): each spectrum next to its svae reconstruction and the
  decoded scatter, with chi2 and the outlier percentile of `xptools generate --reconstruct`
  (computed by `xptools.generate.run_reconstruct` itself), and the normalised residuals
  (x - x_hat) / sqrt(sigma^2 + s_hat^2) below, whose mean square is chi2.
- **Kiel diagram** (``kiel=True``): log g against Teff, both reversed, coloured by [Fe/H]; the
  stars whose spectra are drawn are ringed in their line colours.

Rows are chosen by index (``--rows``) or by a filter (``--where``, `xptools.where.RowFilter`).
The table is read once, chunk by chunk: only the chosen rows' spectra are kept, so a large
table costs the time to read it, not the memory.

matplotlib is imported by the functions that draw, never at import, and only its
object-oriented API is used (no pyplot, no global backend or state).
"""

from __future__ import annotations

import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from xptools.errors import UserError
from xptools.io import STDIO, InputTable, Table, concat
from xptools.models.features import float_column
from xptools.where import RowFilter
from xptools.xp import (BANDS, CONTINUOUS, ContinuousLayout, detect_layout, preview_columns,
                        sampled_grid)

DEFAULT_SPECTRA = 5      # rows drawn when none are chosen
MAX_SPECTRA = 20         # at most this many spectra in one image
IMAGE_FORMATS = ("png", "pdf", "svg")
KIEL_SCATTER_MAX = 50_000  # more stars than this: the Kiel diagram bins them (mean [Fe/H])
CHUNK_ROWS = 5_000
FLUX_UNIT = "W m-2 nm-1"


def parse_rows(text: str) -> list[int]:
    """'0,5,9' -> [0, 5, 9]: 0-based row numbers, in the order given, each once."""
    rows: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            row = int(part)
        except ValueError:
            raise UserError(f"--rows {text!r}: {part!r} is not a row number (0-based, "
                            f"comma-separated, e.g. 0,5,9)") from None
        if row < 0:
            raise UserError(f"--rows {text!r}: row numbers start at 0, not {row}")
        if row not in rows:
            rows.append(row)
    if not rows:
        raise UserError(f"--rows {text!r}: no row numbers (e.g. --rows 0,5,9)")
    return rows


# -- the image file ------------------------------------------------------------------------

def image_format(path: str, format: str | None) -> str:
    """png, pdf or svg: from ``format``, else the file's extension; stdout is PNG."""
    if format:
        if format.lower() not in IMAGE_FORMATS:
            raise UserError(f"--format {format!r}: choose png, pdf or svg")
        return format.lower()
    if path == STDIO:
        return "png"
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in IMAGE_FORMATS:
        raise UserError(f"{path}: cannot tell the image format from the file name; use .png, "
                        f".pdf or .svg, or --format")
    return ext


class ImageTarget:
    """Where the image goes. The checks run at once, before any work; the image is written
    under a temporary name beside the target and renamed into place (stdout: written whole
    at the end), so a failed run leaves nothing."""

    def __init__(self, path: str, format: str | None = None, overwrite: bool = False):
        self.path = path
        self.format = image_format(path, format)
        if path == STDIO:
            if sys.stdout.isatty():
                raise UserError(f"refusing to write a {self.format.upper()} image to a "
                                f"terminal; give -o FILE.{self.format}, or pipe it on")
            return
        if os.path.isdir(path):
            raise UserError(f"{path}: is a directory; give an image file name")
        if os.path.exists(path) and not overwrite:
            raise UserError(f"{path} exists; use --overwrite to replace it")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UserError(f"{path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise UserError(f"{path}: cannot write in {folder}")

    def save(self, figure, dpi: int) -> None:
        from xptools import __version__

        metadata = {"png": {"Software": f"xptools {__version__}"},
                    "pdf": {"Creator": f"xptools {__version__}", "CreationDate": None},
                    "svg": {"Creator": f"xptools {__version__}", "Date": None}}[self.format]
        options = dict(format=self.format, dpi=dpi, metadata=metadata)
        if self.path == STDIO:
            buffer = io.BytesIO()
            figure.savefig(buffer, **options)
            sys.stdout.buffer.write(buffer.getvalue())
            sys.stdout.buffer.flush()
            return
        from xptools.io import atomic

        tmp = atomic.temporary_beside(self.path)
        try:
            figure.savefig(tmp, **options)
            os.replace(tmp, self.path)
            atomic.done_with(tmp)
        except OSError as e:
            atomic.discard(tmp)
            message = atomic.no_space(e, self.path)
            if message:
                raise UserError(f"{self.path}: {message}") from e
            raise UserError(f"{self.path}: cannot write the image ({e.strerror or e})") from e
        except BaseException:
            atomic.discard(tmp)
            raise


# -- reading the rows ----------------------------------------------------------------------

@dataclass
class Labels:
    """The Kiel diagram's columns (fe_h may be None) and their values for the rows read."""

    columns: dict[str, str | None]
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    chosen: list[np.ndarray] = field(default_factory=list)   # per chunk: the row is selected

    def array(self, label: str) -> np.ndarray:
        return np.concatenate(self.values[label]) if self.values.get(label) else np.zeros(0)


@dataclass
class Selection:
    """What `read_rows` found: the drawn rows (whole, in drawing order) and their row numbers,
    the Kiel diagram's values, and the number of rows read and matched."""

    table: Table | None
    rows: list[int]
    labels: Labels | None
    read: int
    matched: int
    complete: bool    # the whole table was read (else ``matched`` is a lower bound)


def label_columns(schema: Table, prefix: str | None, name: str) -> dict[str, str | None]:
    """The teff, logg and fe_h columns of the Kiel diagram: PREFIX_teff... with ``prefix``,
    else teff, logg, fe_h, else the one prefixed set the table has (e.g. apogee_teff...).
    fe_h is optional (None: the diagram is not coloured)."""
    from xptools.models import column_names

    if prefix is not None:
        names = column_names(prefix, ["teff", "logg", "fe_h"])
        missing = [names[l] for l in ("teff", "logg") if names[l] not in schema]
        if missing:
            raise UserError(f"{name}: no column {missing[0]!r} for the Kiel diagram (--prefix "
                            f"{prefix})")
    elif "teff" in schema or "logg" in schema:
        names = {"teff": "teff", "logg": "logg", "fe_h": "fe_h"}
        missing = [l for l in ("teff", "logg") if l not in schema]
        if missing:
            raise UserError(f"{name}: no column {missing[0]!r} for the Kiel diagram")
    else:
        prefixes = [c[:-len("teff")] for c in schema.colnames
                    if c.endswith("_teff") and c[:-len("teff")] + "logg" in schema]
        if not prefixes:
            raise UserError(f"{name}: no teff and logg columns for the Kiel diagram (looked for "
                            f"teff, logg, fe_h, or P_teff, P_logg, P_fe_h; found "
                            f"{preview_columns(schema.colnames)})")
        if len(prefixes) > 1:
            found = ", ".join(p + "teff" for p in prefixes)
            raise UserError(f"{name}: several sets of labels ({found}); choose one with "
                            f"--prefix, e.g. --prefix {prefixes[0].rstrip('_')}")
        names = {l: prefixes[0] + l for l in ("teff", "logg", "fe_h")}
    for column in names.values():
        if column in schema and (schema[column].ndim != 1 or
                                 schema[column].dtype.kind not in "iuf"):
            raise UserError(f"{name}: column {column!r} is not one number per row")
    if names["fe_h"] not in schema:
        names["fe_h"] = None
    return names


def spectrum_columns(schema: Table, name: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The columns the spectra are drawn from (and source_id, and ``extra`` where present)."""
    kind = detect_layout(schema)
    if kind is None:
        internal = any(f"{b}_flux" in schema for b in BANDS)
        aside = "; internally calibrated bp_flux/rp_flux are not drawn" if internal else ""
        raise UserError(f"{name}: no XP spectra to draw (expected a flux column, or "
                        f"bp_coefficients/rp_coefficients, or bp_coeff_0.. columns{aside}); "
                        f"--kiel alone draws labels without spectra")
    if kind == "sampled":
        wanted = ["flux", "flux_error", "flux_scatter", "wavelength"]
    else:
        layout = ContinuousLayout(schema, name)
        wanted = layout.consumed + [f"{b}_{k}" for b in layout.bands
                                    for k in ("standard_deviation", "n_relevant_bases")]
    wanted = ["source_id", *extra, *wanted]
    return [c for c in dict.fromkeys(wanted) if c in schema]


def read_rows(src: InputTable, *, rows: list[int] | None = None, where: RowFilter | None = None,
              spectra: bool = True, labels: dict[str, str | None] | None = None,
              extra: tuple[str, ...] = (), chunk_rows: int = CHUNK_ROWS) -> Selection:
    """One pass over the table: the rows to draw (``rows``, else the first MAX_SPECTRA rows
    matching ``where``, else the first DEFAULT_SPECTRA), whole when ``spectra``, and the label
    columns of every row when ``labels`` (a Kiel diagram shows them all). Reading stops early
    when nothing more is needed."""
    name = src.name
    if where is not None:
        where.check(src.schema, name)
    columns: list[str] = []
    if spectra:
        columns += spectrum_columns(src.schema, name, extra)
    if labels is not None:
        columns += [c for c in labels.values() if c]
    if where is not None:
        columns += where.columns
    columns = list(dict.fromkeys(columns))
    kiel = Labels(labels, {l: [] for l in labels}) if labels is not None else None
    want = set(rows) if rows is not None else None
    found: dict[int, Table] = {}
    order: list[int] = []
    offset = matched = 0
    complete = True
    limit = MAX_SPECTRA if where is not None else DEFAULT_SPECTRA
    for chunk in src.chunks(chunk_rows, columns):
        n = len(chunk)
        if rows is not None:
            chosen = np.zeros(n, bool)
            index = [r - offset for r in rows if offset <= r < offset + n]
            chosen[index] = True
        elif where is not None:
            chosen = where(chunk)
        else:
            chosen = np.ones(n, bool)
        hits = np.flatnonzero(chosen)
        matched += len(hits)
        if spectra:
            if want is not None:
                for i in hits:
                    found[offset + int(i)] = chunk.rows(np.array([i]))  # a copy, not a view
            else:
                take = hits[:max(limit - len(order), 0)]
                if len(take):
                    order += [offset + int(i) for i in take]
                    found[offset] = chunk.rows(take)
        if kiel is not None:
            for label, column in labels.items():
                kiel.values[label].append(float_column(chunk, column, len(chunk)).astype(np.float32)
                                          if column else np.full(n, np.nan, np.float32))
            kiel.chosen.append(chosen)
        offset += n
        if kiel is None and (want <= set(found) if want is not None else
                             matched > limit if where is not None else len(order) >= limit):
            complete = False
            break
    if offset == 0:
        raise UserError(f"{name}: the table has no rows")
    if rows is not None:
        beyond = [r for r in rows if r >= offset]
        if beyond:
            raise UserError(f"--rows: no row {beyond[0]} in {name}, which has {offset} rows "
                            f"(numbered from 0)")
    if where is not None and matched == 0:
        raise UserError(f"{where.option} {where.text!r}: no row of {name} matches")
    table = None
    if spectra:
        if rows is not None:
            order = list(rows)
            table = concat([found[r] for r in rows])
        else:
            table = concat([found[k] for k in sorted(found)])
    else:
        order = (list(rows) if rows is not None else [])
    return Selection(table, order, kiel, offset, matched, complete)


# -- spectra: sampling coefficients, reconstructing ----------------------------------------

class _InMemory:
    """The rows held in memory, in the shape of an `InputTable` (for `run_sample` and
    `run_reconstruct`)."""

    def __init__(self, table: Table, name: str):
        self.name, self._table, self.nrows = name, table, len(table)
        self.schema = table.rows(slice(0, 0))

    def chunks(self, rows: int = 0, columns: list[str] | None = None, read_ahead: bool = False):
        yield self._table if columns is None else self._table.select(columns)


class _Collected:
    """A `TableWriter` stand-in that keeps what is written."""

    def __init__(self):
        self.tables: list[Table] = []

    def write(self, table: Table) -> None:
        self.tables.append(table)

    def table(self) -> Table:
        return concat(self.tables)


@dataclass
class Spectra:
    """The drawn rows' spectra on one grid: flux and its band (None: no band) in W m-2 nm-1."""

    grid: np.ndarray
    flux: np.ndarray
    band: np.ndarray | None
    band_name: str                # what the band is: "error" or "scatter"
    names: list[str]              # legend entries (source_id, else row number)
    rows: list[int]
    unit: str = FLUX_UNIT


def sampled_spectra(table: Table, rows: list[int], name: str,
                    warn: Callable[[str], None]) -> tuple[Spectra, Table]:
    """The spectra of the drawn rows (coefficients are sampled first, with errors) and the
    sampled-layout table they come from."""
    if detect_layout(table) in CONTINUOUS:
        from xptools.sampling import run_sample

        out = _Collected()
        # a missing band is a gap in the drawing; the sample_flag column its warning points
        # to is not in the image
        run_sample(_InMemory(table, name), out, quiet=True,
                   warn=lambda message: warn(message.replace(", see sample_flag", "")))
        table = out.table()
    grid = sampled_grid(table, name)
    flux = np.asarray(table["flux"], np.float64)
    band, band_name = None, ""
    for column, what in (("flux_error", "error"), ("flux_scatter", "scatter")):
        if column in table:
            band, band_name = np.asarray(table[column], np.float64), what
            break
    if "source_id" in table:
        ids = np.asarray(table["source_id"])
        names = [str(v) for v in ids]
    else:
        names = [f"row {r}" for r in rows]
    unit = table.info["flux"].unit if "flux" in table.info else None
    return Spectra(grid, flux, band, band_name, names, rows, unit or FLUX_UNIT), table


@dataclass
class Reconstruction:
    """svae reconstructions of the drawn rows on the model's grid, and their scores."""

    grid: np.ndarray
    flux: np.ndarray
    scatter: np.ndarray
    chi2: np.ndarray
    percentile: np.ndarray
    flags: np.ndarray
    residual: np.ndarray      # (x - x_hat) / sqrt(sigma^2 + s_hat^2) on the model's grid


def reconstruct(model, sampled: Table, spectra: Spectra, name: str) -> Reconstruction:
    """`xptools generate --reconstruct` on the drawn rows (`run_reconstruct` itself), and the
    normalised residuals whose mean square is its chi2."""
    from xptools.generate import run_reconstruct

    if spectra.band is None or spectra.band_name != "error":
        raise UserError(f"{name}: no flux_error column (--reconstruct weighs each sample by "
                        f"its error)")
    keep = [c for c in ("flux", "flux_error", "wavelength", model.features.reference)
            if c in sampled]
    out = _Collected()
    run_reconstruct(_InMemory(sampled.select(keep), name), out, model, quiet=True)
    result = out.table()
    grid = np.asarray(model.wavelengths, np.float64)
    index = np.array([int(np.argmin(np.abs(spectra.grid - w))) for w in grid])
    flux = np.asarray(result["flux"], np.float64)
    scatter = np.asarray(result["flux_scatter"], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        residual = (spectra.flux[:, index] - flux) / np.sqrt(spectra.band[:, index] ** 2
                                                            + scatter ** 2)
    return Reconstruction(grid, flux, scatter, np.asarray(result["chi2"], np.float64),
                          np.asarray(result["outlier_percentile"], np.float64),
                          np.asarray(result["generate_flag"]), residual)


# -- drawing -------------------------------------------------------------------------------

def _text(text: str) -> str:
    """Text from the user (file and column names, filters) shown as it is, never as math."""
    return text.replace("$", r"\$")


def _unit_label(unit: str) -> str:
    """'W m-2 nm-1' (in any order) as mathtext; other units as they are."""
    parts = unit.split()
    if sorted(parts) == sorted(FLUX_UNIT.split()):
        return r"W m$^{-2}$ nm$^{-1}$"
    return _text(unit)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _style(ax) -> None:
    ax.grid(True, which="major", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(which="both", labelsize=7)


def _flux_limits(flux: np.ndarray, log: bool) -> tuple[float, float] | None:
    """y limits that show the spectra, not the noise at the band edges."""
    values = flux[np.isfinite(flux)]
    if log:
        values = values[values > 0]
    if not len(values):
        return None
    top = float(np.max(values))
    if log:
        bottom = float(np.percentile(values, 0.5))
        return bottom / 2.0, top * 1.6
    bottom = min(0.0, float(np.percentile(values, 0.5)))
    return bottom, top * 1.08


def _band_lower(flux, band, log: bool):
    lower = flux - band
    if log:  # a log axis cannot show a band reaching zero: cut it at a tenth of the flux
        lower = np.where(lower > 0, lower, flux / 10.0)
    return lower


def draw_spectra(ax, spectra: Spectra, colours: list, log: bool) -> None:
    """All spectra on one axis with their +-1 sigma bands; legend by source_id."""
    for i, colour in enumerate(colours):
        flux = spectra.flux[i]
        label = spectra.names[i] + ("" if np.isfinite(flux).any() else " (no spectrum)")
        ax.plot(spectra.grid, flux, color=colour, lw=1.0, label=label)
        if spectra.band is not None:
            ax.fill_between(spectra.grid, _band_lower(flux, spectra.band[i], log),
                            flux + spectra.band[i], color=colour, alpha=0.22, lw=0)
    if log:
        ax.set_yscale("log")
    limits = _flux_limits(spectra.flux, log)
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlim(spectra.grid[0], spectra.grid[-1])
    ax.set_xlabel("Wavelength (nm)", fontsize=9)
    ax.set_ylabel(f"Flux ({_unit_label(spectra.unit)})", fontsize=9)
    n = len(colours)
    band = f", shaded: ±1σ {spectra.band_name}" if spectra.band is not None else ""
    ax.set_title(f"{n} spectr{'um' if n == 1 else 'a'}{band}", fontsize=9, loc="left")
    _style(ax)
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if n > 6 else {"loc": "best"}
    ax.legend(title="source_id" if not spectra.names[0].startswith("row ") else None,
              fontsize=7, title_fontsize=7, frameon=False, alignment="left", **outside)


def draw_reconstructions(figure, spectra: Spectra, rec: Reconstruction, colours: list,
                         log: bool) -> list:
    """One cell per star: the spectrum and its reconstruction above, the residuals below."""
    n = len(colours)
    ncols = 1 if n <= 3 else 2 if n <= 8 else 3
    nrows = math.ceil(n / ncols)
    outer = figure.add_gridspec(nrows, ncols, hspace=0.45, wspace=0.22)
    axes = []
    for i, colour in enumerate(colours):
        cell = outer[i // ncols, i % ncols].subgridspec(2, 1, height_ratios=(3, 1.2), hspace=0.05)
        top = figure.add_subplot(cell[0])
        bottom = figure.add_subplot(cell[1], sharex=top)
        flux = spectra.flux[i]
        top.plot(spectra.grid, flux, color=colour, lw=1.0, label="observed ±1σ")
        if spectra.band is not None:
            top.fill_between(spectra.grid, _band_lower(flux, spectra.band[i], log),
                             flux + spectra.band[i], color=colour, alpha=0.25, lw=0)
        ok = not rec.flags[i] & 64
        if ok:
            chi2 = f"χ² = {rec.chi2[i]:.2f}" if np.isfinite(rec.chi2[i]) else "χ² n/a"
            top.plot(rec.grid, rec.flux[i], color="k", lw=0.9, ls=(0, (4, 2)),
                     label=f"svae, {chi2}")
            top.fill_between(rec.grid, _band_lower(rec.flux[i], rec.scatter[i], log),
                             rec.flux[i] + rec.scatter[i], facecolor="none", edgecolor="0.35",
                             hatch="////", lw=0, alpha=0.6, label="svae scatter ±1σ")
        if log:
            top.set_yscale("log")
        limits = _flux_limits(flux[None], log)
        if limits:
            top.set_ylim(*limits)
        score = (f", outlier percentile {rec.percentile[i]:.1f}"
                 if ok and np.isfinite(rec.percentile[i]) else "")
        what = "" if ok else ": incomplete spectrum, no reconstruction"
        top.set_title(f"{spectra.names[i]} (row {spectra.rows[i]}){score}{what}", fontsize=8,
                      loc="left", color=colour if ok else "0.3")
        top.legend(fontsize=7, frameon=False, loc="best")
        top.tick_params(labelbottom=False)
        if i % ncols == 0:
            top.set_ylabel(f"Flux ({_unit_label(spectra.unit)})", fontsize=8)
            bottom.set_ylabel("residual / σ", fontsize=8)
        r = rec.residual[i]
        bottom.axhspan(-1, 1, color="0.88", lw=0)
        bottom.axhline(0, color="0.5", lw=0.6)
        if ok:
            bottom.plot(rec.grid, r, color=colour, lw=0.9, marker=".", ms=2.5)
        span = np.nanmax(np.abs(r)) if ok and np.isfinite(r).any() else 3.0
        span = float(min(max(3.0, span * 1.15), 15.0))
        bottom.set_ylim(-span, span)
        beyond = int(np.sum(np.abs(r[np.isfinite(r)]) > span)) if ok else 0
        if beyond:
            bottom.text(0.99, 0.04, f"{beyond} beyond ±{span:g}", transform=bottom.transAxes,
                        ha="right", va="bottom", fontsize=6, color="0.4")
        bottom.set_xlim(spectra.grid[0], spectra.grid[-1])
        if i // ncols == nrows - 1 or i + ncols >= n:
            bottom.set_xlabel("Wavelength (nm)", fontsize=8)
        for ax in (top, bottom):
            _style(ax)
        axes += [top, bottom]
    return axes


def draw_kiel(figure, ax, kiel: Labels, marked: list[tuple[int, object]], others: str) -> None:
    """log g against Teff (both reversed), coloured by [Fe/H]; rows not selected in grey,
    the ``marked`` rows (row number, colour) ringed."""
    teff, logg, fe_h = (kiel.array(l) for l in ("teff", "logg", "fe_h"))
    chosen = np.concatenate(kiel.chosen) if kiel.chosen else np.zeros(0, bool)
    known = np.isfinite(teff) & np.isfinite(logg) & (teff > 0)
    shown = known & chosen
    rest = known & ~chosen
    n = int(shown.sum())
    size = 45 if n <= 30 else 14 if n <= 500 else 6 if n <= 5000 else 2
    edge = {"edgecolors": "0.2", "lw": 0.4} if n <= 30 else {"lw": 0}
    raster = n > 2000
    if rest.any():
        grey = np.flatnonzero(rest)
        if len(grey) > KIEL_SCATTER_MAX:
            grey = np.random.default_rng(0).choice(grey, KIEL_SCATTER_MAX, replace=False)
        ax.scatter(teff[grey], logg[grey], s=10 if len(grey) <= 500 else 4 if len(grey) <= 5000
                   else 1.5, c="0.82", lw=0, rasterized=len(grey) > 2000, label=others)
    columns = kiel.columns
    image = None
    if columns["fe_h"] is not None:
        colour = fe_h[shown]
        finite = np.isfinite(colour)
        limits = np.nanpercentile(colour, [1, 99]) if finite.sum() > 1 else (-1.0, 0.5)
        if (~finite).any():  # hollow (few stars) or grey (many) where [Fe/H] is unknown
            hollow = dict(c="none", edgecolors="0.45", lw=0.5) if n <= 5000 else \
                dict(c="0.55", lw=0)
            ax.scatter(teff[shown][~finite], logg[shown][~finite], s=size, rasterized=raster,
                       label="no [Fe/H]", **hollow)
        if n > KIEL_SCATTER_MAX:
            image = ax.hexbin(teff[shown][finite], logg[shown][finite], C=colour[finite],
                              reduce_C_function=np.mean, gridsize=120, cmap="viridis",
                              vmin=limits[0], vmax=limits[1], xscale=_teff_scale(teff[known]),
                              mincnt=1, lw=0, rasterized=True)
            label = "mean [Fe/H] per cell (dex)"
        else:
            order = np.argsort(colour[finite])
            image = ax.scatter(teff[shown][finite][order], logg[shown][finite][order], s=size,
                               c=colour[finite][order], cmap="viridis", vmin=limits[0],
                               vmax=limits[1], rasterized=raster, zorder=3, **edge)
            label = "[Fe/H] (dex)"
        bar = figure.colorbar(image, ax=ax, pad=0.02, fraction=0.05)
        bar.set_label(label + ("" if columns["fe_h"] == "fe_h" else
                               _text(f"  [{columns['fe_h']}]")),
                      fontsize=8)
        bar.ax.tick_params(labelsize=7)
    else:
        ax.scatter(teff[shown], logg[shown], s=size, c="tab:blue", rasterized=raster, zorder=3,
                   **edge)
    for row, colour in marked:
        if row < len(teff) and known[row]:
            ax.scatter([teff[row]], [logg[row]], s=max(90, 3.5 * size), facecolors="none",
                       edgecolors=[colour], lw=1.8, zorder=5)
    if known.any():
        ax.set_xscale(_teff_scale(teff[known]))
        if ax.get_xscale() == "log":
            from matplotlib.ticker import LogLocator, ScalarFormatter

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
                                                        8.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
            ax.xaxis.set_minor_formatter("")
    ax.invert_xaxis()
    ax.invert_yaxis()
    teff_name = "" if columns["teff"] == "teff" else _text(f"  [{columns['teff']}]")
    logg_name = "" if columns["logg"] == "logg" else _text(f"  [{columns['logg']}]")
    ax.set_xlabel(f"$T_\\mathrm{{eff}}$ (K){teff_name}", fontsize=9)
    ax.set_ylabel(f"log $g$ (dex){logg_name}", fontsize=9)
    title = f"Kiel diagram, {n:,} star{'s' if n != 1 else ''}"
    ax.set_title(title, fontsize=9, loc="left")
    _style(ax)
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(fontsize=7, frameon=False, loc="lower left", markerscale=1.5)


def _teff_scale(teff: np.ndarray) -> str:
    """A log axis when hot stars would squeeze the cool ones (a range beyond a factor 2.5)."""
    low, high = np.percentile(teff, [0.5, 99.5]) if len(teff) else (1.0, 1.0)
    return "log" if low > 0 and high / low > 2.5 else "linear"


# -- the command ---------------------------------------------------------------------------

def run_plot(src: InputTable, target: ImageTarget, *, rows: list[int] | None = None,
             where: RowFilter | None = None, spectra: bool = True, kiel: bool = False,
             prefix: str | None = None, model=None, log: bool = True, dpi: int = 120,
             warn: Callable[[str], None] = lambda message: None) -> dict:
    """Draw the chosen rows of ``src`` into ``target``: spectra (with svae reconstructions
    when ``model`` is given) and/or a Kiel diagram. Returns what was drawn."""
    name = src.name
    labels = label_columns(src.schema, prefix, name) if kiel else None
    extra = (model.features.reference,) if model is not None else ()
    selection = read_rows(src, rows=rows, where=where, spectra=spectra, labels=labels,
                          extra=extra)
    drawn: dict = {"rows": selection.rows, "matched": selection.matched,
                   "read": selection.read}
    if spectra and where is not None and selection.matched > MAX_SPECTRA:
        warn(f"{'' if selection.complete else 'at least '}{selection.matched} rows match --where "
             f"{where.text!r}; drawing the first {MAX_SPECTRA} (narrow --where, or pick "
             f"--rows)")
    if spectra and rows is not None and len(rows) > MAX_SPECTRA:
        warn(f"{len(rows)} rows given; drawing the first {MAX_SPECTRA}")
        selection.rows = selection.rows[:MAX_SPECTRA]
        selection.table = selection.table.rows(slice(0, MAX_SPECTRA))
    curves = rec = None
    if spectra:
        curves, sampled = sampled_spectra(selection.table, selection.rows, name, warn)
        empty = [n for n, f in zip(curves.names, curves.flux) if not np.isfinite(f).any()]
        if empty:
            warn(f"{name}: {len(empty)} of the drawn rows have no spectrum (first: {empty[0]})")
        if model is not None:
            rec = reconstruct(model, sampled, curves, name)
            drawn["chi2"] = rec.chi2.tolist()
    colours = _colours(len(selection.rows)) if spectra else []
    if selection.labels is not None:
        teff = selection.labels.array("teff")
        logg = selection.labels.array("logg")
        missing = int(np.count_nonzero(~(np.isfinite(teff) & np.isfinite(logg))
                                       & np.concatenate(selection.labels.chosen)))
        if missing:
            warn(f"{name}: {missing} rows have no {labels['teff']} or {labels['logg']}: not on "
                 f"the Kiel diagram")
        drawn["kiel"] = int(np.count_nonzero(np.isfinite(teff) & np.isfinite(logg)
                                             & np.concatenate(selection.labels.chosen)))
    import matplotlib

    # GaiaXPy (which samples coefficients on a cold cache) sets text.usetex at import, and a
    # machine without LaTeX then fails to draw any text: drawing and saving never use TeX.
    # A fixed salt makes SVG ids, and so the same image's bytes, the same from run to run.
    with matplotlib.rc_context({"text.usetex": False, "svg.hashsalt": "xptools"}):
        figure = _figure(name, curves, rec, selection, colours, log, where, rows)
        target.save(figure, dpi)
    return drawn


def _figure(name: str, curves: Spectra | None, rec: Reconstruction | None,
            selection: Selection, colours: list, log: bool, where: RowFilter | None,
            rows: list[int] | None):
    from matplotlib.figure import Figure

    kiel = selection.labels
    n = len(colours)
    if rec is not None:
        ncols = 1 if n <= 3 else 2 if n <= 8 else 3
        height, width = 2.9 * math.ceil(n / ncols) + 0.7, 6.2 * ncols
    elif curves is not None:
        height, width = 4.6, 8.0
    else:
        height, width = 4.8, 5.6
    kiel_width = 5.4 if kiel is not None and curves is not None else 0.0
    figure = Figure(figsize=(width + kiel_width, max(height, 4.8 if kiel_width else 0)),
                    layout="constrained")
    shown = os.path.basename(name) if name != "<stdin>" else name
    what = (f"--where {where.text}" if where is not None else
            f"rows {_row_list(rows)}" if rows is not None else
            "" if curves is None else f"first {n} row{'s' if n != 1 else ''}")
    figure.suptitle(_text(f"{shown}" + (f": {what}" if what else "")), fontsize=10,
                    fontweight="bold", x=0.01, ha="left")
    if kiel_width:
        left, right = figure.subfigures(1, 2, width_ratios=(width, kiel_width), wspace=0.02)
    else:
        left = right = figure
    if curves is not None:
        if rec is not None:
            draw_reconstructions(left, curves, rec, colours, log)
        else:
            draw_spectra(left.add_subplot(), curves, colours, log)
    if kiel is not None:
        others = "not matching --where" if where is not None else "other rows"
        marked = list(zip(selection.rows, colours)) if curves is not None else []
        if curves is None and rows is not None:
            marked = []
        draw_kiel(right, right.add_subplot(), _kiel_for(kiel, rows, curves), marked, others)
    return figure


def _kiel_for(kiel: Labels, rows: list[int] | None, curves) -> Labels:
    """With --rows and spectra, every row is shown (the drawn ones ringed); with --rows alone,
    the given rows are the selection."""
    if rows is not None and curves is not None:
        return Labels(kiel.columns, kiel.values, [np.ones(len(c), bool) for c in kiel.chosen])
    return kiel


def _row_list(rows: list[int] | None) -> str:
    if not rows:
        return ""
    shown = ",".join(map(str, rows[:8]))
    return shown + (",..." if len(rows) > 8 else "")
