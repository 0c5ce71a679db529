"""XP spectra in the Gaia archive's table layouts.

Continuous spectra (the 55 + 55 Hermite coefficients per source) come in three layouts:

- ``arrays``: ``bp_coefficients[55]``, ``bp_coefficient_errors[55]``,
  ``bp_coefficient_correlations[1485]``, ``bp_standard_deviation``, ``bp_n_relevant_bases``,
  and the same for ``rp_`` (the archive's XP_CONTINUOUS product, GaiaXPy's input);
- ``columns``: one column per coefficient, ``bp_coeff_0`` .. ``bp_coeff_54`` with errors
  ``e_bp_coeff_0`` .. (the archive's "one column per element" DataLink option), no correlations;
- ``packed``: ``coeff[110]`` and ``coeff_error[110]``, BP's 55 then RP's, no correlations (the
  Multimodal Universe's Gaia catalogue, whose nested ``spectral_coefficients`` column the
  Parquet reader unpacks into these two columns).

Without correlations, sampled flux errors come from the diagonal of the coefficient covariance
only: `sample` and `photometry` say so in the header (XPERRCOR = 'diagonal'), in a warning and
in a bit of their flag column.

Sampled spectra: ``flux[N]`` and ``flux_error[N]`` on a wavelength grid given by the header
keywords WAVEMIN/WAVEMAX (N equally spaced samples) or WAVEGRID (the N values, comma-separated),
a ``wavelength[N]`` column, or - for the archive's XP_SAMPLED product, which has none of these -
GaiaXPy's default 336..1020 nm in 2 nm steps.

The correlations are the strictly lower triangle of the 55 x 55 correlation matrix, packed row
by row (numpy's ``tril_indices(55, -1)`` order), as in the archive and GaiaXPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xptools.errors import UserError
from xptools.io import Table

BANDS = ("bp", "rp")
CONTINUOUS = ("arrays", "columns", "packed")   # the layouts of continuous spectra
PACKED = ("coeff", "coeff_error")              # the packed layout's columns
N_COEFFICIENTS = 55
N_CORRELATIONS = N_COEFFICIENTS * (N_COEFFICIENTS - 1) // 2
DEFAULT_GRID = np.arange(336.0, 1021.0, 2.0)  # GaiaXPy's default absolute sampling, nm
BAND_OVERLAP = (636.0, 642.0)  # nm: where GaiaXPy's merged spectrum has both bands; BP alone
                               # below, RP alone above (read off its merge weights)


@dataclass
class Band:
    """One band's continuous spectra for a chunk of rows (coefficients and errors float64)."""

    coefficients: np.ndarray            # (n, 55)
    errors: np.ndarray                  # (n, 55)
    correlations: np.ndarray | None     # (n, 1485) (float32 in the archive) or None
    n_relevant_bases: np.ndarray | None  # (n,) int or None
    usable: np.ndarray                  # (n,) bool: present and finite
    corrupt: np.ndarray                 # (n,) bool: present but with NaN/inf values


def usable_flux(flux: np.ndarray) -> np.ndarray:
    """Which rows of sampled flux (n, N) are a usable spectrum: the one rule every command
    applies. A spectrum needs finite samples with a positive total: single samples may be
    negative (noise in the faint ends of BP and RP), but flux that is zero, or negative, as a
    whole is no measurement of a star."""
    with np.errstate(invalid="ignore"):
        return np.nansum(flux, axis=1) > 0


def array_columns(band: str) -> dict[str, str]:
    return {"coefficients": f"{band}_coefficients", "errors": f"{band}_coefficient_errors",
            "correlations": f"{band}_coefficient_correlations",
            "standard_deviation": f"{band}_standard_deviation",
            "n_relevant_bases": f"{band}_n_relevant_bases"}


def per_coefficient_columns(band: str) -> tuple[list[str], list[str]]:
    return ([f"{band}_coeff_{i}" for i in range(N_COEFFICIENTS)],
            [f"e_{band}_coeff_{i}" for i in range(N_COEFFICIENTS)])


def detect_layout(schema: Table) -> str | None:
    """'arrays', 'columns', 'packed' (continuous), 'sampled', or None."""
    if any(f"{b}_coefficients" in schema for b in BANDS):
        return "arrays"
    if any(f"{b}_coeff_0" in schema for b in BANDS):
        return "columns"
    if PACKED[0] in schema:
        return "packed"
    if "flux" in schema:
        return "sampled"
    return None


class ContinuousLayout:
    """Checks a table's XP continuous columns once, then pulls bands out of each chunk.

    ``bands`` are the bands the caller needs: a table without the columns of one of them is an
    error (rows without a spectrum are NaN rows in the columns, never absent columns); with
    ``bands=None`` any band the table has will do (e.g. to describe a table). The error says
    how to use the other band alone (`sample --band`), or ``why_both`` when a command needs
    both.
    """

    def __init__(self, schema: Table, name: str, bands: tuple[str, ...] | None = BANDS,
                 why_both: str | None = None):
        self.name = name
        self.kind = detect_layout(schema)
        self.schema = schema
        if self.kind not in CONTINUOUS:
            raise UserError(f"{name}: no XP continuous spectra (expected bp_coefficients/"
                            f"rp_coefficients arrays, bp_coeff_0.. columns or coeff/"
                            f"coeff_error arrays; found {preview_columns(schema.colnames)})")
        if self.kind == "packed":   # both bands in one array: a missing one is NaN or zero
            for column in PACKED:
                _require(schema, column, name)
                _check_width(schema, column, 2 * N_COEFFICIENTS, name)
            self.bands, self.consumed, self.has_correlations = list(BANDS), list(PACKED), False
            return
        first = lambda b: f"{b}_coefficients" if self.kind == "arrays" else f"{b}_coeff_0"
        self.bands = [b for b in BANDS if first(b) in schema]
        for band in bands or ():
            if band not in self.bands:
                other = [b for b in BANDS if b != band]
                hint = (f"; {why_both}" if why_both else
                        f"; to use {other[0].upper()} alone, sample with --band {other[0]}"
                        if other[0] in self.bands else "")
                raise UserError(f"{name}: no {band.upper()} spectra: missing column "
                                f"{first(band)!r} (found {preview_columns(schema.colnames)}){hint}")
        self.consumed: list[str] = []
        self.has_correlations = True
        for band in self.bands:
            if self.kind == "arrays":
                cols = array_columns(band)
                for role in ("coefficients", "errors"):
                    _require(schema, cols[role], name)
                    _check_width(schema, cols[role], N_COEFFICIENTS, name)
                self.consumed += [cols["coefficients"], cols["errors"]]
                if cols["correlations"] in schema:
                    _check_width(schema, cols["correlations"], N_CORRELATIONS, name)
                    self.consumed.append(cols["correlations"])
                else:
                    self.has_correlations = False
            else:
                values, errors = per_coefficient_columns(band)
                for col in values + errors:
                    _require(schema, col, name)
                self.consumed += values + errors
                self.has_correlations = False

    def has_column(self, role: str) -> bool:
        return all(array_columns(b)[role] in self.schema for b in self.bands)

    def band(self, chunk: Table, band: str) -> Band | None:
        """The band's spectra in this chunk, or None when the table has no such band."""
        if band not in self.bands:
            return None
        cols = array_columns(band)
        if self.kind == "packed":
            half = slice(0, N_COEFFICIENTS) if band == "bp" else slice(N_COEFFICIENTS, None)
            width = 2 * N_COEFFICIENTS
            coefficients = np.asarray(_cells(chunk, PACKED[0], width, self.name)[:, half],
                                      dtype=np.float64)
            errors = np.asarray(_cells(chunk, PACKED[1], width, self.name)[:, half],
                                dtype=np.float64)
            correlations = None
        elif self.kind == "arrays":
            k = N_COEFFICIENTS
            coefficients = np.asarray(_cells(chunk, cols["coefficients"], k, self.name),
                                      dtype=np.float64)
            errors = np.asarray(_cells(chunk, cols["errors"], k, self.name), dtype=np.float64)
            correlations = (_cells(chunk, cols["correlations"], N_CORRELATIONS, self.name)
                            if cols["correlations"] in chunk else None)
        else:
            values, errs = per_coefficient_columns(band)
            coefficients = np.stack([chunk[c] for c in values], axis=1).astype(np.float64)
            errors = np.stack([chunk[c] for c in errs], axis=1).astype(np.float64)
            correlations = None
        finite = np.isfinite(coefficients).all(axis=1) & np.isfinite(errors).all(axis=1)
        if correlations is not None:
            finite &= np.isfinite(correlations).all(axis=1)
        # A missing band is null throughout (the archive's empty arrays and null
        # standard_deviation) or all zero (no spectrum, the sampled form of which would fail
        # `usable_flux`); anything else that is not finite is corrupt.
        missing = np.isnan(coefficients).all(axis=1) | (coefficients == 0).all(axis=1)
        if cols["standard_deviation"] in chunk:
            missing |= ~np.isfinite(np.asarray(chunk[cols["standard_deviation"]], dtype=float))
        usable = finite & ~missing
        n_relevant = None
        if cols["n_relevant_bases"] in chunk:
            n_relevant = np.asarray(chunk[cols["n_relevant_bases"]])
            null = chunk.info[cols["n_relevant_bases"]].null
            missing = ~np.isfinite(n_relevant) if n_relevant.dtype.kind == "f" else \
                n_relevant == null if null is not None else False
            n_relevant = np.where(missing, 0, n_relevant).astype(np.int64)
        return Band(coefficients, errors, correlations, n_relevant, usable, ~finite & ~missing)


def _require(schema: Table, column: str, name: str) -> None:
    if column not in schema:
        raise UserError(f"{name}: missing column {column!r}")


def _check_width(schema: Table, column: str, width: int, name: str) -> None:
    """Array cells of ``width`` values; a column of nulls only may have come back without
    cells (a single missing-band row in CSV or a zero-length FITS array), which is checked
    row by row in `_cells`."""
    shape = schema[column].shape[1:]
    if shape not in ((width,), (0,), ()):
        raise UserError(f"{name}: column {column!r} has {'x'.join(map(str, shape))} values "
                        f"per row, expected {width}")
    if shape == () and schema[column].dtype.kind != "f":
        raise UserError(f"{name}: column {column!r} has a scalar per row, expected {width}")


def _cells(chunk: Table, column: str, width: int, name: str) -> np.ndarray:
    """An array column as (n, width); a column of nulls without cells becomes NaN rows."""
    data = chunk[column]
    if data.shape[1:] == (width,):
        return data
    if data.ndim == 1 and np.isnan(data).all() or data.shape[1:] == (0,):
        return np.full((len(data), width), np.nan)
    raise UserError(f"{name}: column {column!r} has a scalar per row, expected {width}")


def preview_columns(names: list[str], n: int = 8) -> str:
    """The first column names, for messages."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "") if names else "no columns"


def sampled_grid(table: Table, name: str) -> np.ndarray:
    """The wavelength grid (nm) of a sampled-layout table (a wavelength column is read from
    its first row, so pass a chunk with rows when the file may have one)."""
    if "flux" not in table:
        raise UserError(f"{name}: no sampled spectra (no 'flux' column)")
    width = table["flux"].shape[1] if table["flux"].ndim == 2 else 0
    if width == 0:
        raise UserError(f"{name}: column 'flux' is a scalar, expected an array per row")
    meta = table.meta
    if "WAVEGRID" in meta:
        grid = np.array([float(v) for v in str(meta["WAVEGRID"]).split(",")])
    elif "WAVEMIN" in meta and "WAVEMAX" in meta:
        grid = np.linspace(float(meta["WAVEMIN"]), float(meta["WAVEMAX"]), width)
    elif "wavelength" in table and len(table):
        grid = np.asarray(table["wavelength"][0], dtype=float)
    elif width == len(DEFAULT_GRID):
        grid = DEFAULT_GRID.copy()
    else:
        raise UserError(f"{name}: cannot tell the wavelength grid of 'flux' ({width} samples): "
                        f"no WAVEMIN/WAVEMAX keywords, no wavelength column, and not the "
                        f"archive's 343-sample grid")
    if grid.shape != (width,):
        raise UserError(f"{name}: the wavelength grid has {grid.size} values, 'flux' {width}")
    return grid


def grid_keywords(grid: np.ndarray, prefix: str = "WAVE") -> dict[str, object]:
    """Header keywords describing a grid: MIN/MAX/STEP when evenly spaced, else GRID."""
    step = (grid[-1] - grid[0]) / (len(grid) - 1) if len(grid) > 1 else 0.0
    if len(grid) > 1 and np.allclose(np.diff(grid), step, rtol=1e-9, atol=0):
        return {f"{prefix}MIN": float(grid[0]), f"{prefix}MAX": float(grid[-1]),
                f"{prefix}STEP": float(step)}
    return {f"{prefix}GRID": ",".join(repr(float(v)) for v in grid)}
