"""VOTable through astropy.io.votable (TABLEDATA, BINARY or BINARY2 read; BINARY2 written).

Variable-length array fields (arraysize="*", as the archive writes XP coefficients) become
fixed (rows, K) arrays with NaN rows for empty cells. Table keywords and history travel as
INFO elements of the table.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.io.table import Table


class VotableReader:
    def __init__(self, path: str, name: str):
        from astropy.io.votable import parse
        from astropy.io.votable.exceptions import VOWarning

        self.name = name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VOWarning)
                votable = parse(path, verify="ignore")
            element = votable.get_first_table()
        except Exception as e:  # the XML parser raises many kinds
            raise UserError(f"{name}: not a readable VOTable ({str(e).splitlines()[0]})") from e
        array = element.array
        self.nrows = len(array)
        self._table = Table()
        for field in element.fields:
            column = array[field.ID or field.name] if (field.ID or field.name) in array.dtype.names \
                else array[field.name]
            data, null = _column(column, field)
            self._table.add_column(field.name, data, unit=str(field.unit) if field.unit else None,
                                   description=(field.description or "").strip() or None,
                                   null=null)
        for info in element.infos:
            if info.name == "HISTORY":
                self._table.history.append(info.value)
            else:
                self._table.meta[info.name] = _typed(info.value)
        self.schema = self._table.rows(slice(0, 0))

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        table = self._table.select(columns or self._table.colnames)
        for start in range(0, max(len(table), 1), rows):
            yield table.rows(slice(start, start + rows))

    def close(self):
        pass


def _column(column, field) -> tuple[np.ndarray, int | None]:
    if column.dtype.kind == "O":  # variable-length arrays; empty or masked cells -> NaN
        cells = [np.zeros(0) if c is None or np.ma.is_masked(c) and np.size(c) == 1 else
                 np.ma.filled(np.ma.asarray(c, dtype=float), np.nan) for c in column]
        width = max((len(c) for c in cells), default=0)
        out = np.full((len(cells), width), np.nan)
        for i, c in enumerate(cells):
            out[i, :len(c)] = c
        base = {"double": np.float64, "float": np.float32}.get(field.datatype, np.float64)
        return out.astype(base), None
    data = np.ma.getdata(column)
    mask = np.ma.getmaskarray(column)
    if data.dtype.kind == "f":
        data = np.where(mask, np.nan, data) if mask.any() else np.asarray(data)
        return data, None
    if data.dtype.kind in "iu":
        null = field.values.null if field.values is not None and field.values.null is not None \
            else int(np.iinfo(data.dtype).min)
        return np.where(mask, null, data) if mask.any() else np.asarray(data), int(null)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", errors="replace")
    return np.asarray(data), None


def _typed(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return {"True": True, "False": False}.get(text, text)


class VotableWriter:
    """VOTable needs the whole table: chunks are collected and written on close."""

    def __init__(self, path: str):
        self.path = path
        self._chunks: list[Table] = []

    def write(self, table: Table) -> None:
        self._chunks.append(table)

    def close(self) -> None:
        from astropy.io.votable import from_table, writeto
        from astropy.io.votable.tree import Info
        from astropy.table import MaskedColumn
        from astropy.table import Table as AstropyTable

        from xptools.io.table import concat

        table = concat(self._chunks)
        out = AstropyTable()
        for n in table.colnames:
            data, info = table[n], table.info[n]
            if data.ndim > 2:
                raise UserError(f"column {n!r} has {data.ndim - 1}-D cells; write FITS or HDF5")
            if info.null is not None:
                out[n] = MaskedColumn(data, mask=data == info.null)
            else:
                out[n] = data
            out[n].unit = info.unit
            out[n].description = info.description
        votable = from_table(out)
        element = votable.get_first_table()
        element.format = "binary2"
        for key, value in table.meta.items():
            element.infos.append(Info(name=key, value=str(value)))
        for line in table.history:
            element.infos.append(Info(name="HISTORY", value=line))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writeto(votable, self.path)
