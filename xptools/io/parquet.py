"""Parquet tables through pyarrow, in the conventions of HATS catalogues (whose partitions are
Parquet files) and of astropy.

Written by xptools (``pyarrow.parquet``, ``astropy.table.Table.read`` and pandas read it):

- one column per table column; an array cell is a Parquet list column: an arrow
  ``fixed_size_list`` of the cell's values (``flux`` is ``fixed_size_list<float>[343]``). A
  cell of more than one dimension (a covariance matrix) is flattened, as astropy does, and its
  shape kept in the field's metadata (``shape``, JSON) and in astropy's header;
- an integer equal to the column's null value is a Parquet null; NaN stay NaN, and a missing
  array (a missing BP or RP spectrum) is a list of NaN, as astropy reads no null lists;
- per field, metadata ``unit``, ``description`` and (integers) ``null``: the sentinel the
  missing values take when read back;
- in the schema metadata, ``xptools``: JSON ``{"meta": {...}, "history": [...]}`` (the table
  keywords, ``XPTVERS``, ``XPTCMD``, ... and the HISTORY lines), and ``table_meta_yaml``:
  astropy's YAML header (units, descriptions, keywords), written with astropy's own helpers;
- one row group per chunk written, so a table is streamed to disk; snappy compression
  (pyarrow's and astropy's default, which every Parquet reader decodes);
- in the footer's key-value metadata, astropy's ``table::len::<name>``: the longest text of
  each text column (known only once every chunk is written; astropy looks for it in the
  schema, so it warns that it measures the text itself).

Read: any Parquet file whose columns are numbers, booleans, text (also dictionary-encoded;
dates and times as ISO text) or lists of numbers, and structs of these (the nested columns of
HATS catalogues such as the Multimodal Universe's: ``photometry``, ``spectral_coefficients``).
A struct's fields become columns of their own, named by the field (``phot_g_mean_mag``,
``coeff``), or ``parent.field`` where that name is taken by another column or field; a null
struct is a null in each field. A list column is a fixed-size array column:
``list`` and ``fixed_size_list`` alike, every non-null, non-empty list of a column of one
length (else a one-line error naming the column); a null or empty list is a row of NaN (of
0 for integers). Nulls elsewhere: NaN in floats, the column's null value in integers (ours, or
the type's minimum, the maximum for unsigned, where the file's statistics say there are
nulls), False in booleans, '' in text. Keywords, units and descriptions come from our metadata,
else from astropy's header (whose masked columns, a ``<name>.mask`` column beside the data,
become nulls). Rows are read a batch at a time (``ParquetFile.iter_batches``).
"""

from __future__ import annotations

import json
import re
from typing import Iterator

import numpy as np

from xptools.errors import UserError, first_line
from xptools.io.table import Table

META_KEY = b"xptools"                  # our JSON: table keywords and history
ASTROPY_KEY = b"table_meta_yaml"       # astropy's YAML header
MASKED_CLASS = "astropy.table.column.MaskedColumn"
PROBE_ROWS = 4096                      # rows per batch when looking for a list's length
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")


def _leaves(pa, fields, parent: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """(path, field) of every column of a schema, struct fields in place of their struct."""
    for field in fields:
        path = (*parent, field.name)
        if pa.types.is_struct(field.type):
            yield from _leaves(pa, [field.type.field(i) for i in range(field.type.num_fields)],
                               path)
        else:
            yield path, field


def _column_names(paths: list[tuple]) -> list[str]:
    """A column name per path: a struct field's own name where no other column or field has
    it, else the dotted path."""
    from collections import Counter

    seen = Counter(p[-1] for p in paths)
    return [p[0] if len(p) == 1 else p[-1] if seen[p[-1]] == 1 else ".".join(p)
            for p in paths]


def _default_null(dtype: np.dtype) -> int:
    info = np.iinfo(dtype)
    return int(info.max if dtype.kind == "u" else info.min)


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- reading ---------------------------------------------------------------------------------

class _Column:
    """How one Parquet field becomes a numpy column: the element dtype, the list widths (None
    where a variable-length list's width is not known yet), the shape to give a flat cell."""

    def __init__(self, name: str, base: np.dtype, widths: list, shape: tuple | None):
        self.name, self.base, self.widths, self.shape = name, base, widths, shape

    @property
    def cell(self) -> tuple:
        widths = tuple(w or 0 for w in self.widths)
        if self.shape is not None and len(widths) == 1 and int(np.prod(self.shape)) == widths[0]:
            return tuple(self.shape)
        return widths


def _element(pa, t, name: str, where: str) -> tuple[np.dtype, list]:
    """The numpy element dtype of an arrow type and its list levels (fixed width or None)."""
    widths = []
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or getattr(pa.types, "is_list_view", lambda _: False)(t):
        widths.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = t.value_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        base = np.dtype(np.float64)
    elif pa.types.is_boolean(t):
        base = np.dtype(bool)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        base = np.dtype(t.to_pandas_dtype())
    elif pa.types.is_decimal(t):
        base = np.dtype(np.float64)
    elif (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
          or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
          or pa.types.is_temporal(t)
          or getattr(pa.types, "is_string_view", lambda _: False)(t)
          or getattr(pa.types, "is_binary_view", lambda _: False)(t)):
        if widths:
            raise UserError(f"{where}: column {name!r} holds lists of {t}; xptools reads "
                            f"lists of numbers only")
        base = np.dtype(str)
    else:
        raise UserError(f"{where}: column {name!r} has Parquet type {t}, which xptools does "
                        f"not read (numbers, booleans, text and lists of numbers)")
    return base, widths


def _text(pa, pc, arr) -> np.ndarray:
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or getattr(pa.types, "is_binary_view", lambda _: False)(t):
        values = [b"" if v is None else v for v in arr.to_pylist()]
        return np.array([v.decode("utf-8", errors="replace") for v in values], dtype=str) \
            if values else np.zeros(0, dtype=str)
    if not pa.types.is_string(t):
        arr = pc.cast(arr, pa.string())  # dates and times as ISO text, string views
    values = pc.fill_null(arr, "").to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=str) if len(values) else np.zeros(0, dtype=str)


def _values(pa, pc, arr, base: np.dtype, null: int | None) -> np.ndarray:
    """A flat arrow array (no lists) as a writable numpy array; nulls as xptools has them."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if base.kind == "U":
        return _text(pa, pc, arr)
    if pa.types.is_null(arr.type):
        return np.full(len(arr), np.nan, dtype=base)
    if pa.types.is_decimal(arr.type):
        arr = pc.cast(arr, pa.float64())
    if arr.null_count:
        fill = (np.nan if base.kind == "f" else False if base.kind == "b" else
                null if null is not None else 0)
        arr = pc.fill_null(arr, pa.scalar(fill, arr.type))
    return np.asarray(arr.to_numpy(zero_copy_only=False, writable=True), dtype=base)


class ParquetReader:
    def __init__(self, path: str, name: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.name = name
        try:
            self._file = pq.ParquetFile(path, memory_map=False)
            schema = self._file.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UserError(f"{name}: not a readable Parquet file ({first_line(e)})") from e
        try:
            self._open(pa, schema)
        except BaseException:
            self._file.close()
            raise

    def _open(self, pa, schema) -> None:
        metadata = self._metadata = self._file.metadata
        self.nrows = metadata.num_rows
        md = schema.metadata or {}
        ours = md.get(META_KEY)
        # astropy's header: units and keywords of files astropy wrote (ours has its own)
        header = self._astropy_header(md.get(ASTROPY_KEY)) if ours is None else {}
        meta = dict(header.get("meta") or {})
        described = {c.get("name"): c for c in header.get("datatype") or []}
        # astropy's masked columns: a data field and a boolean mask field
        self._masks: dict[str, str] = {}
        names = schema.names
        for entry in (meta.pop("__serialized_columns__", None) or {}).values():
            if isinstance(entry, dict) and entry.get("__class__") == MASKED_CLASS:
                data, mask = entry.get("data", {}).get("name"), entry.get("mask", {}).get("name")
                # numbers become nulls; other kinds keep the mask as a column (as in HDF5)
                if data in names and mask in names and (
                        pa.types.is_integer(schema.field(data).type)
                        or pa.types.is_floating(schema.field(data).type)):
                    self._masks[data] = mask
        if ours is not None:
            try:
                blob = json.loads(ours)
                meta = dict(blob.get("meta") or {})
                history = [str(v) for v in blob.get("history") or []]
            except (ValueError, AttributeError, TypeError) as e:
                raise UserError(f"{self.name}: unreadable xptools metadata in the Parquet "
                                f"schema ({first_line(e)})") from e
        else:
            history = meta.pop("HISTORY", None)
            history = [str(v) for v in np.atleast_1d(history)] if history is not None else []
        leaves = {metadata.schema.column(j).path: j for j in range(metadata.num_columns)}
        hidden = set(self._masks.values())
        self._columns: dict[str, _Column] = {}
        self._paths: dict[str, tuple] = {}   # column -> (top-level field, struct fields ...)
        self.schema = Table(history=history)
        self.schema.meta = {k: v for k, v in meta.items()
                            if isinstance(v, (str, int, float, bool))}
        paths, fields = zip(*_leaves(pa, schema)) if len(schema) else ((), ())
        for n, path, field in zip(_column_names(list(paths)), paths, fields):
            if n in hidden or _PANDAS_INDEX.match(n) or n in self._columns:
                continue
            self._paths[n] = path
            about = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                     for k, v in (field.metadata or {}).items()}
            column = described.get(n, {})
            base, widths = _element(pa, field.type, n, self.name)
            shape = self._shape(n, about, column)
            null = about.get("null", (column.get("meta") or {}).get("null"))
            if base.kind in "iu" and not widths:
                if null is not None:
                    try:
                        null = int(null)
                    except ValueError:
                        raise UserError(f"{self.name}: column {n!r}: null value {null!r} is "
                                        f"not an integer") from None
                elif n in self._masks or (field.nullable
                                          and self._may_be_null(leaves.get(".".join(path)))):
                    null = _default_null(base)
            else:
                null = None
            unit = about.get("unit", column.get("unit"))
            self._columns[n] = _Column(n, base, widths, shape)
            self.schema.add_column(n, np.zeros(0, dtype=base), unit=str(unit) if unit else None,
                                   description=about.get("description",
                                                         column.get("description")) or None,
                                   null=null)
        self._probe([c for c in self._columns.values() if None in c.widths])
        for n, c in self._columns.items():
            base = c.base
            if base.kind == "U":  # astropy records the longest text, xptools in the footer
                key = b"table::len::" + n.encode("utf-8")
                width = md.get(key) or (metadata.metadata or {}).get(key) or b""
                base = np.dtype(f"U{int(width)}") if width.isdigit() and int(width) else base
            self.schema.columns[n] = np.zeros((0, *c.cell), dtype=base)

    def _astropy_header(self, text: bytes | None) -> dict:
        if text is None:
            return {}
        from astropy.table import meta as astropy_meta

        try:
            return astropy_meta.get_header_from_yaml(
                text.decode("utf-8", errors="replace").split("\n")) or {}
        except Exception as e:  # astropy's YamlParseError has the reason in its cause
            reason = str(e) or str(e.__cause__) or type(e).__name__
            raise UserError(f"{self.name}: unreadable astropy header (table_meta_yaml) in the "
                            f"Parquet schema ({reason.splitlines()[0]})") from e

    def _shape(self, name: str, about: dict, column: dict) -> tuple | None:
        """The shape of a flattened multi-dimensional cell: ours, or astropy's subtype."""
        text = about.get("shape")
        try:
            if text is not None:
                return tuple(int(v) for v in json.loads(text))
            m = re.match(r"^\w+\[([\d,\s]+)\]$", str(column.get("subtype", "")))
            return tuple(int(v) for v in m.group(1).split(",")) if m else None
        except (ValueError, TypeError):
            raise UserError(f"{self.name}: column {name!r}: unreadable cell shape "
                            f"{text!r}") from None

    def _may_be_null(self, leaf: int | None) -> bool:
        """Whether an integer column may hold nulls: its statistics say so, or are missing."""
        if leaf is None:
            return True
        for i in range(self._metadata.num_row_groups):
            stats = self._metadata.row_group(i).column(leaf).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return True
        return False

    def _probe(self, columns: list[_Column]) -> None:
        """The widths of variable-length list columns: the length of their first non-null,
        non-empty list at each level (every row is checked against it when read); a column
        with none has cells of width 0."""
        import pyarrow as pa
        import pyarrow.compute as pc

        pending = {c.name: c for c in columns}
        if not pending:
            return
        try:
            for batch in self._file.iter_batches(batch_size=PROBE_ROWS,
                                                 columns=self._top_level(list(pending))):
                for name in list(pending):
                    column = pending[name]
                    arr, level = self._array(batch, name), 0
                    while level < len(column.widths) and len(arr):
                        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy()
                        present = np.flatnonzero(lengths > 0)
                        if not len(present):
                            break
                        if column.widths[level] is None:
                            column.widths[level] = int(lengths[present[0]])
                        self._check_lengths(column, lengths, column.widths[level])
                        arr, level = arr.flatten(), level + 1
                    if None not in column.widths:
                        del pending[name]
                if not pending:
                    break
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.name}: cannot read the Parquet data "
                            f"({first_line(e)})") from e

    def _check_lengths(self, column: _Column, lengths: np.ndarray, width: int) -> None:
        bad = np.flatnonzero((lengths > 0) & (lengths != width))
        if len(bad):
            raise UserError(f"{self.name}: column {column.name!r}: arrays of different lengths "
                            f"({width} and {int(lengths[bad[0]])}); xptools reads list columns "
                            f"whose arrays all have one length")

    def _cells(self, pa, pc, arr, column: _Column, level: int = 0) -> np.ndarray:
        """A list array as an (n, *widths) numpy array; null and empty lists -> NaN (0)."""
        if level == len(column.widths):
            return _values(pa, pc, arr, column.base, None)
        width = column.widths[level] or 0
        inner = tuple(w or 0 for w in column.widths[level + 1:])
        n = len(arr)
        empty = np.nan if column.base.kind == "f" else False if column.base.kind == "b" else 0
        if pa.types.is_null(arr.type):
            return np.full((n, width, *inner), empty, dtype=column.base)
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy()
        present = lengths > 0
        self._check_lengths(column, lengths, width)
        values = self._cells(pa, pc, arr.flatten(), column, level + 1)
        values = values.reshape(int(present.sum()), width, *inner)
        if present.all():
            return values
        out = np.full((n, width, *inner), empty, dtype=column.base)
        out[present] = values
        return out

    def _top_level(self, names: list[str]) -> list[str]:
        return list(dict.fromkeys(self._paths.get(n, (n,))[0] for n in names))

    def _array(self, batch, name: str):
        """A column's arrow array in a record batch; a struct field with its struct's nulls."""
        path = self._paths.get(name, (name,))
        arr = batch.column(path[0])
        for field in path[1:]:
            arr = arr.flatten()[arr.type.get_field_index(field)]
        return arr

    def _convert(self, pa, pc, batch, name: str) -> np.ndarray:
        column = self._columns[name]
        arr = self._array(batch, name)
        if column.widths:
            data = self._cells(pa, pc, arr, column)
            return data.reshape(len(data), *column.cell)
        data = _values(pa, pc, arr, column.base, self.schema.info[name].null)
        if name in self._masks:  # astropy's masked column
            mask = _values(pa, pc, batch.column(self._masks[name]), np.dtype(bool), None)
            if data.dtype.kind == "f":
                data[mask] = np.nan
            elif data.dtype.kind in "iu":
                data[mask] = self.schema.info[name].null
        return data

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        import pyarrow as pa
        import pyarrow.compute as pc

        names = columns or self.schema.colnames
        read = self._top_level(names + [self._masks[n] for n in names if n in self._masks])
        batches = self._file.iter_batches(batch_size=max(1, min(rows, self.nrows or 1)),
                                          columns=read, use_pandas_metadata=False)
        start = 0
        while True:
            out = self.schema.select(names)
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                for n in names:
                    out.columns[n] = self._convert(pa, pc, batch, n)
            except MemoryError:
                raise
            except (pa.ArrowException, OSError) as e:
                raise UserError(f"{self.name}: cannot read rows from {start} on "
                                f"({first_line(e)})") from e
            start += batch.num_rows
            yield out

    def close(self):
        self._file.close()


# -- writing ---------------------------------------------------------------------------------

def _astropy_yaml(table: Table) -> str:
    """astropy's YAML header for this table (types, units, descriptions, keywords), built by
    astropy itself from an empty astropy table with our columns."""
    from astropy.table import Column
    from astropy.table import Table as AstropyTable
    from astropy.table import meta as astropy_meta

    model = AstropyTable()
    for n in table.colnames:
        data, info = table[n], table.info[n]
        base = data.dtype if data.dtype.kind != "S" else np.dtype(str)
        model.add_column(Column(np.zeros((0, *data.shape[1:]), dtype=base), name=n,
                                unit=info.unit or None, description=info.description or None,
                                meta={"null": int(info.null)} if info.null is not None else None))
    model.meta.update({k: _jsonable(v) for k, v in table.meta.items()})
    if table.history:
        model.meta["HISTORY"] = list(table.history)
    return "\n".join(astropy_meta.get_yaml_from_table(model))


class ParquetWriter:
    def __init__(self, path: str):
        self.path = path
        self._writer = None
        self._schema = None
        self._nulls: dict[str, int] = {}  # integer columns with a null value (first chunk)
        self._text: dict[str, int] = {}  # text columns: the longest value, in characters

    def _array(self, pa, name: str, data: np.ndarray):
        if data.dtype.kind == "O":
            raise UserError(f"column {name!r} holds Python objects and cannot be written to "
                            f"Parquet")
        n = len(data)
        if data.dtype.kind == "S":
            data = np.char.decode(data, "utf-8", errors="replace")
        if data.dtype.kind == "U":
            longest = int(np.char.str_len(data).max()) if data.size else 0
            self._text[name] = max(self._text.get(name, 0), longest)
        elif data.dtype.kind in "iufb" and not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        if data.ndim == 1:
            null = self._nulls.get(name)
            mask = data == null if null is not None else None
            return pa.array(data, mask=mask if mask is not None and mask.any() else None)
        width = int(np.prod(data.shape[1:]))
        # a missing spectrum stays a list of NaN, not a null list: astropy cannot read those
        flat = np.ascontiguousarray(data).reshape(n * width)
        if not width:  # cells of no values (a FITS column of empty arrays): empty lists
            return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array(flat))
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)

    def _create(self, pa, pq, table: Table, arrays: list) -> None:
        fields = []
        for n, arr in zip(table.colnames, arrays):
            info, data = table.info[n], table[n]
            about = {}
            if info.unit:
                about["unit"] = info.unit
            if info.description:
                about["description"] = info.description
            if n in self._nulls:
                about["null"] = str(self._nulls[n])
            if data.ndim > 2:
                about["shape"] = json.dumps(list(data.shape[1:]))
            fields.append(pa.field(n, arr.type, metadata=about or None))
        blob = {"meta": {k: _jsonable(v) for k, v in table.meta.items()},
                "history": list(table.history)}
        metadata = {META_KEY: json.dumps(blob).encode("utf-8"),
                    ASTROPY_KEY: _astropy_yaml(table).encode("utf-8")}
        self._schema = pa.schema(fields, metadata=metadata)
        self._writer = pq.ParquetWriter(self.path, self._schema, compression="snappy")

    def write(self, table: Table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._nulls = {n: int(table.info[n].null) for n in table.colnames
                           if table.info[n].null is not None and table[n].ndim == 1
                           and table[n].dtype.kind in "iu"}
        arrays = [self._array(pa, n, table[n]) for n in table.colnames]
        if self._writer is None:
            self._create(pa, pq, table, arrays)
        if table.colnames != self._schema.names or any(
                a.type != f.type for a, f in zip(arrays, self._schema)):
            raise UserError(f"{self.path}: a later chunk has other columns or types than the "
                            f"first")
        if len(table):
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema),
                                     row_group_size=len(table))

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            if self._text and hasattr(writer, "add_key_value_metadata"):
                # the width of text columns (in the footer: known only now, so not in the
                # schema where astropy looks, but `xptools info` shows it)
                writer.add_key_value_metadata({f"table::len::{n}": str(w)
                                               for n, w in self._text.items()})
            writer.close()
