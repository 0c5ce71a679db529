"""The linear maps from XP coefficients to samples, taken from GaiaXPy's public API and cached.

Sampling is linear in the coefficients: flux = c @ D for a (55, M) design matrix D. GaiaXPy's
``calibrate`` and ``convert`` are applied to unit coefficient vectors (source k has c = e_k):
the output flux of source k is row k of the design matrix. Four kinds of rows are read off:

- ``merged[band]``: absolute flux with both bands present, c_band = e_k and the other band 0.
  GaiaXPy weights each band by its merge weight w_band(lambda) in the BP/RP overlap, so this is
  w_band * D_band.
- ``alone[band]``: absolute flux with the other band missing: D_band unweighted, NaN where
  GaiaXPy blanks a band that is alone (beyond the band's range).
- ``internal[band]``: ``convert``'s pseudo-wavelength samples, D_band.

This needs no private GaiaXPy symbol, follows GaiaXPy's own configuration exactly (default
grid from its XML solution, custom grids from its instrument model) and costs one GaiaXPy call
per grid. The matrices are cached in ``$XPTOOLS_CACHE`` (default ``~/.cache/xptools``), keyed by
GaiaXPy's version and the grid, so later runs do not even import GaiaXPy (about 2.5 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from xptools.errors import UserError
from xptools.io import atomic
from xptools.xp import BANDS, N_COEFFICIENTS

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Basis:
    grid: np.ndarray              # (M,) nm (absolute) or pseudo-wavelength (internal)
    internal: bool
    merged: dict[str, np.ndarray]  # absolute: band -> w * D, (55, M)
    alone: dict[str, np.ndarray]   # absolute: band -> D with NaN outside the band, (55, M)
    design: dict[str, np.ndarray]  # internal: band -> D, (55, M)


def cache_dir() -> str:
    if os.environ.get("XPTOOLS_CACHE"):
        return os.environ["XPTOOLS_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xptools")


def _key(internal: bool, grid: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(f"{CACHE_FORMAT}|gaiaxpy={version('GaiaXPy')}|internal={internal}|".encode())
    h.update(b"default" if grid is None else np.ascontiguousarray(grid, np.float64).tobytes())
    return h.hexdigest()[:24]


def load_basis(internal: bool = False, grid: np.ndarray | None = None) -> Basis:
    """The design matrices for a grid (None: GaiaXPy's default grid), from cache or GaiaXPy."""
    arrays = cached_arrays(f"basis-{_key(internal, grid)}.npz",
                           lambda: _from_gaiaxpy(internal, grid))
    pick = lambda prefix: {b: arrays[f"{prefix}_{b}"] for b in BANDS if f"{prefix}_{b}" in arrays}
    return Basis(arrays["grid"], internal, pick("merged"), pick("alone"), pick("design"))


def cached_arrays(name: str, compute) -> dict[str, np.ndarray]:
    """The arrays of cache file ``name`` (in `cache_dir`), or ``compute()``'s, saved there for
    the next run. The file name must change with whatever the arrays depend on (GaiaXPy's
    version, the grid); `xptools.synthetic` keeps its photometric systems here too."""
    path = os.path.join(cache_dir(), name)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        arrays = compute()
        _save(path, arrays)
        return arrays


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the cache atomically; an unwritable cache only costs time on the next run."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = atomic.temporary_beside(path)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
            atomic.done_with(tmp)
        finally:
            atomic.discard(tmp)
    except OSError as e:
        print(f"xptools: warning: cannot cache design matrices in {os.path.dirname(path)} "
              f"({e.strerror})", file=sys.stderr)


@contextlib.contextmanager
def silenced():
    """GaiaXPy prints progress on stdout (our data channel) and stderr; our calls to it are
    internal (unit vectors here, filter definitions in `xptools.synthetic`), so both go to
    /dev/null while they run."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _unit_inputs(bp: str, rp: str):
    """A GaiaXPy input table of 55 sources; per band 'unit' (c = e_k), 'zero' or 'missing'."""
    import pandas as pd

    k = N_COEFFICIENTS
    rows = []
    for i in range(k):
        row = {"source_id": i + 1}
        for band, mode in (("bp", bp), ("rp", rp)):
            if mode == "missing":
                row.update({f"{band}_n_parameters": np.nan, f"{band}_standard_deviation": np.nan,
                            f"{band}_coefficients": np.nan, f"{band}_coefficient_errors": np.nan,
                            f"{band}_coefficient_correlations": np.nan})
            else:
                c = np.zeros(k)
                if mode == "unit":
                    c[i] = 1.0
                row.update({f"{band}_n_parameters": k, f"{band}_standard_deviation": 1.0,
                            f"{band}_coefficients": c, f"{band}_coefficient_errors": np.ones(k),
                            f"{band}_coefficient_correlations": np.zeros(k * (k - 1) // 2)})
        rows.append(row)
    return pd.DataFrame(rows)


def _from_gaiaxpy(internal: bool, grid: np.ndarray | None) -> dict[str, np.ndarray]:
    if sys.stderr.isatty():  # a few seconds' wait deserves a word, logs do not need it
        print("xptools: computing GaiaXPy design matrices for this grid (cached for next time)",
              file=sys.stderr)
    with silenced():
        import gaiaxpy

        grid_option = {} if grid is None else {"sampling": grid}  # None: GaiaXPy's default
        try:
            if internal:
                df, positions = gaiaxpy.convert(_unit_inputs("unit", "unit"), save_file=False,
                                                **grid_option)
                out = {f"design_{b}": np.stack(df.flux[df.xp == b.upper()].to_numpy())
                       for b in BANDS}
            else:
                out = {}
                for band, inputs in (("bp", ("unit", "zero")), ("rp", ("zero", "unit"))):
                    df, positions = gaiaxpy.calibrate(_unit_inputs(*inputs), save_file=False,
                                                      **grid_option)
                    out[f"merged_{band}"] = np.stack(df.flux.to_numpy())
                for band, inputs in (("bp", ("unit", "missing")), ("rp", ("missing", "unit"))):
                    df, positions = gaiaxpy.calibrate(_unit_inputs(*inputs), save_file=False,
                                                      **grid_option)
                    out[f"alone_{band}"] = np.stack(df.flux.to_numpy())
        except ValueError as e:  # GaiaXPy validates the grid
            raise UserError(f"invalid sampling grid: {e}") from e
    out["grid"] = np.asarray(positions, dtype=np.float64)
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in out.items()}
