"""HDF5 tables through h5py, in astropy's layout.

Written by xptools (astropy's own layout, so ``astropy.table.Table.read("x.h5")`` reads it):

- one compound dataset ``/__astropy_table__``, one record per row, one field per column; array
  cells are subarray fields, text is fixed-width UTF-8 bytes;
- an integer column with a null value is an astropy masked column: the field holds the data
  (with the null sentinel in it) and a boolean field ``<name>.mask`` marks the missing values;
  the sentinel itself is the column's ``meta: {null: N}``;
- ``/__astropy_table__.__table_column_meta__``: astropy's YAML header (one line per element),
  written with astropy's own helpers: units, descriptions, the table keywords (``XPTVERS``,
  ``XPTCMD``, ``XPTDATE``, ``WAVEMIN``, ...), ``HISTORY`` (a list) and astropy's
  ``__serialized_columns__`` entry for the masked columns.

The dataset is chunked (about 1 MiB per chunk), compressed (gzip with shuffle) and extendible:
it grows with every chunk written, so a table is streamed to disk.

Read: any file with one compound dataset (astropy's layout, with or without the YAML header,
wherever the dataset is), and the layout of older xptools versions: one group (the root, or the
file's only group) with one dataset per column, column attributes ``unit``, ``description``,
``null`` and group attributes ``columns`` (JSON column order), the keywords and ``HISTORY``.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.io.table import Table, text_bytes

TABLE_PATH = "__astropy_table__"        # astropy's default path (Table.write(path=None))
META_KEY = "__table_column_meta__"      # astropy's serialize_meta=True header ...
META_SUFFIX = "." + META_KEY            # ... is the dataset <table path> + this
MASK_SUFFIX = ".mask"                   # astropy's field for the mask of a masked column
MASKED_CLASS = "astropy.table.column.MaskedColumn"
CHUNK_BYTES = 1 << 20                   # about 1 MiB of records per HDF5 chunk
# gzip+shuffle: every HDF5 library reads it (lzf is h5py's own); XP spectra come to 0.78x the
# FITS size (lzf: 0.84x) (benchmarks/bench_formats.py prints sizes and times)
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


class _Sink:
    """The file the HDF5 library writes through (h5py's file-object driver). HDF5 cannot recover
    from a failed write: the file stays open inside the library, and the interpreter crashes
    when it exits (h5py issues #914, #2160). So a failed write (a full disk) is remembered and
    raised by `Hdf5Writer` itself, while the library is told it succeeded; the file is then
    removed as any failed output."""

    def __init__(self, path: str):
        self._file = open(path, "w+b")
        self.error: OSError | None = None

    def _guard(self, action, *args, default=None):
        if self.error is None:
            try:
                return action(*args)
            except OSError as e:
                self.error = e
        return default

    def write(self, data) -> int:
        return self._guard(self._file.write, data, default=memoryview(data).nbytes)

    def flush(self) -> None:
        self._guard(self._file.flush)

    def truncate(self, size: int | None = None) -> int:
        return self._guard(self._file.truncate, size, default=size)

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._guard(self._file.close)
        if self.error is not None:
            raise self.error

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _default_null(dtype: np.dtype) -> int:
    """A null for a masked integer column that names none (files astropy wrote)."""
    info = np.iinfo(dtype)
    return int(info.max if dtype.kind == "u" else info.min)


def _zero_rows(dtype: np.dtype) -> np.ndarray:
    """An empty column of this (sub)dtype; text comes back as str."""
    base = np.dtype(f"U{dtype.base.itemsize}") if dtype.base.kind == "S" else dtype.base
    return np.zeros((0, *dtype.shape), dtype=base)


class Hdf5Reader:
    def __init__(self, path: str, name: str):
        import h5py

        self.name = name
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise UserError(f"{name}: not a readable HDF5 file ({str(e).splitlines()[0]})") from e
        try:
            tables = []  # compound datasets: astropy-layout tables
            self._file.visititems(lambda key, obj: tables.append(key) if isinstance(
                obj, h5py.Dataset) and obj.dtype.names else None)
            if len(tables) > 1 and TABLE_PATH in tables:
                tables = [TABLE_PATH]
            if len(tables) > 1:
                raise UserError(f"{name}: HDF5 file holds {len(tables)} tables "
                                f"({', '.join(tables[:5])}); xptools reads files with one")
            if tables:
                self._open_compound(tables[0])
            else:
                self._open_columns()
        except BaseException:
            self._file.close()
            raise

    def _open_compound(self, path: str) -> None:
        """A table in astropy's layout: one compound dataset, maybe a YAML header beside it."""
        from astropy.table import meta as astropy_meta

        ds = self._file[path]
        if ds.ndim != 1:
            raise UserError(f"{self.name}: HDF5 dataset {path} is not a table "
                            f"({ds.ndim}-D records)")
        self._dataset, self._group = ds, None
        self.nrows = ds.shape[0]
        header_ds = self._file.get(path + META_SUFFIX)
        lines = header_ds[()] if header_ds is not None else ds.attrs.get(META_KEY)
        if lines is not None:  # serialize_meta=True (older astropy: a dataset attribute)
            try:
                header = astropy_meta.get_header_from_yaml(_attr(v) for v in lines)
            except Exception as e:  # astropy's YamlParseError has the reason in its cause
                reason = str(e) or str(e.__cause__) or type(e).__name__
                raise UserError(f"{self.name}: unreadable table header in HDF5 dataset "
                                f"{path + META_SUFFIX} ({reason.splitlines()[0]})") from e
            meta = dict(header.get("meta") or {})
            columns = {c.get("name"): c for c in header.get("datatype") or []}
        else:  # astropy's serialize_meta=False: keywords as dataset attributes, no units
            meta = {k: _attr(v) for k, v in ds.attrs.items()}
            columns = {}
        # astropy's masked columns: a data field and a boolean mask field; ints and floats are
        # read as xptools nulls (the sentinel, NaN), other kinds keep the mask as a column
        self._masks: dict[str, str] = {}
        for entry in (meta.pop("__serialized_columns__", None) or {}).values():
            if isinstance(entry, dict) and entry.get("__class__") == MASKED_CLASS:
                data, mask = entry.get("data", {}).get("name"), entry.get("mask", {}).get("name")
                if (data in ds.dtype.names and mask in ds.dtype.names
                        and ds.dtype[data].base.kind in "iuf"):
                    self._masks[data] = mask
        hidden = set(self._masks.values())
        self.schema = Table()
        for n in ds.dtype.names:
            if n in hidden:
                continue
            column = columns.get(n, {})
            null = None
            if n in self._masks and ds.dtype[n].base.kind in "iu":
                null = (column.get("meta") or {}).get("null")
                null = int(null) if null is not None else _default_null(ds.dtype[n].base)
            unit = column.get("unit")
            self.schema.add_column(n, _zero_rows(ds.dtype[n]),
                                   unit=str(unit) if unit is not None else None,
                                   description=column.get("description"), null=null)
        history = meta.pop("HISTORY", None)
        if history is not None:
            self.schema.history = [str(v) for v in np.atleast_1d(history)]
        # keywords are scalars in every other format: richer astropy meta is left out
        self.schema.meta = {k: v for k, v in meta.items()
                            if isinstance(v, (str, int, float, bool))}

    def _open_columns(self) -> None:
        """The layout of older xptools versions: one dataset per column in one group."""
        import h5py

        group = self._file
        datasets = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
        if not datasets:
            groups = [v for v in group.values() if isinstance(v, h5py.Group)]
            if len(groups) == 1:
                group = groups[0]
                datasets = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
        if not datasets:
            raise UserError(f"{self.name}: HDF5 file holds no table (no compound dataset, and "
                            f"no datasets at its top level)")
        order = group.attrs.get("columns")
        names = json.loads(_attr(order)) if order is not None else datasets
        self._dataset, self._group, self._masks = None, group, {}
        lengths = {group[n].shape[0] if group[n].shape else -1 for n in names}
        if len(lengths) != 1 or -1 in lengths:
            raise UserError(f"{self.name}: HDF5 datasets are not columns of one table "
                            f"(first dimensions {sorted(lengths)})")
        self.nrows = lengths.pop()
        self.schema = Table()
        for n in names:
            ds = group[n]
            null = ds.attrs.get("null")
            self.schema.add_column(n, _zero_rows(np.dtype((ds.dtype, ds.shape[1:]))),
                                   unit=_attr(ds.attrs.get("unit")) or None,
                                   description=_attr(ds.attrs.get("description")) or None,
                                   null=int(null) if null is not None else None)
        for key, value in group.attrs.items():
            if key == "HISTORY":
                self.schema.history = [_attr(v) for v in np.atleast_1d(value)]
            elif key != "columns":
                self.schema.meta[key] = _attr(value)

    def _read(self, names: list[str], start: int, stop: int) -> dict[str, np.ndarray]:
        if self._dataset is None:  # old layout
            return {n: self._group[n][start:stop] for n in names}
        fields = names + [self._masks[n] for n in names if n in self._masks]
        records = self._dataset.fields(fields)[start:stop]
        out = {}
        for n in names:
            data = np.ascontiguousarray(records[n])
            if n in self._masks:
                mask = records[self._masks[n]]
                data[mask] = np.nan if data.dtype.kind == "f" else self.schema.info[n].null
            out[n] = data
        return out

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        names = columns or self.schema.colnames
        for start in range(0, self.nrows, rows):
            out = self.schema.select(names)
            for n, data in self._read(names, start, start + rows).items():
                if data.dtype.kind == "S":
                    data = np.char.decode(data, "utf-8", errors="replace")
                out.columns[n] = data
            yield out

    def close(self):
        self._file.close()


def _astropy_model(table: Table, columns: dict[str, np.ndarray]):
    """The record dtype and YAML header astropy would write for this table.

    Built by astropy itself from a one-row astropy table with our columns: an integer column
    with a null value becomes a masked column, its one row masked so that astropy lays out the
    mask field (it leaves it out when nothing is masked), and the sentinel goes in its meta."""
    from astropy.table import Column, MaskedColumn
    from astropy.table import Table as AstropyTable
    from astropy.table import meta as astropy_meta
    from astropy.table import serialize
    from astropy.utils.data_info import serialize_context_as

    model = AstropyTable()
    for n, data in columns.items():
        info = table.info[n]
        row = np.zeros((1, *data.shape[1:]), dtype=data.dtype)
        about = {"name": n, "unit": info.unit or None, "description": info.description or None}
        if info.null is None:
            model.add_column(Column(row, **about))
        else:
            model.add_column(MaskedColumn(row, mask=True, meta={"null": int(info.null)}, **about))
    model.meta.update({k: _attr(v) for k, v in table.meta.items()})
    if table.history:
        model.meta["HISTORY"] = list(table.history)
    with serialize_context_as("hdf5"):
        plain = serialize.represent_mixins_as_columns(model)
    return plain.as_array().dtype, astropy_meta.get_yaml_from_table(plain)


class Hdf5Writer:
    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._dataset = None
        self._names: list[str] = []  # the columns of the first chunk
        self._nulls: dict[str, int] = {}  # masked columns and their sentinel, from the first chunk
        self._widths: dict[str, int] = {}  # text columns: bytes per value, set by the first chunk

    def _storable(self, name: str, a: np.ndarray) -> np.ndarray:
        if a.dtype.kind in "US":
            a = text_bytes(name, a, self._widths.get(name))
            self._widths[name] = a.dtype.itemsize
        elif a.dtype.kind == "O":
            raise UserError(f"column {name!r} holds Python objects and cannot be written to HDF5")
        return a

    def _create(self, table: Table, columns: dict[str, np.ndarray]) -> None:
        import h5py

        if not columns:
            raise UserError("a table without columns cannot be written to HDF5")
        dtype, header = _astropy_model(table, columns)
        self._names, self._dtype = list(columns), dtype
        self._nulls = {n: int(table.info[n].null) for n in columns
                       if table.info[n].null is not None}
        self._sink = _Sink(self.path)
        self._file = h5py.File(self._sink, "w")
        chunk_rows = max(1, CHUNK_BYTES // max(dtype.itemsize, 1))
        try:
            self._dataset = self._file.create_dataset(TABLE_PATH, shape=(0,), maxshape=(None,),
                                                      dtype=dtype, chunks=(chunk_rows,),
                                                      **COMPRESSION)
        except ValueError as e:  # HDF5 keeps a compound type in one 64 KiB header message
            if "header message is too large" not in str(e):
                raise
            raise UserError(f"{len(columns)} columns are more than one HDF5 table (a compound "
                            f"type of at most 64 KiB of names and types) can hold; write "
                            f"ECSV or VOTable, or fewer columns") from None
        self._file.create_dataset(TABLE_PATH + META_SUFFIX,
                                  data=np.array([line.encode("utf-8") for line in header]))

    def write(self, table: Table) -> None:
        columns = {n: self._storable(n, table[n]) for n in table.colnames}
        if self._dataset is None:
            self._create(table, columns)
        if list(columns) != self._names:
            raise UserError(f"{self.path}: a later chunk has other columns than the first")
        records = np.empty(len(table), dtype=self._dtype)
        for n, data in columns.items():
            records[n] = data
            if n in self._nulls:
                records[n + MASK_SUFFIX] = data == self._nulls[n]
        old = self._dataset.shape[0]
        self._dataset.resize(old + len(records), axis=0)
        self._dataset[old:] = records
        self._sink.check()

    def close(self) -> None:
        file, self._file, self._dataset = self._file, None, None
        if file is not None:
            file.close()
            self._sink.close()  # raises what failed on the way
