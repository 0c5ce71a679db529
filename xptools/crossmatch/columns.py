"""The right table's columns in the output: which come across, their names, their blanks.

A right column whose name is taken by a left column (or by one of the match columns) gets the
suffix (``--suffix``, default ``_r``); if the suffixed name is taken too, that is an error.
The match columns themselves follow the same rule against the left table, so a second
crossmatch in a pipeline gets ``match_count_r`` (or its own ``--suffix``).

Rows of a left join without a match get a blank: NaN in float columns and cells, the column's
null value in integer columns (a new one, recorded as FITS TNULL, if it had none), empty text,
False in boolean columns; ``match_count = 0`` tells those rows apart in every case.
"""

from __future__ import annotations

import numpy as np

from xptools.errors import UserError
from xptools.io import ColumnInfo, Table


def blank_for(data: np.ndarray, null: int | None) -> tuple[np.ndarray, int | None, object]:
    """What stands for "no match" in a column: (the column, widened if need be; its null
    value; the blank). Integer columns get a null value if they have none (the type's most
    negative value, or largest unsigned; int64's when that value occurs in the data)."""
    kind = data.dtype.kind
    if kind in "iu":
        if null is None:
            info = np.iinfo(data.dtype)
            null = int(info.min if kind == "i" else info.max)
            if np.any(data == null):
                data, null = data.astype(np.int64), int(np.iinfo(np.int64).min)
        return data, null, null
    if kind in "fc":
        return data, null, np.nan
    if kind in "US":
        return data, null, "" if kind == "U" else b""
    if kind == "b":
        return data, null, False
    raise UserError(f"cannot leave a blank in a column of type {data.dtype}")


def output_name(name: str, taken: set[str], suffix: str, what: str) -> str:
    """``name``, or ``name + suffix`` when ``name`` is taken; an error when both are."""
    if name not in taken:
        return name
    if name + suffix not in taken:
        return name + suffix
    raise UserError(f"{what}: column {name!r} and {name + suffix!r} both exist already; "
                    f"choose another --suffix")


class RightColumns:
    """The right columns that come across, renamed, ready to be taken row by row."""

    def __init__(self, right: Table, names: dict[str, str], blanks: bool):
        """``names``: right column -> output name; ``blanks``: whether rows without a match
        (index -1) will be asked for."""
        self._data: dict[str, np.ndarray] = {}
        self._info: dict[str, ColumnInfo] = {}
        self._blank: dict[str, object] = {}
        for name, out in names.items():
            data, info = right[name], right.info[name]
            null = info.null
            if blanks:
                data, null, self._blank[out] = blank_for(data, info.null)
            self._data[out] = data
            self._info[out] = ColumnInfo(info.unit, info.description, null)

    def add_to(self, table: Table, rows: np.ndarray) -> None:
        """Add the columns for right rows ``rows`` (-1: no match, a blank) to ``table``."""
        missing = rows < 0
        for out, data in self._data.items():
            column = data[np.where(missing, 0, rows)] if len(data) else \
                np.zeros((len(rows), *data.shape[1:]), data.dtype)
            if missing.any():
                column[missing] = self._blank[out]
            table.columns[out] = column
            table.info[out] = self._info[out]
