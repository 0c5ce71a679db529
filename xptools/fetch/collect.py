"""Rows for a list of source_ids, gathered from answers in any order, read out in the order
the ids were asked.

Answers (DataLink batches, bulk files, TAP joins) arrive grouped their own way; each row is
written straight to the position of its id in memory-mapped column files, so memory stays
bounded however many ids there are, and reading out is sequential. An id that no answer holds
keeps NaN (floats), the null value (integers), False or '' and is reported as not found.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.io import Table
from xptools.xp import DEFAULT_GRID, N_COEFFICIENTS, N_CORRELATIONS

# Cell widths of the archive's array columns, for answers where every cell of a column is
# empty (a batch without a BP spectrum comes back from FITS with zero-length arrays).
ARRAY_WIDTHS = {
    **{f"{b}_{c}": N_COEFFICIENTS for b in ("bp", "rp") for c in ("coefficients",
                                                                 "coefficient_errors")},
    **{f"{b}_coefficient_correlations": N_CORRELATIONS for b in ("bp", "rp")},
    "flux": len(DEFAULT_GRID), "flux_error": len(DEFAULT_GRID),
}


def null_value(dtype: np.dtype, null: int | None):
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return null if null is not None else np.iinfo(dtype).min
    if dtype.kind == "b":
        return False
    return ""


class Collector:
    """Columns of answers, placed by the position of their source_id among ``ids``."""

    def __init__(self, ids: np.ndarray, folder: str, what: str):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.found = np.zeros(len(self.ids), bool)
        self.schema: Table | None = None
        self.what = what
        self._folder = folder
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        self._columns: dict[str, np.ndarray] = {}

    def _positions(self, source_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of ``source_ids`` that are asked for, their positions among ``ids``)."""
        at = np.searchsorted(self._sorted, source_ids)
        at = np.minimum(at, max(len(self._sorted) - 1, 0))
        hit = np.flatnonzero(self._sorted[at] == source_ids) if len(self._sorted) else \
            np.zeros(0, np.int64)
        return hit, self._order[at[hit]]

    def _start(self, table: Table, name: str) -> None:
        self.schema = table.rows(slice(0, 0))
        n = len(self.ids)
        for column in table.colnames:
            data = table[column]
            if data.dtype.kind == "O":
                raise UserError(f"{name}: column {column!r} has cells of varying type")
            shape = data.shape[1:]
            if shape == (0,) and column in ARRAY_WIDTHS:
                shape = (ARRAY_WIDTHS[column],)
                data = np.zeros((0, *shape), dtype=data.dtype)
            self.schema.columns[column] = np.zeros((0, *shape), dtype=data.dtype)
            if data.dtype.kind in "iu" and self.schema.info[column].null is None:
                self.schema.info[column].null = int(np.iinfo(data.dtype).min)
            path = os.path.join(self._folder, f"{self.what}-{len(self._columns)}.dat")
            if n and data.dtype.itemsize and np.prod(shape, dtype=np.int64) > 0:
                self._columns[column] = np.lib.format.open_memmap(
                    path, mode="w+", dtype=data.dtype, shape=(n, *shape))
            else:
                self._columns[column] = np.zeros((n, *shape), dtype=data.dtype)

    def add(self, table: Table, name: str) -> int:
        """Place the rows of ``table`` whose source_id is asked for and not placed yet (the
        first answer for an id wins); returns how many were placed."""
        if "source_id" not in table:
            raise UserError(f"{name}: no source_id column in the answer "
                            f"(columns: {', '.join(table.colnames[:8])})")
        rows, positions = self._positions(np.asarray(table["source_id"], dtype=np.int64))
        new = ~self.found[positions]
        rows, positions = rows[new], positions[new]
        positions, first = np.unique(positions, return_index=True)  # an id twice in one answer
        rows = rows[first]
        if self.schema is None:
            self._start(table, name)
        if not len(rows):
            return 0
        if table.colnames != self.schema.colnames:
            raise UserError(f"{name}: its columns differ from the earlier answers' "
                            f"({', '.join(sorted(set(table.colnames) ^ set(self.schema.colnames))[:5])})")
        for column, target in self._columns.items():
            data = table[column]
            if data.shape[1:] != target.shape[1:]:
                if data.shape[1:] == (0,) or data.ndim == 1 and target.ndim == 2:
                    data = np.full((len(table), *target.shape[1:]), np.nan)  # all cells empty
                else:
                    raise UserError(f"{name}: column {column!r} has cells of shape "
                                    f"{data.shape[1:]}, earlier answers {target.shape[1:]}")
            target[positions] = data[rows]
        self.found[positions] = True
        return len(rows)

    def chunks(self, rows: int) -> Iterator[Table]:
        """The collected columns in request order, ``rows`` at a time; missing rows hold
        the null values."""
        if self.schema is None:
            for start in range(0, len(self.ids), rows):
                stop = min(start + rows, len(self.ids))
                yield Table({"source_id": self.ids[start:stop]})
            return
        for start in range(0, len(self.ids), rows):
            stop = min(start + rows, len(self.ids))
            out = self.schema.rows(slice(0, 0))
            missing = ~self.found[start:stop]
            for column, source in self._columns.items():
                data = np.array(source[start:stop])
                if missing.any():
                    data[missing] = null_value(data.dtype, self.schema.info[column].null)
                out.columns[column] = data
            out.columns["source_id"] = self.ids[start:stop]
            yield out
