"""HDF5 tables through h5py.

Layout (written by xptools, and read from any file that follows it):

- one group (the root ``/`` unless the file's only group holds the table) with one dataset per
  column; the first axis of every dataset is the row, further axes are the array cell;
- dataset attributes ``unit``, ``description`` and, for integer columns with missing values,
  ``null`` (the sentinel value);
- group attributes: ``columns`` (the column order, JSON list), the table keywords (``XPTVERS``,
  ``XPTCMD``, ``XPTDATE``, ``WAVEMIN``, ...) and ``HISTORY`` (a list of strings);
- text is stored as UTF-8 fixed-length bytes.

Datasets are chunked and extendible, so a table is written chunk by chunk.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.io.table import Table, text_bytes


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


class Hdf5Reader:
    def __init__(self, path: str, name: str):
        import h5py

        self.name = name
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise UserError(f"{name}: not a readable HDF5 file ({str(e).splitlines()[0]})") from e
        group = self._file
        datasets = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
        if not datasets:
            groups = [v for v in group.values() if isinstance(v, h5py.Group)]
            if len(groups) == 1:
                group = groups[0]
                datasets = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
        if not datasets:
            raise UserError(f"{name}: HDF5 file holds no table (no datasets at its top level)")
        order = group.attrs.get("columns")
        names = json.loads(_attr(order)) if order is not None else datasets
        self._group = group
        lengths = {group[n].shape[0] if group[n].shape else -1 for n in names}
        if len(lengths) != 1 or -1 in lengths:
            raise UserError(f"{name}: HDF5 datasets are not columns of one table "
                            f"(first dimensions {sorted(lengths)})")
        self.nrows = lengths.pop()
        self.schema = Table()
        for n in names:
            ds = group[n]
            dtype = ds.dtype
            if dtype.kind == "S":
                dtype = np.dtype(f"U{dtype.itemsize}")
            null = ds.attrs.get("null")
            self.schema.add_column(n, np.zeros((0, *ds.shape[1:]), dtype=dtype),
                                   unit=_attr(ds.attrs.get("unit")) or None,
                                   description=_attr(ds.attrs.get("description")) or None,
                                   null=int(null) if null is not None else None)
        for key, value in group.attrs.items():
            if key == "HISTORY":
                self.schema.history = [_attr(v) for v in np.atleast_1d(value)]
            elif key != "columns":
                self.schema.meta[key] = _attr(value)

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        names = columns or self.schema.colnames
        for start in range(0, self.nrows, rows):
            out = self.schema.select(names)
            for n in names:
                data = self._group[n][start:start + rows]
                if data.dtype.kind == "S":
                    data = np.char.decode(data, "utf-8", errors="replace")
                out.columns[n] = data
            yield out

    def close(self):
        self._file.close()


class Hdf5Writer:
    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._widths: dict[str, int] = {}  # text columns: bytes per value, set by the first chunk

    def _storable(self, name: str, a: np.ndarray) -> np.ndarray:
        if a.dtype.kind in "US":
            a = text_bytes(name, a, self._widths.get(name))
            self._widths[name] = a.dtype.itemsize
        elif a.dtype.kind == "O":
            raise UserError(f"column {name!r} holds Python objects and cannot be written to HDF5")
        return a

    def write(self, table: Table) -> None:
        import h5py

        columns = {n: self._storable(n, table[n]) for n in table.colnames}
        if self._file is None:
            self._file = h5py.File(self.path, "w")
            self._file.attrs["columns"] = json.dumps(table.colnames)
            for key, value in table.meta.items():
                self._file.attrs[key] = value
            if table.history:
                self._file.attrs["HISTORY"] = table.history
            for n, data in columns.items():
                cell = data.shape[1:]
                row_bytes = max(data.dtype.itemsize * int(np.prod(cell)), 1)
                chunk_rows = int(max(1, min(65536, (1 << 20) // row_bytes)))
                ds = self._file.create_dataset(n, shape=(0, *cell), maxshape=(None, *cell),
                                               dtype=data.dtype, chunks=(chunk_rows, *cell))
                info = table.info[n]
                if info.unit:
                    ds.attrs["unit"] = info.unit
                if info.description:
                    ds.attrs["description"] = info.description
                if info.null is not None:
                    ds.attrs["null"] = int(info.null)
        for n, data in columns.items():
            ds = self._file[n]
            old = ds.shape[0]
            ds.resize(old + len(table), axis=0)
            ds[old:] = data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

