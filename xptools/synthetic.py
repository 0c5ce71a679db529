"""Synthetic photometry from XP coefficients: GaiaXPy's ``generate``, vectorised and streamed
(`xptools photometry`, docs/photometry.md).

(The name keeps the house clear: `xptools.photometry` is the Gaia G/BP/RP flux excess C* the
models use; this module makes *synthetic* photometry in other systems.)

A photometric system is a set of J bands. GaiaXPy describes each by a (55, J) matrix D_band
per XP band (the basis functions integrated over the passband: ``XpSampling``), merge weights
w_band (J,) (``XpMerge``), zero points ZP (J,) and, for a standardised (``_Std``) system,
flux offsets b (J,) (``fluxBias``). For one source with both BP and RP (c, s, rho as in
`xptools.sampling`), band j of a system gets

    f_j       = sum_band w_band,j sum_k c_k D_band,kj                                    (1)
    sigma_j^2 = sum_band w_band,j^2 sum_kl D_band,kj rho_kl s_k s_l D_band,lj             (2)

i.e. `xptools.sampling`'s Eqs. (1) and (3) with the merged design matrix w D and the bands of
the system as the "samples"; the Sampler computes them, for all requested systems at once.
GaiaXPy then, in this order (each step as in its code, vectorised):

    standardised systems:  f' = f + b,  sigma' = sigma |f' / f|                         (3)
    magnitude:             m = -2.5 log10 f' + ZP,  NaN where f' <= 0                   (4)
    colour equation (JKC_Std U from B - V, SDSS_Std u from g - i; P a polynomial, used
    inside its colour range and continued linearly beyond):
        m_U' = m_U + P(x),   x = m_B - m_V                                              (5)
        sigma_m' = sqrt(sigma_mU^2 + (sigma_x |P'(x)|)^2),  sigma_m = 2.5 sigma / (f ln 10)
        f_U' = 10^(-0.4 (m_U' - ZP_U)),  sigma_U' = sigma_m' f_U' ln 10 / 2.5
    --error-correction:    sigma'' = sigma' k(G)                                        (6)
        k: the Montegriffo et al. (2022) factors per band, tabulated in 1-mag bins of G,
        interpolated as GaiaXPy does; G is the synthetic Gaia_DR3_Vega G magnitude.

A source without BP or RP gets NaN everywhere, as in GaiaXPy (which makes no photometry from
one band).

Where the numbers come from (GaiaXPy's installed package, read once per GaiaXPy version and
cached in $XPTOOLS_CACHE beside the sampling bases, so later runs do not import GaiaXPy):

- public API: ``gaiaxpy.PhotometricSystem`` (the systems, their names, bands, zero points
  and offsets through its ``get_*`` methods) and, on each member's ``.value`` (the filter
  object GaiaXPy's own ``generate`` uses), ``load_xpsampling_from_xml()`` and
  ``load_xpmerge_from_xml()``: the design matrices and merge weights. No private import.
- private paths (no public accessor exists): the colour equations,
  ``gaiaxpy/config/colour_eq_files/<label>_colour_eq.ini``, and the error-correction tables,
  ``gaiaxpy/config/correction_tables/DIDREQ-465-<label>-correction-factors.csv``, read as
  package data (`importlib.resources`), the files GaiaXPy's own functions read.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import math
import time
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from xptools import flags
from xptools.basis import Basis, cached_arrays, silenced
from xptools.errors import UserError
from xptools.io import InputTable, TableWriter
from xptools.progress import print_warning, progress
from xptools.provenance import stamp
from xptools.sampling import InputChecks, Sampler
from xptools.xp import BANDS, N_COEFFICIENTS, ContinuousLayout

CACHE_FORMAT = 1
GAIA = "Gaia_DR3_Vega"   # the system whose synthetic G picks the error-correction factors
FITS_MAX_COLUMNS = 999   # the FITS standard's limit (TFIELDS)
AB_ZERO_POINT = -56.10   # 2.5 log10(3631 Jy in W m-2 Hz-1): AB magnitudes of f_nu
# photometry_flag (xptools.flags): bits 1 and 2 are the Sampler's sample_flag
FLAG_NO_BP, FLAG_NO_RP = flags.PHOTOMETRY_NO_BP, flags.PHOTOMETRY_NO_RP
FLAG_NO_MAGNITUDE = flags.PHOTOMETRY_NO_MAGNITUDE


@dataclass(frozen=True)
class ColourEquation:
    band: str                      # the band it corrects (U, u)
    colour: tuple[str, str]        # the colour index it needs, (B, V) for B - V
    polynomial: np.ndarray         # coefficients, highest power first (numpy.poly1d's order)
    colour_range: tuple[float, float]

    def correct(self, bands: list[str], zero_points, flux, error, mag) -> None:
        """Eq. (5) on one system's columns (n, J), in place, as GaiaXPy's colour equation."""
        i, a, b = (bands.index(x) for x in (self.band, *self.colour))
        ln10 = math.log(10)

        def mag_error(j):
            return 2.5 * error[:, j] / (flux[:, j] * ln10)

        poly = np.poly1d(self.polynomial)
        slope = poly.deriv()
        low, high = min(self.colour_range), max(self.colour_range)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            colour = mag[:, a] - mag[:, b]
            limit = np.clip(colour, low, high)     # NaN stays NaN
            inside = (colour >= low) & (colour <= high)
            correction = np.where(inside, poly(colour),
                                  poly(limit) + slope(limit) * (colour - limit))
            corrected = mag[:, i] + correction
            colour_error = np.sqrt(mag_error(a) ** 2 + mag_error(b) ** 2)
            total = np.sqrt(mag_error(i) ** 2 + (colour_error * np.abs(slope(colour))) ** 2)
            new_flux = 10 ** (-0.4 * (corrected - zero_points[i]))
            error[:, i] = total * new_flux * ln10 / 2.5
        flux[:, i] = new_flux
        mag[:, i] = corrected


@dataclass(frozen=True)
class ErrorCorrection:
    """The Montegriffo et al. (2022) error-inflation factors of one system: rows of 1-mag G
    bins [low, high), one column per band."""

    low: np.ndarray       # (bins,)
    high: np.ndarray      # (bins,)
    factors: np.ndarray   # (bins, J)

    def at(self, g: np.ndarray) -> np.ndarray:
        """The factors (n, J) for synthetic G magnitudes g (n,), as GaiaXPy picks them: the
        last bin's beyond the table or for NaN G, the first bin's before it; inside a bin its
        own factors up to the bin centre, then linear towards the next bin's factors at the
        bin's upper edge."""
        g = np.asarray(g, dtype=np.float64)
        out = np.empty((len(g), self.factors.shape[1]))
        with np.errstate(invalid="ignore"):
            last = np.isnan(g) | (g > self.high[-1])
            first = ~last & (g < self.low[0])
            floor = np.floor(g)
        out[last] = self.factors[-1]
        out[first] = self.factors[0]
        rest = np.flatnonzero(~last & ~first)
        # GaiaXPy picks the bin whose lower edge is floor(G) (G at the table's very end has
        # none: it would stop there; the last bin's factors are the continuous value)
        rows = self._bin_starting_at(floor[rest])
        rows[rows < 0] = len(self.low) - 1
        centre = (self.low + self.high) / 2
        nxt = self._bin_starting_at(self.high)  # the next bin, -1 for none
        x = g[rest]
        own = self.factors[rows]
        up = (x > centre[rows]) & (x < self.high[rows]) & (nxt[rows] >= 0)
        # scipy's interp1d (GaiaXPy's) between (centre, own) and (high, next bin's)
        r = rows[up]
        x_lo, x_hi = centre[r], self.high[r]
        slope = (self.factors[nxt[r]] - self.factors[r]) / (x_hi - x_lo)[:, None]
        own[up] = slope * (x[up] - x_lo)[:, None] + self.factors[r]
        out[rest] = own
        return out

    def _bin_starting_at(self, values: np.ndarray) -> np.ndarray:
        """The row whose lower edge equals each value, or -1."""
        order = np.argsort(self.low, kind="stable")
        lows = self.low[order]
        at = np.clip(np.searchsorted(lows, values), 0, len(lows) - 1)
        return np.where(lows[at] == values, order[at], -1)


@dataclass(frozen=True, eq=False)
class System:
    """One of GaiaXPy's photometric systems."""

    name: str                      # GaiaXPy's name, e.g. JKC_Std
    label: str                     # GaiaXPy's column prefix, e.g. JkcStd
    bands: tuple[str, ...]
    zero_points: np.ndarray        # (J,) mag
    offsets: np.ndarray            # (J,) flux offsets b of Eq. (3)
    standardised: bool
    wavelengths: np.ndarray        # (J,) nm, GaiaXPy's mean wavelength of each band
    design: dict[str, np.ndarray]  # band -> w D, (55, J), Eqs. (1) and (2)
    colour_equation: ColourEquation | None
    correction: ErrorCorrection | None

    @property
    def ab(self) -> bool:
        return bool(np.all(np.abs(self.zero_points - AB_ZERO_POINT) < 1.0))

    @property
    def unit(self) -> str:
        """GaiaXPy's flux unit: f_nu for AB systems, f_lambda for Vega systems (GaiaXPy names
        none; its zero points say which)."""
        return "W m-2 Hz-1" if self.ab else "W m-2 nm-1"

    def columns(self, kind: str) -> list[str]:
        """GaiaXPy's column names: <label>_mag_<band>, _flux_, _flux_error_."""
        return [f"{self.label}_{kind}_{band}" for band in self.bands]

    def finish(self, flux: np.ndarray, error: np.ndarray, g: np.ndarray | None):
        """Eqs. (3) to (6) on this system's flux and error (n, J): flux, error, magnitude."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.standardised:
                raw = flux
                flux = raw + self.offsets
                error = error * np.abs(flux / raw)
            mag = np.where(flux > 0, -2.5 * np.log10(flux) + self.zero_points, np.nan)
        flux, error = np.array(flux), np.array(error)  # own copies, corrected in place
        if self.colour_equation is not None:
            self.colour_equation.correct(list(self.bands), self.zero_points, flux, error, mag)
        if g is not None and self.correction is not None:
            error *= self.correction.at(g)
        return flux, error, mag


# -- the systems, from GaiaXPy once, then from the cache --------------------------------------

def _key() -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}|gaiaxpy={version('GaiaXPy')}|photometry".encode())
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def load_systems() -> dict[str, System]:
    """Every photometric system GaiaXPy ships, by GaiaXPy's name, in its order."""
    arrays = cached_arrays(f"photometry-{_key()}.npz", _from_gaiaxpy)
    systems = {}
    for name in arrays["names"].tolist():
        a = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}
        colour = None
        if "colour_polynomial" in a:
            colour = ColourEquation(str(a["colour_band"]), tuple(a["colour_index"].tolist()),
                                    a["colour_polynomial"], tuple(a["colour_range"].tolist()))
        correction = None
        if "correction_factors" in a:
            correction = ErrorCorrection(a["correction_low"], a["correction_high"],
                                         a["correction_factors"])
        systems[name] = System(name, str(a["label"]), tuple(a["bands"].tolist()),
                               a["zero_points"], a["offsets"], bool(a["standardised"]),
                               a["wavelengths"], {b: a[f"design_{b}"] for b in BANDS},
                               colour, correction)
    return systems


def _from_gaiaxpy() -> dict[str, np.ndarray]:
    import sys

    if sys.stderr.isatty():
        print("xptools: reading GaiaXPy's photometric systems (cached for next time)",
              file=sys.stderr)
    with silenced():
        from gaiaxpy import PhotometricSystem

        members = list(PhotometricSystem)
        out: dict[str, np.ndarray] = {"names": np.array([m.name for m in members])}
        for member in members:
            filters = member.value  # the filter object GaiaXPy's generate uses
            sampling = filters.load_xpsampling_from_xml()            # band -> D, (55, J)
            wavelengths, weights = filters.load_xpmerge_from_xml()   # (J,), band -> w (J,)
            label = member.get_system_label()
            bands = list(member.get_bands())
            p = member.name + "."
            out[p + "label"] = np.array(label)
            out[p + "bands"] = np.array(bands)
            out[p + "zero_points"] = np.asarray(member.get_zero_points(), np.float64)
            out[p + "offsets"] = np.asarray(member.get_offsets(), np.float64)
            out[p + "standardised"] = np.array(type(filters).__name__.startswith("Standard"))
            out[p + "wavelengths"] = np.asarray(wavelengths, np.float64)
            for band in BANDS:
                d = np.asarray(sampling[band], np.float64)
                if d.shape != (N_COEFFICIENTS, len(bands)):
                    raise UserError(f"GaiaXPy's {member.name}: {band.upper()} design matrix "
                                    f"of shape {d.shape}, expected ({N_COEFFICIENTS}, "
                                    f"{len(bands)})")
                out[p + f"design_{band}"] = d * np.asarray(weights[band], np.float64)[None]
            out.update({p + k: v for k, v in _colour_equation(label).items()})
            out.update({p + k: v for k, v in _correction_table(label, bands).items()})
    return out


def _package_file(*parts: str):
    """A file of GaiaXPy's package data (a private path: GaiaXPy has no accessor for it)."""
    from importlib.resources import files

    return files("gaiaxpy").joinpath("config", *parts)


def _colour_equation(label: str) -> dict[str, np.ndarray]:
    """The colour equation of a system, as GaiaXPy's colour_equation module reads it."""
    from ast import literal_eval
    from configparser import ConfigParser

    path = _package_file("colour_eq_files", f"{label}_colour_eq.ini")
    if not path.is_file():
        return {}
    parser = ConfigParser()
    parser.read_string(path.read_text())
    band = parser.get(label, "FILTER")
    colour = parser.get(label, "COLOUR_INDEX").split("-")
    # reversed: the coefficients were written lowest power first (for Java)
    polynomial = list(literal_eval(parser.get(label, "POLY_COEFFICIENTS")))[::-1]
    return {"colour_band": np.array(band), "colour_index": np.array(colour),
            "colour_polynomial": np.array(polynomial, np.float64),
            "colour_range": np.array(literal_eval(parser.get(label, "COLOUR_RANGE")),
                                     np.float64)}


def _correction_table(label: str, bands: list[str]) -> dict[str, np.ndarray]:
    """The error-correction table of a system, if GaiaXPy has one."""
    import csv

    path = _package_file("correction_tables", f"DIDREQ-465-{label}-correction-factors.csv")
    if not path.is_file():
        return {}
    rows = list(csv.reader(path.read_text().splitlines()))
    header, values = rows[0], np.array([[float(v) for v in r] for r in rows[1:] if r])
    factors = [i for i, h in enumerate(header) if "factor_" in h]
    if len(factors) != len(bands):
        raise UserError(f"GaiaXPy's error-correction table of {label} has {len(factors)} "
                        f"bands, the system {len(bands)}")
    return {"correction_low": values[:, header.index("min_Gmag_bin")],
            "correction_high": values[:, header.index("max_Gmag_bin")],
            "correction_factors": values[:, factors]}


def find_systems(names: list[str]) -> list[System]:
    """GaiaXPy's systems by name (any case; the column label, e.g. SdssStd, works too), each
    once, in the order given."""
    systems = load_systems()
    known = {**{s.label.lower(): s for s in systems.values()},
             **{s.name.lower(): s for s in systems.values()}}
    found: list[System] = []
    for given in names:
        system = known.get(given.strip().lower())
        if system is None:
            close = difflib.get_close_matches(given.strip().lower(), list(known), n=3,
                                              cutoff=0.6)
            close = list(dict.fromkeys(known[c].name for c in close))
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UserError(f"--system {given.strip()!r}: no such photometric system{hint}; "
                            f"'xptools photometry --list' lists them")
        if all(s.name != system.name for s in found):
            found.append(system)
    if not found:
        raise UserError("--system: give at least one photometric system, e.g. JKC_Std "
                        "('xptools photometry --list' lists them)")
    return found


def describe_systems() -> str:
    """The --list text: one line per system with its bands, then what the columns mean."""
    systems = list(load_systems().values())
    lines = [f"{'system':<18} {'columns':<17} {'mag':<5} {'flux unit':<11} {'std':<4} "
             f"{'ecorr':<6} bands"]
    for s in systems:
        lines.append(f"{s.name:<18} {s.label + '_*':<17} {'AB' if s.ab else 'Vega':<5} "
                     f"{s.unit:<11} {'yes' if s.standardised else '-':<4} "
                     f"{'yes' if s.correction is not None else '-':<6} {' '.join(s.bands)}")
    colour = [f"{s.name} {s.colour_equation.band} in "
              f"{s.colour_equation.colour[0]}-{s.colour_equation.colour[1]}"
              for s in systems if s.colour_equation is not None]
    lines += ["", "columns: <label>_mag_<band> (mag), <label>_flux_<band> and "
              "<label>_flux_error_<band> (flux unit)",
              "std: standardised (flux offsets; colour equations for "
              + ", ".join(colour) + ")",
              "ecorr: --error-correction has a table for it (others keep their errors)"]
    return "\n".join(lines) + "\n"


# -- the computation ---------------------------------------------------------------------------

class Photometer:
    """Synthetic photometry of chunks of sources in a list of systems, all at once: one
    Sampler over the bands of every system (plus Gaia_DR3_Vega's G for the error correction),
    so the per-source weights of Eq. (2) are built once."""

    def __init__(self, systems: list[System], *, truncate: bool = False,
                 error_correction: bool = False, threads: int | None = None):
        self.systems = list(systems)
        self.error_correction = error_correction
        needed = list(self.systems)
        if error_correction and all(s.name != GAIA for s in needed):
            needed.append(load_systems()[GAIA])
        self._spans: dict[str, slice] = {}
        start = 0
        for s in needed:
            self._spans[s.name] = slice(start, start + len(s.bands))
            start += len(s.bands)
        self._gaia = load_systems()[GAIA] if error_correction else None
        merged = {b: np.ascontiguousarray(np.hstack([s.design[b] for s in needed]))
                  for b in BANDS}
        grid = np.concatenate([s.wavelengths for s in needed])
        self.sampler = Sampler(Basis(grid, False, merged, {}, {}), BANDS, truncate,
                               threads=threads)
        self.seconds = 0.0

    def columns(self) -> list[tuple[str, str, str]]:
        """(name, unit, description) of the output columns, in GaiaXPy's order (per system:
        magnitudes, fluxes, flux errors), then photometry_flag."""
        out = []
        for s in self.systems:
            kind = "AB" if s.ab else "Vega"
            for name, band in zip(s.columns("mag"), s.bands):
                out.append((name, "mag", f"{s.name} {band} synthetic magnitude ({kind})"))
            for name, band in zip(s.columns("flux"), s.bands):
                out.append((name, s.unit, f"{s.name} {band} synthetic flux"))
            for name, band in zip(s.columns("flux_error"), s.bands):
                out.append((name, s.unit, f"{s.name} {band} synthetic flux error"
                            + (" (error-corrected)" if self.error_correction
                               and s.correction is not None else "")))
        out.append(("photometry_flag", "", flags.description("photometry")))
        return out

    def compute(self, spectra: dict, advance=None) -> dict[str, np.ndarray]:
        """The output columns for one chunk; ``spectra`` maps 'bp'/'rp' to its Bands."""
        sampled = self.sampler.sample(spectra, advance=advance)
        start = time.perf_counter()
        flux, error = sampled["flux"], sampled["flux_error"]
        g = None
        if self._gaia is not None:
            span = self._spans[GAIA]
            g = self._gaia.finish(flux[:, span], error[:, span], None)[2][:, 0]
        out: dict[str, np.ndarray] = {}
        no_magnitude = np.zeros(len(flux), bool)
        for s in self.systems:
            span = self._spans[s.name]
            f, e, m = s.finish(flux[:, span], error[:, span], g)
            for kind, values in (("mag", m), ("flux", f), ("flux_error", e)):
                for j, name in enumerate(s.columns(kind)):
                    out[name] = values[:, j]
            no_magnitude |= np.isnan(m).any(axis=1)
        both = sampled["sample_flag"] == 0
        out["photometry_flag"] = (sampled["sample_flag"].astype(np.int16)
                                  | np.where(both & no_magnitude, FLAG_NO_MAGNITUDE, 0)
                                  ).astype(np.int16)
        self.seconds += time.perf_counter() - start
        return out


def gaiaxpy_input(table, name: str = "table"):
    """GaiaXPy's input DataFrame holding the numbers xptools reads from ``table`` (float64):
    coefficients, errors, correlations (none: zeros, i.e. unit correlation matrices), standard
    deviation (none: 1) and n_relevant_bases; a band xptools finds missing is a null cell, as
    GaiaXPy reads an archive null. For cross-checks against ``gaiaxpy.generate`` (tests,
    benchmarks/bench_photometry_exactness.py), also of layouts GaiaXPy does not read."""
    import pandas as pd

    layout = ContinuousLayout(table, name)
    frame: dict[str, object] = {"source_id": np.asarray(table["source_id"], np.int64)}
    for band in BANDS:
        b = layout.band(table, band)
        missing = ~b.usable
        sd = (np.asarray(table[f"{band}_standard_deviation"], np.float64)
              if f"{band}_standard_deviation" in table else np.ones(len(table)))
        correlations = (np.asarray(b.correlations, np.float64) if b.correlations is not None
                        else np.zeros((len(table), N_COEFFICIENTS * (N_COEFFICIENTS - 1) // 2)))
        frame[f"{band}_n_parameters"] = np.where(missing, np.nan, float(N_COEFFICIENTS))
        frame[f"{band}_standard_deviation"] = np.where(missing, np.nan, sd)
        for key, values in (("coefficients", b.coefficients), ("coefficient_errors", b.errors),
                            ("coefficient_correlations", correlations)):
            frame[f"{band}_{key}"] = [np.nan if m else v for m, v in zip(missing, values)]
        frame[f"{band}_n_relevant_bases"] = (b.n_relevant_bases if b.n_relevant_bases is not None
                                             else np.zeros(len(table), np.int64))
    return pd.DataFrame(frame)


# -- the pipeline ------------------------------------------------------------------------------

def prepare(systems: list[str], error_correction: bool = False, truncate: bool = False,
            strict: bool = False, drop_coefficients: bool = False,
            chunk_rows: int | None = None):
    """`xptools photometry` as a job (`xptools.scale`): the systems read once, then
    ``run(src, out, quiet, warn)`` per table."""
    found = find_systems(systems)

    def run(src, out, quiet, warn) -> dict:
        run_photometry(src, out, found, error_correction=error_correction, truncate=truncate,
                       strict=strict, drop_coefficients=drop_coefficients,
                       chunk_rows=chunk_rows, quiet=quiet, warn=warn)
        return {}
    return run


def run_photometry(src: InputTable, out: TableWriter, systems: list[System], *,
                   error_correction: bool = False, truncate: bool = False,
                   strict: bool = False, drop_coefficients: bool = False,
                   chunk_rows: int | None = None, quiet: bool = False,
                   warn=print_warning) -> Photometer:
    """Stream a continuous-spectra table into ``out`` with synthetic photometry added."""
    layout = ContinuousLayout(src.schema, src.name, BANDS,
                              why_both="synthetic photometry needs both BP and RP")
    if truncate and not layout.has_column("n_relevant_bases"):
        raise UserError(f"{src.name}: --truncate needs bp/rp_n_relevant_bases columns")
    photometer = Photometer(systems, truncate=truncate, error_correction=error_correction)
    chunk_rows = chunk_rows or 5_000  # smaller chunks start and finish the pipeline sooner
    # an earlier run's photometry_flag (more systems added in a pipeline) is combined with
    # this run's, not a clash
    earlier_flag = "photometry_flag" in src.schema
    passthrough = [c for c in src.schema.colnames if c != "photometry_flag"
                   and not (drop_coefficients and c in layout.consumed)]
    new = photometer.columns()
    clash = [name for name, _, _ in new if name in passthrough]
    if clash:
        raise UserError(f"{src.name}: already has a column {clash[0]!r}; drop or rename it first")
    width = len(passthrough) + len(new)
    if out.format == "fits" and width > FITS_MAX_COLUMNS:
        raise UserError(f"the output would have {width} columns, FITS holds at most "
                        f"{FITS_MAX_COLUMNS}: write HDF5 (-o OUT.h5), ask for fewer systems"
                        + ("" if drop_coefficients else ", or --drop-coefficients"))
    names = [s.name for s in systems]
    if earlier_flag:  # the systems of the earlier run too: XPPHOTSY lists what the table has
        earlier = str(src.schema.meta.get("XPPHOTSY", "")).split(",")
        names = [n for n in earlier if n and n not in names] + names
    keywords = {"XPPHOTSY": ",".join(names),
                "XPERRINF": bool(error_correction), "XPTRUNC": bool(truncate),
                "XPERRCOR": "full" if layout.has_correlations else "diagonal",
                "GAIAXPY": version("GaiaXPy")}
    flagged = no_magnitude = offset = 0
    checks = InputChecks(src.name, layout, strict)
    with progress(src.nrows, "photometry", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            spectra = {b: layout.band(chunk, b) for b in BANDS}
            checks.check(spectra, offset)
            table = stamp(chunk.select(passthrough), keywords)
            columns = photometer.compute(spectra, advance=bar.update)
            if earlier_flag:
                with np.errstate(invalid="ignore"):  # text formats: NaN for none
                    earlier = np.asarray(chunk["photometry_flag"], np.float64)
                    earlier = np.where(earlier > 0, earlier, 0).astype(np.int16)
                columns["photometry_flag"] = columns["photometry_flag"] | earlier
            if not layout.has_correlations:
                columns["photometry_flag"] = (columns["photometry_flag"]
                                              | np.int16(flags.PHOTOMETRY_DIAGONAL))
            for name, unit, description in new:
                table.add_column(name, columns[name], unit=unit or None,
                                 description=description)
            flag = columns["photometry_flag"]
            flagged += int(np.count_nonzero(flag & (FLAG_NO_BP | FLAG_NO_RP)))
            no_magnitude += int(np.count_nonzero(flag & FLAG_NO_MAGNITUDE))
            out.write(table)
            offset += len(chunk)
    checks.report(warn)
    if error_correction:
        for s in systems:
            if s.correction is None:
                warn(f"GaiaXPy has no error-correction table for {s.name}: its flux errors "
                     f"are not corrected (as GaiaXPy)")
    if flagged:
        warn(f"{flagged} of {offset} rows lack a usable BP or RP spectrum: NaN photometry, "
             f"see photometry_flag")
    if no_magnitude:
        warn(f"{no_magnitude} of {offset} rows have a band with zero or negative flux: NaN "
             f"magnitude there, see photometry_flag")
    return photometer
