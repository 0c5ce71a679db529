"""XP coefficients -> sampled spectra with errors (and covariance): GaiaXPy's calibrate/convert,
vectorised over chunks of sources.

For a band with coefficients c (55), coefficient errors s (55), correlations rho (55 x 55, unit
diagonal) and design matrix D (55 x M) from `xptools.basis`:

    flux_m     = sum_k c_k D_km                                                       (1)
    C_kl       = rho_kl s_k s_l                 (coefficient covariance)               (2)
    sigma_m^2  = sum_kl D_km C_kl D_lm
               = sum_k s_k^2 D_km^2 + 2 sum_{k>l} rho_kl s_k s_l D_km D_lm             (3)
    Cov_mn     = sum_kl D_km C_kl D_ln                                                  (4)

GaiaXPy scales the archive errors by 1/standard_deviation to build C and multiplies sigma back
by standard_deviation, which cancels; (3) is what it computes. (3) is evaluated as one matrix
product per chunk: the weights q = [s_k^2, rho_kl s_k s_l] (1540 per source) times the fixed
pair products P = [D_km^2, 2 D_km D_lm] (1540 x M), computed once per grid. That is half the
arithmetic of forming D^T C D per source, and it runs at BLAS speed.

Absolute spectra merge the bands: flux = c_bp D'_bp + c_rp D'_rp with D' = w D (w the merge
weights in the overlap), so sigma^2 adds up the two bands' (3) with D'. A source with one band
missing gets that band alone, unweighted, NaN beyond its range (as GaiaXPy). The covariance (4)
of merged spectra is Cov_bp' + Cov_rp' with D' = w D, which is the covariance of the merged
flux; GaiaXPy instead scales Cov by w along one axis only, so its diagonal disagrees with its
own flux_error. ``--truncate`` uses only the first n_relevant_bases coefficients (c_k, s_k = 0
beyond), as GaiaXPy's truncation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from xptools.basis import Basis, load_basis
from xptools.errors import UserError
from xptools.io import InputTable, TableWriter
from xptools.progress import progress, print_warning
from xptools.provenance import stamp
from xptools.xp import BANDS, N_COEFFICIENTS, Band, ContinuousLayout, grid_keywords

_I, _J = np.tril_indices(N_COEFFICIENTS, -1)  # the archive's packing of correlations

FLAG_NO_BP = 1
FLAG_NO_RP = 2


def pair_products(design: np.ndarray) -> np.ndarray:
    """P = [D_km^2 ; 2 D_km D_lm (k > l)], (1540, M): the fixed factor of Eq. (3)."""
    return np.concatenate([design * design, 2.0 * design[_I] * design[_J]])


def variance_weights(errors: np.ndarray, correlations: np.ndarray | None) -> np.ndarray:
    """q = [s_k^2 ; rho_kl s_k s_l (k > l)] per source: the per-source factor of Eq. (3)."""
    squares = errors * errors
    if correlations is None:
        return squares
    off = correlations * errors[:, _I]
    off *= errors[:, _J]
    return np.concatenate([squares, off], axis=1)


def correlation_matrices(correlations: np.ndarray | None, n: int) -> np.ndarray:
    """Full (n, 55, 55) correlation matrices from the packed lower triangles (identity if None)."""
    rho = np.zeros((n, N_COEFFICIENTS, N_COEFFICIENTS))
    rho[:, np.arange(N_COEFFICIENTS), np.arange(N_COEFFICIENTS)] = 1.0
    if correlations is not None:
        rho[:, _I, _J] = correlations
        rho[:, _J, _I] = correlations
    return rho


@dataclass
class _Prepared:
    coefficients: np.ndarray   # c, truncated if asked
    weights: np.ndarray        # q of Eq. (3)
    band: Band                 # errors and correlations (for Eq. 4), usable rows


class Sampler:
    """Samples chunks of XP continuous spectra on one grid (absolute or internal)."""

    def __init__(self, basis: Basis, bands: tuple[str, ...] = BANDS, truncate: bool = False,
                 covariance: bool = False):
        self.basis = basis
        self.bands = bands
        self.truncate = truncate
        self.covariance = covariance
        if basis.internal:
            self._designs = {("design", b): m for b, m in basis.design.items()}
        else:
            self._designs = {**{("merged", b): m for b, m in basis.merged.items()},
                             **{("alone", b): m for b, m in basis.alone.items()}}
        self._pairs = {key: pair_products(m) for key, m in self._designs.items()}
        self.flops = 0.0      # useful arithmetic done (matrix products), for the benchmark
        self.seconds = 0.0    # time spent computing (not reading or writing)

    @property
    def n_samples(self) -> int:
        return len(self.basis.grid)

    def _prepare(self, band: Band) -> _Prepared:
        c, s = band.coefficients, band.errors
        if self.truncate and band.n_relevant_bases is not None:
            n = np.where(band.n_relevant_bases > 0, band.n_relevant_bases, N_COEFFICIENTS)
            keep = np.arange(N_COEFFICIENTS)[None, :] < n[:, None]
            c, s = np.where(keep, c, 0.0), np.where(keep, s, 0.0)
            band = Band(c, s, band.correlations, band.n_relevant_bases, band.usable, band.corrupt)
        return _Prepared(c, variance_weights(s, band.correlations), band)

    def _product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.flops += 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
        return a @ b

    def _sum_bands(self, parts: list[tuple[_Prepared, tuple]], rows):
        """Flux (1), variance (3) and, if asked, covariance (4) of the rows, summed over bands."""
        flux = var = cov = None
        for p, key in parts:
            design, pairs = self._designs[key], self._pairs[key]
            f = self._product(p.coefficients[rows], design)
            v = self._product(p.weights[rows], pairs[: p.weights.shape[1]])
            flux = f if flux is None else flux + f
            var = v if var is None else var + v
            if self.covariance:
                g = p.band.errors[rows][:, :, None] * design[None]   # s_k D_km
                corr = None if p.band.correlations is None else p.band.correlations[rows]
                k = np.transpose(g, (0, 2, 1)) @ (correlation_matrices(corr, len(g)) @ g)
                cov = k if cov is None else cov + k
        return flux, var, cov

    def sample(self, bands: dict[str, Band | None]) -> dict[str, np.ndarray]:
        """Output columns for one chunk; ``bands`` maps 'bp'/'rp' to the chunk's spectra."""
        start = time.perf_counter()
        n = len(next(b for b in bands.values() if b is not None).usable)
        present = {b: bands[b].usable if bands.get(b) is not None else np.zeros(n, bool)
                   for b in BANDS}
        prepared = {b: self._prepare(bands[b]) for b in self.bands if bands.get(b) is not None}
        if self.basis.internal:
            groups = [(b, present[b], [(b, ("design", b))]) for b in self.bands]
        else:
            use = {b: present[b] if b in prepared else np.zeros(n, bool) for b in BANDS}
            groups = [("", use["bp"] & use["rp"], [("bp", ("merged", "bp")),
                                                   ("rp", ("merged", "rp"))]),
                      ("", use["bp"] & ~use["rp"], [("bp", ("alone", "bp"))]),
                      ("", ~use["bp"] & use["rp"], [("rp", ("alone", "rp"))])]
        m = self.n_samples
        out: dict[str, np.ndarray] = {}
        for prefix, mask, parts in groups:
            name = f"{prefix}_flux" if prefix else "flux"
            if name not in out:
                out[name] = np.full((n, m), np.nan)
                out[name + "_error"] = np.full((n, m), np.nan)
                if self.covariance:
                    out[name + "_covariance"] = np.full((n, m, m), np.nan)
            if not mask.any():
                continue
            rows = slice(None) if mask.all() else mask
            flux, var, cov = self._sum_bands([(prepared[b], key) for b, key in parts], rows)
            out[name][rows] = flux
            out[name + "_error"][rows] = np.sqrt(np.maximum(var, 0.0))
            if cov is not None:
                out[name + "_covariance"][rows] = cov
        out["sample_flag"] = (np.where(present["bp"], 0, FLAG_NO_BP) |
                              np.where(present["rp"], 0, FLAG_NO_RP)).astype(np.int16)
        self.seconds += time.perf_counter() - start
        return out


def parse_grid(text: str) -> np.ndarray:
    """'START:STOP:STEP' (STOP included when it falls on the grid) -> array."""
    try:
        start, stop, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--grid {text!r}: expected START:STOP:STEP, e.g. 336:1020:2") from None
    if step <= 0 or stop <= start:
        raise UserError(f"--grid {text!r}: need START < STOP and STEP > 0")
    return np.arange(start, stop + step / 2, step)


def read_grid_file(path: str) -> np.ndarray:
    """A grid from a text file: numbers separated by spaces, commas or new lines; '#' comments."""
    try:
        with open(path) as f:
            text = " ".join(line.split("#", 1)[0] for line in f).replace(",", " ")
    except OSError as e:
        raise UserError(f"{path}: cannot read grid file ({e.strerror})") from e
    try:
        grid = np.array([float(v) for v in text.split()])
    except ValueError as e:
        raise UserError(f"{path}: not a list of numbers ({e})") from None
    if grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise UserError(f"{path}: a grid needs at least two increasing values")
    return grid


def run_sample(src: InputTable, out: TableWriter, *, grid: np.ndarray | None = None,
               internal: bool = False, truncate: bool = False, covariance: bool = False,
               bands: tuple[str, ...] = BANDS, dtype=np.float64, keep_coefficients: bool = False,
               strict: bool = False, chunk_rows: int | None = None, quiet: bool = False,
               warn=print_warning) -> Sampler:
    """Stream a continuous-spectra table through the sampler into ``out``."""
    layout = ContinuousLayout(src.schema, src.name)
    if truncate and not layout.has_column("n_relevant_bases"):
        raise UserError(f"{src.name}: --truncate needs bp/rp_n_relevant_bases columns")
    sampler = Sampler(load_basis(internal, grid), bands, truncate, covariance)
    m = sampler.n_samples
    if chunk_rows is None:
        chunk_rows = max(1, 20_000_000 // (m * m)) if covariance else 10_000
    passthrough = [c for c in src.schema.colnames if keep_coefficients or c not in layout.consumed]
    new = ([f"{b}_{k}" for b in bands for k in ("flux", "flux_error")] if internal
           else ["flux", "flux_error"])
    new += [f"{c}_covariance" for c in new if c.endswith("flux")] if covariance else []
    new.append("sample_flag")
    clash = [c for c in new if c in passthrough]
    if clash:
        raise UserError(f"{src.name}: already has a column {clash[0]!r}; drop or rename it first")
    if not layout.has_correlations:
        warn(f"{src.name} has no coefficient correlations: flux errors use the diagonal "
             f"covariance only (header XPERRCOR='diagonal')")
    keywords = {"XPKIND": "sampled_internal" if internal else "sampled",
                **grid_keywords(sampler.basis.grid, "PWL" if internal else "WAVE"),
                "XPBANDS": ",".join(bands), "XPTRUNC": bool(truncate),
                "XPERRCOR": "full" if layout.has_correlations else "diagonal"}
    unit = "electron s-1" if internal else "W m-2 nm-1"
    flagged = corrupt = 0
    first_corrupt = None
    offset = 0
    with progress(src.nrows, "sample", quiet) as bar:
        for chunk in src.chunks(chunk_rows):
            spectra = {b: layout.band(chunk, b) for b in BANDS}
            for b, spec in spectra.items():
                if spec is not None and spec.corrupt.any():
                    row = offset + int(np.flatnonzero(spec.corrupt)[0])
                    if strict:
                        raise UserError(f"{src.name}: row {row}: NaN or infinite values in the "
                                        f"{b.upper()} coefficients or errors")
                    corrupt += int(spec.corrupt.sum())
                    first_corrupt = row if first_corrupt is None else first_corrupt
            table = stamp(chunk.select(passthrough), keywords)  # writers keep the first's
            columns = sampler.sample(spectra)
            for name in new:
                data = columns[name]
                if name == "sample_flag":
                    table.add_column(name, data, description="bitmask: 1 = no usable BP, "
                                     "2 = no usable RP (see docs/sample.md)")
                else:
                    table.add_column(name, data.astype(dtype, copy=False), unit=unit)
            flagged += int(np.count_nonzero(columns["sample_flag"]))
            out.write(table)
            offset += len(chunk)
            bar.update(len(chunk))
    if corrupt:
        warn(f"{src.name}: {corrupt} band spectra have NaN or infinite coefficients or errors "
             f"(first at row {first_corrupt}); treated as missing")
    if flagged:
        warn(f"{flagged} of {offset} rows lack a usable BP or RP spectrum: NaN where that band "
             f"contributes, see sample_flag")
    return sampler
