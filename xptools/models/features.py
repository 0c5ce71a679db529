"""Model inputs from tables: XP spectra normalised by the G-band flux, plus photometric
colours, each value with an "observed" mask, and robust per-feature scaling.

XP features (``xp="sampled"``) are the absolute flux on a wavelength grid (a subset of GaiaXPy's
default 336..1020 nm grid), divided by the star's G-band flux 10^(-0.4 G) so that distance
drops out; ``transform="log10"`` takes its logarithm (a non-positive flux is then unobserved).
With ``xp="coefficients"`` the features are the 55 + 55 Hermite coefficients, divided likewise.
Coefficient input is sampled with `xptools.sampling` first when a model wants sampled spectra;
sampled input serves a sampled model directly.

The G magnitude comes from ``phot_g_mean_mag``; where it is missing, from the XP spectrum
itself: G_xp = -2.5 log10(mean flux over 400..950 nm) + zero_point, the zero point fitted on
the training set (flag FLAG_G_FROM_XP).

Photometric features are colours against the same G: ``phot_bp_mean_mag - G``, ``j_m - G``...

Scaling: (value - median) / IQR per feature, both fitted on observed training values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from xptools.errors import UserError
from xptools.flags import (FLAG_FLUX_EXCESS, FLAG_G_FROM_XP, FLAG_NO_PHOTOMETRY, FLAG_NO_XP,
                           FLAG_PARTIAL_PHOTOMETRY, FLAG_PARTIAL_XP, FLUX_EXCESS_LIMIT)
from xptools.io import Table
from xptools.photometry import flux_excess_significance
from xptools.xp import (BAND_OVERLAP, BANDS, CONTINUOUS, DEFAULT_GRID, ContinuousLayout,
                        detect_layout, sampled_grid, usable_flux)

REFERENCE = "phot_g_mean_mag"
PHOTOMETRY = ("phot_bp_mean_mag", "phot_rp_mean_mag", "j_m", "h_m", "ks_m")
G_WINDOW = (400.0, 950.0)  # nm, where the XP flux stands in for the G band



@dataclass
class FeatureSpec:
    xp: str = "sampled"                      # "sampled" or "coefficients"
    wavelengths: list[float] = field(default_factory=lambda: DEFAULT_GRID[::3].tolist())
    transform: str = "log10"                 # "log10" or "linear"
    photometry: list[str] = field(default_factory=lambda: list(PHOTOMETRY))
    reference: str = REFERENCE
    zero_point: float | None = None          # fitted: G_xp = -2.5 log10(<flux>) + zero_point
    median: list[float] | None = None        # fitted scaler
    iqr: list[float] | None = None

    def __post_init__(self):
        if self.xp not in ("sampled", "coefficients"):
            raise ValueError(f"xp must be 'sampled' or 'coefficients', not {self.xp!r}")
        if self.transform not in ("log10", "linear"):
            raise ValueError(f"transform must be 'log10' or 'linear', not {self.transform!r}")
        unknown = [w for w in self.wavelengths if not np.isclose(DEFAULT_GRID, w).any()]
        if self.xp == "sampled" and unknown:
            raise ValueError(f"wavelength {unknown[0]} is not on GaiaXPy's default grid")

    @property
    def n_xp(self) -> int:
        return len(self.wavelengths) if self.xp == "sampled" else 2 * 55

    @property
    def names(self) -> list[str]:
        xp = ([f"flux_{w:g}" for w in self.wavelengths] if self.xp == "sampled"
              else [f"{b}_coeff_{i}" for b in BANDS for i in range(55)])
        return xp + [f"{p}-G" for p in self.photometry]

    def band_only(self, band: str) -> np.ndarray:
        """Which XP features (a boolean array over the first ``n_xp``) only ``band`` ("bp" or
        "rp") provides: what a source without the other band still has is the complement."""
        if self.xp == "coefficients":
            return np.arange(self.n_xp) // (self.n_xp // 2) == BANDS.index(band)
        w = np.asarray(self.wavelengths)
        return w < BAND_OVERLAP[0] if band == "bp" else w > BAND_OVERLAP[1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(**d)

    # -- raw features ---------------------------------------------------------------------

    def raw(self, chunk: Table, xp: np.ndarray, xp_error: np.ndarray | None):
        """Unscaled features (n, F) float64, their errors (n, F) or None, the observed mask
        (n, F) and input flags (n,), from a chunk and its XP values (flux on
        ``wavelengths`` or coefficients bp+rp, with errors if known)."""
        n = len(chunk)
        g, flags = self.g_magnitude(chunk, xp)
        scale = 10.0 ** (0.4 * g)[:, None]  # 1 / (G-band flux), up to a constant
        values = xp * scale
        errors = None if xp_error is None else xp_error * scale
        observed = np.isfinite(values)
        if self.xp == "sampled":  # a flux that is no spectrum at all is not observed
            observed &= usable_flux(xp)[:, None]
        if self.transform == "log10":
            observed &= values > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                if errors is not None:
                    errors = errors / (values * np.log(10.0))
                values = np.log10(values)
        xp_seen = observed.sum(axis=1)
        flags |= np.where(xp_seen == 0, FLAG_NO_XP, 0)
        flags |= np.where((xp_seen > 0) & (xp_seen < self.n_xp), FLAG_PARTIAL_XP, 0)
        flags |= np.where(np.abs(flux_excess_of(chunk)) > FLUX_EXCESS_LIMIT, FLAG_FLUX_EXCESS, 0)
        if self.photometry:
            colours = (np.stack([float_column(chunk, p, n) for p in self.photometry], 1)
                       - g[:, None])
            seen = np.isfinite(colours)
            flags |= np.where(~seen.any(axis=1), FLAG_NO_PHOTOMETRY, 0)
            flags |= np.where(seen.any(axis=1) & ~seen.all(axis=1), FLAG_PARTIAL_PHOTOMETRY, 0)
            values = np.concatenate([values, colours], axis=1)
            observed = np.concatenate([observed, seen], axis=1)
            if errors is not None:
                errors = np.concatenate([errors, np.full(colours.shape, np.nan)], axis=1)
        values = np.where(observed, values, 0.0)
        return values, errors, observed, flags

    def g_magnitude(self, chunk: Table, xp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The G magnitude (n,) that normalises each row, from ``reference`` or else from the
        XP spectrum, and the flags (n,) saying which (FLAG_G_FROM_XP)."""
        g = float_column(chunk, self.reference, len(chunk))
        missing_g = ~np.isfinite(g)
        if missing_g.any():
            g = np.where(missing_g, self.g_from_xp(xp), g)
        return g, np.where(missing_g & np.isfinite(g), FLAG_G_FROM_XP, 0).astype(np.int64)

    def g_from_xp(self, xp: np.ndarray) -> np.ndarray:
        """G from the XP flux on ``wavelengths`` (NaN without a fitted zero point)."""
        if self.zero_point is None or self.xp != "sampled":
            return np.full(len(xp), np.nan)
        window = (np.asarray(self.wavelengths) >= G_WINDOW[0]) & \
                 (np.asarray(self.wavelengths) <= G_WINDOW[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.mean(xp[:, window], axis=1)  # NaN when part of the window is missing
            return np.where(mean > 0, -2.5 * np.log10(mean) + self.zero_point, np.nan)

    # -- scaling --------------------------------------------------------------------------

    def fit_zero_point(self, chunk: Table, xp: np.ndarray) -> None:
        """Fit the zero point of G from the XP flux (`g_from_xp`) on training data."""
        if self.xp == "sampled":
            window = (np.asarray(self.wavelengths) >= G_WINDOW[0]) & \
                     (np.asarray(self.wavelengths) <= G_WINDOW[1])
            with np.errstate(invalid="ignore", divide="ignore"):
                synthetic = -2.5 * np.log10(np.mean(xp[:, window], axis=1))
            g = float_column(chunk, self.reference, len(chunk))
            ok = np.isfinite(g) & np.isfinite(synthetic)
            self.zero_point = float(np.median(g[ok] - synthetic[ok])) if ok.any() else None

    def fit(self, chunk: Table, xp: np.ndarray) -> "FeatureSpec":
        """Fit the G zero point and the scaler on training data."""
        self.fit_zero_point(chunk, xp)
        values, _, observed, _ = self.raw(chunk, xp, None)
        median, iqr = [], []
        for j in range(values.shape[1]):
            v = values[observed[:, j], j]
            if len(v) < 10:
                raise UserError(f"feature {self.names[j]!r} is observed in only {len(v)} "
                                f"training rows")
            q25, q50, q75 = np.percentile(v, [25, 50, 75])
            median.append(float(q50))
            iqr.append(float(q75 - q25) if q75 > q25 else 1.0)
        self.median, self.iqr = median, iqr
        return self

    def scale(self, values: np.ndarray, errors: np.ndarray | None = None):
        """Scaled values (and errors), float32."""
        if self.median is None:
            raise RuntimeError("FeatureSpec.fit first")
        median, iqr = np.asarray(self.median), np.asarray(self.iqr)
        scaled = ((values - median) / iqr).astype(np.float32)
        return scaled if errors is None else (scaled, (errors / iqr).astype(np.float32))

    def unscale(self, scaled: np.ndarray, errors: np.ndarray | None = None):
        """The inverse of `scale`: raw values (and errors), float64."""
        median, iqr = np.asarray(self.median), np.asarray(self.iqr)
        values = np.asarray(scaled, np.float64) * iqr + median
        return values if errors is None else (values, np.asarray(errors, np.float64) * iqr)


GAIA_MAGNITUDES = ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag")


def flux_excess_of(chunk: Table) -> np.ndarray:
    """C* / sigma_C*(G) of each row (`xptools.photometry`) from its G, BP and RP magnitudes;
    NaN where one is missing."""
    return flux_excess_significance(*(float_column(chunk, c, len(chunk)) for c in GAIA_MAGNITUDES))


def float_column(chunk: Table, name: str, n: int) -> np.ndarray:
    """A column as float64 with NaN for nulls (and all NaN when the chunk has none)."""
    if name not in chunk:
        return np.full(n, np.nan)
    data = np.asarray(chunk[name], dtype=np.float64)
    null = chunk.info[name].null
    if null is not None:
        data = np.where(chunk[name] == null, np.nan, data)
    return data


class XPSource:
    """XP values for a FeatureSpec from whatever a table holds (sampled or continuous).

    Sampled input must contain the spec's wavelengths; continuous input is sampled on GaiaXPy's
    default grid (flux only: the model needs no propagated errors) or, for a coefficient spec,
    used as is.
    """

    def __init__(self, schema: Table, name: str, spec: FeatureSpec, with_errors: bool = False):
        self.spec, self.name, self.with_errors = spec, name, with_errors
        self.kind = detect_layout(schema)
        if self.kind is None:
            raise UserError(f"{name}: no XP spectra (expected a flux column, or "
                            f"bp_coefficients/rp_coefficients, bp_coeff_0.. columns, or "
                            f"coeff/coeff_error)")
        self._sampler = None
        if self.kind in CONTINUOUS:
            self.layout = ContinuousLayout(schema, name, why_both="models read both bands' "
                                           "columns (a source without one has nulls there)")
            if spec.xp == "sampled":
                from xptools.basis import load_basis
                from xptools.sampling import Sampler

                self._sampler = Sampler(load_basis(), errors=with_errors)
                self._index = _grid_index(DEFAULT_GRID, spec.wavelengths, name)
        elif spec.xp == "coefficients":
            raise UserError(f"{name}: this model needs XP coefficients, the table has sampled "
                            f"spectra")
        self._grid = None

    @property
    def consumed(self) -> list[str]:
        return self.layout.consumed if self._sampler is not None or self.kind != "sampled" else []

    def __call__(self, chunk: Table):
        """(values, errors or None) for the chunk: flux on the spec's grid or coefficients."""
        if self.kind == "sampled":
            if self._grid is None and len(chunk):
                self._grid = sampled_grid(chunk, self.name)
                self._index = _grid_index(self._grid, self.spec.wavelengths, self.name)
            if not len(chunk):
                return np.zeros((0, self.spec.n_xp)), None
            # pick the model's samples before converting: a fraction of the copying
            flux = chunk["flux"][:, self._index].astype(np.float64)
            error = (chunk["flux_error"][:, self._index].astype(np.float64)
                     if self.with_errors and "flux_error" in chunk else None)
            return flux, error
        bands = {b: self.layout.band(chunk, b) for b in BANDS}
        if self._sampler is not None:
            out = self._sampler.sample(bands)
            flux = out["flux"][:, self._index]
            return flux, out["flux_error"][:, self._index] if self.with_errors else None
        n = len(chunk)
        values = np.full((n, 110), np.nan)
        errors = np.full((n, 110), np.nan)
        for i, b in enumerate(BANDS):
            if bands[b] is not None:
                use = bands[b].usable
                values[use, 55 * i:55 * (i + 1)] = bands[b].coefficients[use]
                errors[use, 55 * i:55 * (i + 1)] = bands[b].errors[use]
        return values, errors if self.with_errors else None


def _grid_index(grid: np.ndarray, wavelengths: list[float], name: str) -> np.ndarray:
    index = np.array([int(np.argmin(np.abs(grid - w))) for w in wavelengths])
    if not np.allclose(grid[index], wavelengths, atol=1e-6):
        bad = next(w for w, i in zip(wavelengths, index) if abs(grid[i] - w) > 1e-6)
        raise UserError(f"{name}: the spectra are sampled on {grid[0]:g}..{grid[-1]:g} nm "
                        f"({len(grid)} samples) without {bad:g} nm, which the model needs; "
                        f"use spectra on GaiaXPy's default grid (xptools sample without --grid)")
    return index


def label_array(table: Table, labels: list[str], name: str) -> np.ndarray:
    """(n, L) float64 labels with NaN where unknown; a missing label column is an error."""
    missing = [l for l in labels if l not in table]
    if missing:
        raise UserError(f"{name}: no label column {missing[0]!r} (columns: "
                        f"{', '.join(table.colnames[:12])}{', ...' if len(table.colnames) > 12 else ''})")
    return np.stack([float_column(table, l, len(table)) for l in labels], axis=1)


def monitor_split(table: Table, fraction: float, seed: int) -> np.ndarray:
    """A fixed subset of rows (about ``fraction``) held out of training for early stopping:
    chosen by a hash of source_id when there is one, so it does not depend on row order."""
    n = len(table)
    if "source_id" in table:
        ids = np.asarray(table["source_id"], dtype=np.uint64)
        mixed = (ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)) >> np.uint64(40)
        return (mixed.astype(np.float64) / float(1 << 24)) < fraction
    return np.random.default_rng(seed).random(n) < fraction
