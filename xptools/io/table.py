"""The in-memory table every subcommand reads and writes: named numpy columns of equal length.

A column is a numpy array whose first axis is the row; array cells (spectra, coefficients) are
the further axes. Per-column metadata (unit, description, the null value of an integer column)
and table-level metadata (``meta``: header keywords, ``history``: one line per tool that wrote
the file) travel with it, so pass-through columns keep their units and comments.

Missing values: NaN in float columns and float cells; for integer columns the file's null
sentinel (FITS TNULL) is kept in the data and recorded in ``nulls``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from xptools.errors import UserError


@dataclass
class ColumnInfo:
    unit: str | None = None
    description: str | None = None
    null: int | None = None


@dataclass
class Table:
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, ColumnInfo] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def __post_init__(self):
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal length: {sorted(lengths)}")
        for name in self.columns:
            self.info.setdefault(name, ColumnInfo())

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def colnames(self) -> list[str]:
        return list(self.columns)

    def add_column(self, name: str, data: np.ndarray, unit: str | None = None,
                   description: str | None = None, null: int | None = None) -> None:
        data = np.asarray(data)
        if self.columns and len(data) != len(self):
            raise ValueError(f"column {name!r} has {len(data)} rows, the table {len(self)}")
        self.columns[name] = data
        self.info[name] = ColumnInfo(unit, description, null)

    def remove_columns(self, names: Iterable[str]) -> None:
        for name in names:
            self.columns.pop(name, None)
            self.info.pop(name, None)

    def select(self, names: Iterable[str]) -> "Table":
        """A table with only these columns (in this order), sharing the data."""
        names = list(names)
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise UserError(f"no column {missing[0]!r} (columns: {', '.join(self.colnames)})")
        return Table({n: self.columns[n] for n in names}, {n: self.info[n] for n in names},
                     dict(self.meta), list(self.history))

    def rows(self, index) -> "Table":
        """A table with the rows picked by a slice, boolean mask or index array."""
        return Table({n: c[index] for n, c in self.columns.items()}, dict(self.info),
                     dict(self.meta), list(self.history))

    def copy_schema(self) -> "Table":
        """An empty table with the same metadata (no columns)."""
        return Table({}, {}, dict(self.meta), list(self.history))


def concat(tables: list[Table]) -> Table:
    """Rows of several tables with the same columns, one after the other."""
    if not tables:
        return Table()
    first = tables[0]
    columns = {n: np.concatenate([t.columns[n] for t in tables]) for n in first.colnames}
    return Table(columns, dict(first.info), dict(first.meta), list(first.history))


def text_bytes(column: str, data: np.ndarray, width: int | None = None,
               encoding: str = "utf-8") -> np.ndarray:
    """Text as fixed-width bytes, for FITS (ASCII, other characters become '?') and HDF5
    (UTF-8). A new column gets room to spare (twice its longest value, at least 16 bytes),
    because later chunks may hold longer text; text that still does not fit is an error
    rather than silently cut."""
    encoded = np.char.encode(np.asarray(data, dtype=str), encoding, "replace")
    longest = max((len(v) for v in encoded.tolist()), default=0)
    if width is None:
        width = max(2 * longest, 16)
    elif longest > width:
        raise UserError(f"column {column!r}: text of {longest} bytes in later rows does not fit "
                        f"the {width} bytes set by the first rows; write ECSV or CSV instead")
    return encoded.astype(f"S{width}")
