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

import threading
import time
from dataclasses import dataclass

import numpy as np

from xptools import flags
from xptools.basis import Basis, load_basis
from xptools.errors import UserError
from xptools.io import InputTable, TableWriter
from xptools.progress import progress, print_warning
from xptools.provenance import stamp
from xptools.threads import available
from xptools.xp import BANDS, N_COEFFICIENTS, Band, ContinuousLayout, grid_keywords

_I, _J = np.tril_indices(N_COEFFICIENTS, -1)  # the archive's packing of correlations

FLAG_NO_BP, FLAG_NO_RP = flags.SAMPLE_NO_BP, flags.SAMPLE_NO_RP


def pair_products(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed factors of Eq. (3): D_km^2 (55, M) and 2 D_km D_lm for k > l (1485, M)."""
    return design * design, 2.0 * design[_I] * design[_J]


def variance_weights(errors: np.ndarray, correlations: np.ndarray | None,
                     out: np.ndarray | None = None, scratch: np.ndarray | None = None):
    """The per-source factors of Eq. (3): s_k^2 (n, 55) and rho_kl s_k s_l for k > l
    (n, 1485; None without correlations). ``out`` and ``scratch`` are optional (n, 1485)
    buffers; contiguous buffers keep the products in place, without temporary copies."""
    squares = errors * errors
    if correlations is None:
        return squares, None
    n = len(errors)
    off = np.empty((n, len(_I))) if out is None else out
    tmp = np.empty((n, len(_I))) if scratch is None else scratch
    # mode="clip": the indices are valid, and the default mode buffers ``out``
    np.multiply(correlations, np.take(errors, _I, axis=1, out=tmp, mode="clip"), out=off)
    np.multiply(off, np.take(errors, _J, axis=1, out=tmp, mode="clip"), out=off)
    return squares, off


def correlation_matrices(correlations: np.ndarray | None, n: int) -> np.ndarray:
    """Full (n, 55, 55) correlation matrices from the packed lower triangles (identity if None)."""
    rho = np.zeros((n, N_COEFFICIENTS, N_COEFFICIENTS))
    rho[:, np.arange(N_COEFFICIENTS), np.arange(N_COEFFICIENTS)] = 1.0
    if correlations is not None:
        rho[:, _I, _J] = correlations
        rho[:, _J, _I] = correlations
    return rho


@dataclass
class _Matrix:
    """A design matrix restricted to the columns where it contributes (its support)."""

    columns: slice
    design: np.ndarray   # D[:, columns], (55, m)
    squares: np.ndarray  # D_km^2, (55, m), Eq. (3)
    products: np.ndarray  # 2 D_km D_lm (k > l), (1485, m), Eq. (3)

    @classmethod
    def of(cls, design: np.ndarray, blank_outside: bool) -> "_Matrix":
        # merged matrices are exactly 0 where the band's weight is 0; a band alone is NaN
        # where GaiaXPy blanks it
        used = np.isfinite(design).all(axis=0)
        if not blank_outside:
            used &= (design != 0).any(axis=0)
        idx = np.flatnonzero(used)
        cols = slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)
        d = np.ascontiguousarray(design[:, cols])
        return cls(cols, d, *pair_products(d))


class Sampler:
    """Samples chunks of XP continuous spectra on one grid (absolute or internal).

    Work is split into blocks of ``BLOCK_ROWS`` sources: a block's weights q stay in the CPU
    cache between being built and being multiplied, and blocks run on all the threads the work
    may use (`xptools.threads.available`, one BLAS thread each), which keeps the machine's
    matrix units busy.
    """

    BLOCK_ROWS = 256

    def __init__(self, basis: Basis, bands: tuple[str, ...] = BANDS, truncate: bool = False,
                 covariance: bool = False, threads: int | None = None, errors: bool = True):
        self.basis = basis
        self.bands = bands
        self.truncate = truncate
        self.covariance = covariance
        self.errors = errors or covariance  # errors=False: flux only, much faster
        self.threads = threads or available()
        if basis.internal:
            self._matrices = {("design", b): _Matrix.of(m, True) for b, m in basis.design.items()}
        else:
            self._matrices = {**{("merged", b): _Matrix.of(m, False)
                                 for b, m in basis.merged.items()},
                              **{("alone", b): _Matrix.of(m, True)
                                 for b, m in basis.alone.items()}}
        self._local = threading.local()
        self.flops = 0.0      # useful arithmetic done (matrix products), for the benchmark
        self.seconds = 0.0    # time spent computing (not reading or writing)

    @property
    def n_samples(self) -> int:
        return len(self.basis.grid)

    def _truncated(self, band: Band) -> Band:
        if not (self.truncate and band.n_relevant_bases is not None):
            return band
        n = np.where(band.n_relevant_bases > 0, band.n_relevant_bases, N_COEFFICIENTS)
        keep = np.arange(N_COEFFICIENTS)[None, :] < n[:, None]
        return Band(np.where(keep, band.coefficients, 0.0), np.where(keep, band.errors, 0.0),
                    band.correlations, band.n_relevant_bases, band.usable, band.corrupt)

    def _buffers(self, rows: int) -> dict[str, np.ndarray]:
        """Scratch arrays of this thread, reused from block to block."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None or len(buffers["off"]) < rows:
            m = self.n_samples
            buffers = self._local.buffers = {
                "off": np.empty((rows, len(_I))), "tmp": np.empty((rows, len(_I))),
                "flux": np.empty((rows, m)), "var": np.empty((rows, m)),
                "product": np.empty((rows, m))}
        return buffers

    def _block(self, rows, parts: list[tuple[Band, _Matrix]], outputs: list) -> float:
        """Flux (1), error (3) and covariance (4) of a block of rows (a slice or indices),
        summed over bands, written into ``outputs``; NaN outside the bands' supports.
        Returns the matrix-product arithmetic done."""
        n = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        buf = self._buffers(n)
        flux, var = buf["flux"][:n], buf["var"][:n]
        flux.fill(np.nan)
        var.fill(np.nan)
        cov = np.full((n, self.n_samples, self.n_samples), np.nan) if self.covariance else None
        for _, matrix in parts:
            flux[:, matrix.columns] = var[:, matrix.columns] = 0.0
            if cov is not None:
                cov[:, matrix.columns, matrix.columns] = 0.0
        flops = 0.0
        for band, matrix in parts:
            cols, width = matrix.columns, matrix.design.shape[1]
            product = buf["product"][:n, :width]
            flux[:, cols] += np.matmul(band.coefficients[rows], matrix.design, out=product)
            flops += 2.0 * n * matrix.design.size
            if not self.errors:
                continue
            correlations = None if band.correlations is None else band.correlations[rows]
            errors = band.errors[rows]
            squares, off = variance_weights(errors, correlations, buf["off"][:n],
                                            buf["tmp"][:n])
            var[:, cols] += np.matmul(squares, matrix.squares, out=product)
            flops += 2.0 * n * matrix.squares.size
            if off is not None:
                var[:, cols] += np.matmul(off, matrix.products, out=product)
                flops += 2.0 * n * matrix.products.size
            if cov is not None:
                g = errors[:, :, None] * matrix.design[None]  # s_k D_km
                rho = correlation_matrices(correlations, n)
                cov[:, cols, cols] += np.transpose(g, (0, 2, 1)) @ (rho @ g)
        out_flux, out_error, out_cov = outputs
        out_flux[rows] = flux
        if out_error is not None:
            np.maximum(var, 0.0, out=var)
            out_error[rows] = np.sqrt(var, out=var)
        if cov is not None:
            out_cov[rows] = cov
        return flops

    def sample(self, bands: dict[str, Band | None], advance=None) -> dict[str, np.ndarray]:
        """Output columns for one chunk; ``bands`` maps 'bp'/'rp' to the chunk's spectra;
        ``advance(rows)``, if given, is called as blocks of rows are done (a progress bar)."""
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        start = time.perf_counter()
        n = len(next(b for b in bands.values() if b is not None).usable)
        present = {b: bands[b].usable if bands.get(b) is not None else np.zeros(n, bool)
                   for b in BANDS}
        used = {b: self._truncated(bands[b]) for b in self.bands if bands.get(b) is not None}
        has = {b: present[b] if b in used else np.zeros(n, bool) for b in BANDS}
        if self.basis.internal:
            groups = [(f"{b}_flux", has[b], [(b, ("design", b))]) for b in self.bands]
        else:
            groups = [("flux", has["bp"] & has["rp"],
                       [("bp", ("merged", "bp")), ("rp", ("merged", "rp"))]),
                      ("flux", has["bp"] & ~has["rp"], [("bp", ("alone", "bp"))]),
                      ("flux", ~has["bp"] & has["rp"], [("rp", ("alone", "rp"))])]
            # a basis without a band-alone matrix (synthetic photometry: GaiaXPy gives none
            # without both bands) leaves the rows with that band alone NaN
            groups = [g for g in groups if all(key in self._matrices for _, key in g[2])]
        m = self.n_samples
        out: dict[str, np.ndarray] = {}
        covered: dict[str, np.ndarray] = {}
        jobs = []
        for name, mask, parts in groups:
            if name not in out:
                out[name] = np.empty((n, m))
                if self.errors:
                    out[name + "_error"] = np.empty((n, m))
                if self.covariance:
                    out[name + "_covariance"] = np.empty((n, m, m))
                covered[name] = np.zeros(n, bool)
            covered[name] |= mask
            rows = np.flatnonzero(mask)
            if not len(rows):
                continue
            block_parts = [(used[b], self._matrices[key]) for b, key in parts]
            outputs = [out[name], out.get(name + "_error"), out.get(name + "_covariance")]
            step = max(1, self.BLOCK_ROWS // (m if self.covariance else 1))
            for i in range(0, len(rows), step):
                # all rows in the group: slices, i.e. views instead of copies
                block = slice(i, min(i + step, n)) if len(rows) == n else rows[i:i + step]
                jobs.append((block, block_parts, outputs))
        with threadpool_limits(limits=1, user_api="blas"), \
                ThreadPoolExecutor(self.threads) as pool:
            sizes = [b.stop - b.start if isinstance(b, slice) else len(b) for b, _, _ in jobs]
            done = reported = 0
            for flops, size in zip(pool.map(lambda job: self._block(*job), jobs), sizes):
                self.flops += flops
                done += size
                if advance is not None:  # the chunk's n rows, in step with its blocks
                    advance(n * done // sum(sizes) - reported)
                    reported = n * done // sum(sizes)
        if advance is not None and not jobs:
            advance(n)
        for name, done in covered.items():  # rows without a usable band
            for column in (name, name + "_error", name + "_covariance"):
                if column in out:
                    out[column][~done] = np.nan
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


class InputChecks:
    """What `sample` and `photometry` check of their input, chunk by chunk: NaN or infinite
    values in a band are an error with --strict, else that band is treated as missing and
    counted; `report` gives the end-of-run warnings about the input."""

    def __init__(self, name: str, layout: ContinuousLayout, strict: bool):
        self.name, self.layout, self.strict = name, layout, strict
        self.corrupt, self.first = 0, None

    def check(self, spectra: dict[str, Band | None], offset: int) -> None:
        for b, spec in spectra.items():
            if spec is not None and spec.corrupt.any():
                row = offset + int(np.flatnonzero(spec.corrupt)[0])
                if self.strict:
                    raise UserError(f"{self.name}: row {row}: NaN or infinite values in the "
                                    f"{b.upper()} coefficients or errors")
                self.corrupt += int(spec.corrupt.sum())
                self.first = row if self.first is None else self.first

    def report(self, warn) -> None:
        if not self.layout.has_correlations:
            warn(f"{self.name} has no coefficient correlations: flux errors use the diagonal "
                 f"covariance only (header XPERRCOR='diagonal')")
        if self.corrupt:
            warn(f"{self.name}: {self.corrupt} band spectra have NaN or infinite coefficients "
                 f"or errors (first at row {self.first}); treated as missing")


def prepare(grid: list[float] | None = None, internal: bool = False, truncate: bool = False,
            covariance: bool = False, bands: tuple[str, ...] = BANDS, dtype: str = "float64",
            keep_coefficients: bool = False, strict: bool = False,
            chunk_rows: int | None = None):
    """`xptools sample` as a job (`xptools.scale`): ``run(src, out, quiet, warn)`` per
    table."""
    values = None if grid is None else np.asarray(grid, dtype=np.float64)

    def run(src, out, quiet, warn) -> dict:
        if covariance and out.format not in ("fits", "hdf5", "parquet"):
            raise UserError(f"--covariance needs FITS, HDF5 or Parquet output, not "
                            f"{out.format}")
        run_sample(src, out, grid=values, internal=internal, truncate=truncate,
                   covariance=covariance, bands=tuple(bands), dtype=np.dtype(dtype),
                   keep_coefficients=keep_coefficients, strict=strict, chunk_rows=chunk_rows,
                   quiet=quiet, warn=warn)
        return {}
    return run


def run_sample(src: InputTable, out: TableWriter, *, grid: np.ndarray | None = None,
               internal: bool = False, truncate: bool = False, covariance: bool = False,
               bands: tuple[str, ...] = BANDS, dtype=np.float64, keep_coefficients: bool = False,
               strict: bool = False, chunk_rows: int | None = None, quiet: bool = False,
               warn=print_warning) -> Sampler:
    """Stream a continuous-spectra table through the sampler into ``out``."""
    layout = ContinuousLayout(src.schema, src.name, bands)
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
    keywords = {"XPKIND": "sampled_internal" if internal else "sampled",
                **grid_keywords(sampler.basis.grid, "PWL" if internal else "WAVE"),
                "XPBANDS": ",".join(bands), "XPTRUNC": bool(truncate),
                "XPERRCOR": "full" if layout.has_correlations else "diagonal"}
    unit = "electron s-1" if internal else "W m-2 nm-1"
    flagged = offset = 0
    checks = InputChecks(src.name, layout, strict)
    with progress(src.nrows, "sample", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            spectra = {b: layout.band(chunk, b) for b in BANDS}
            checks.check(spectra, offset)
            table = stamp(chunk.select(passthrough), keywords)  # writers keep the first's
            columns = sampler.sample(spectra, advance=bar.update)
            for name in new:
                data = columns[name]
                if name == "sample_flag":
                    if not layout.has_correlations:
                        data = data | np.int16(flags.SAMPLE_DIAGONAL)
                    table.add_column(name, data, description=flags.description("sample"))
                else:
                    table.add_column(name, data.astype(dtype, copy=False), unit=unit)
            flagged += int(np.count_nonzero(columns["sample_flag"] & (FLAG_NO_BP | FLAG_NO_RP)))
            out.write(table)
            offset += len(chunk)
    checks.report(warn)
    if flagged:
        warn(f"{flagged} of {offset} rows lack a usable BP or RP spectrum: NaN where that band "
             f"contributes, see sample_flag")
    return sampler
