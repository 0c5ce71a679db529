"""FITS binary tables through fitsio (cfitsio): chunked reads by row range, appending writes.

The Gaia archive writes array columns as variable-length arrays (TFORM 'PD(55)'); a row whose
array is empty (a missing BP or RP spectrum) is read as NaN. Array cells of our own output are
fixed-length columns (TFORM '343D', TDIM for 2-D cells).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Iterator

import numpy as np

from xptools.errors import UserError, first_line
from xptools.io.table import Table, text_bytes

# Header keywords that describe the table structure rather than its content.
_STRUCTURAL = re.compile(
    r"^(XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|THEAP|EXTNAME|EXTVER|CHECKSUM|DATASUM|"
    r"COMMENT|HISTORY|CONTINUE|T(TYPE|FORM|UNIT|NULL|DIM|COMM|UCD|UTYP|DISP|ZERO|SCAL|TYP)\d+|"
    r"TUTYP\d+|TUCD\d+|DATE-HDU|STILVERS|STILCLAS|)$")


_HISTORY_PIECE = 70   # HISTORY text per card; longer lines continue on the next card
_CONTINUED = "\\"    # ... marked by a trailing backslash
_VLA_TYPES = {"D": "f8", "E": "f4", "K": "i8", "J": "i4", "I": "i2", "B": "u1", "L": "?"}


def _native(a: np.ndarray) -> np.ndarray:
    """Native byte order, and text as str (FITS stores bytes)."""
    if a.dtype.kind == "S":  # (the width given: an empty array would decode to <U1)
        return np.char.decode(a, "ascii", errors="replace").astype(f"U{a.dtype.itemsize}")
    if a.dtype.kind == "U" or a.dtype.byteorder in ("=", "|"):
        return a
    return a.astype(a.dtype.newbyteorder("="))


class FitsReader:
    def __init__(self, path: str, name: str):
        import fitsio

        self.name = name
        try:
            self._fits = fitsio.FITS(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{name}: not a readable FITS file ({first_line(e)})") from e
        hdus = [h for h in self._fits if h.get_exttype() in ("BINARY_TBL", "ASCII_TBL")]
        if not hdus:
            raise UserError(f"{name}: FITS file has no table extension")
        self._hdu = hdus[0]
        end = self._hdu.get_offsets()["data_end"]
        size = os.path.getsize(path)
        if size < end:
            raise UserError(f"{name}: truncated FITS file ({size} bytes, the header "
                            f"promises {end})")
        self.nrows = self._hdu.get_nrows()
        header = self._hdu.read_header()
        with warnings.catch_warnings():  # fitsio warns about empty variable-length columns
            warnings.simplefilter("ignore", fitsio.FITSRuntimeWarning)
            dtype, _, is_var = self._hdu.get_rec_dtype(vstorage="fixed")
        self._var = {n for n, v in zip(dtype.names, is_var) if v}
        self._heap = _Heap(path, header, self._hdu.get_offsets()["data_start"]) if self._var else None
        self.schema = Table()
        for i, n in enumerate(dtype.names, start=1):
            sub = dtype[n]
            cell = sub.shape
            if sub.kind == "O":  # a variable-length column whose arrays are all empty
                sub = np.dtype(_VLA_TYPES.get(str(header.get(f"TFORM{i}", ""))[1:2], "f8"))
                cell = (0,)
            base = _native(np.zeros(0, sub.base)).dtype
            null = header.get(f"TNULL{i}")
            self.schema.add_column(n, np.zeros((0, *cell), dtype=base),
                                   unit=(header.get(f"TUNIT{i}") or None),
                                   description=(header.get(f"TCOMM{i}") or None),
                                   null=int(null) if null is not None and base.kind in "iu" else None)
        continued = False
        for rec in header.records():
            key = rec["name"]
            if key == "HISTORY":
                text = str(rec["value"]).rstrip()
                piece = text[:-len(_CONTINUED)] if text.endswith(_CONTINUED) else text
                if continued:
                    self.schema.history[-1] += piece
                else:
                    self.schema.history.append(piece)
                continued = text.endswith(_CONTINUED)
            elif key and not _STRUCTURAL.match(key) and rec.get("value") is not None:
                self.schema.meta[key] = rec["value"]

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        names = columns or self.schema.colnames
        fixed = [n for n in names if n not in self._var]
        var = [n for n in names if n in self._var]
        for start in range(0, self.nrows, rows):
            stop = min(start + rows, self.nrows)
            out = self.schema.select(names).rows(slice(0, 0))
            try:
                data = self._hdu[fixed][start:stop] if fixed else None
                arrays = self._heap.read(var, start, stop, self.schema) if var else {}
                for n in names:
                    out.columns[n] = arrays[n] if n in self._var else _native(data[n])
            except (OSError, ValueError) as e:
                raise UserError(f"{self.name}: cannot read rows {start}-{stop - 1} "
                                f"({first_line(e)})") from e
            yield out

    def close(self):
        if self._heap is not None:
            self._heap.close()
        self._fits.close()


class _Heap:
    """Variable-length array columns read straight from the file's heap.

    A 'P' ('Q') column holds per row a descriptor (count, offset) of two big-endian int32
    (int64); the arrays lie in the heap, THEAP bytes after the start of the table data. A chunk
    of rows reads its descriptors, then the span of heap they point into, in one read each (so
    memory stays bounded); rows written one after the other have equally spaced offsets, so a
    run of full-length arrays is one strided view, copied once. (fitsio makes one Python object
    per cell, several times slower.)
    """

    _DESCRIPTOR = {"P": np.dtype(">i4"), "Q": np.dtype(">i8")}
    _ELEMENT = {"D": ">f8", "E": ">f4", "K": ">i8", "J": ">i4", "I": ">i2", "B": "u1"}
    _SIZE = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16,
             "P": 8, "Q": 16}

    def __init__(self, path: str, header, data_start: int):
        self._file = open(path, "rb", buffering=0)
        self._row_bytes = int(header["NAXIS1"])
        self._data = data_start
        self._heap = data_start + int(header.get("THEAP", self._row_bytes * header["NAXIS2"]))
        self._size = os.path.getsize(path)
        self._columns = {}
        offset = 0
        for i in range(1, int(header["TFIELDS"]) + 1):
            form = str(header[f"TFORM{i}"]).strip()
            m = re.match(r"^(\d*)([LXBIJKAEDCMPQ])(\w?)", form)
            if not m:
                raise UserError(f"unsupported FITS column format TFORM{i} = {form!r}")
            repeat = int(m.group(1)) if m.group(1) else 1
            code = m.group(2)
            if code in "PQ" and repeat:
                if m.group(3) not in self._ELEMENT or f"TSCAL{i}" in header or f"TZERO{i}" in header:
                    raise UserError(f"unsupported variable-length column format {form!r}")
                self._columns[header[f"TTYPE{i}"]] = (offset, self._DESCRIPTOR[code],
                                                      np.dtype(self._ELEMENT[m.group(3)]))
            offset += (repeat + 7) // 8 if code == "X" else repeat * self._SIZE[code]
        if offset != self._row_bytes:
            raise UserError(f"FITS table rows are {self._row_bytes} bytes, its columns add up "
                            f"to {offset}")

    def _read(self, position: int, size: int) -> np.ndarray:
        data = np.empty(size, dtype=np.uint8)
        self._file.seek(position)
        if self._file.readinto(data) != size:
            raise UserError("truncated FITS heap (the file ends inside the array data)")
        return data

    def read(self, names: list[str], start: int, stop: int, schema: Table) -> dict:
        """Rows start..stop of variable-length columns as (n, K) arrays; empty cells -> NaN."""
        n = stop - start
        rows = self._read(self._data + start * self._row_bytes, n * self._row_bytes)
        rows = rows.reshape(n, self._row_bytes)
        cells = {}
        for name in names:
            col, desc, element = self._columns[name]
            raw = rows[:, col:col + 2 * desc.itemsize].copy().view(desc).reshape(n, 2)
            cells[name] = (raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64), element)
        # the heap span each column needs; overlapping spans (rows written one after the
        # other) are read once, separate ones (columns written one after the other) apart
        spans = {}
        for name, (counts, offsets, element) in cells.items():
            has = counts > 0
            spans[name] = ((int(offsets[has].min()), int((offsets + counts * element.itemsize)
                                                           [has].max())) if has.any() else (0, 0))
            if spans[name][0] < 0 or self._heap + spans[name][1] > self._size:
                raise UserError("FITS array descriptors point outside the file (truncated or "
                                "corrupt heap)")
        out = {}
        for lo, hi, members in _merge(spans):
            heap = self._read(self._heap + lo, hi - lo)
            for name in members:
                counts, offsets, element = cells[name]
                out[name] = self._cells(heap, counts, offsets - lo, element, schema[name])
        return out

    @staticmethod
    def _cells(heap, counts, offsets, element, like) -> np.ndarray:
        n, k = len(counts), like.shape[1]
        full = np.flatnonzero(counts == k)
        out = np.empty((n, k), dtype=like.dtype)
        if len(full) < n:
            out[counts != k] = np.nan if like.dtype.kind == "f" else 0
        if len(full) and k:
            step = np.diff(offsets[full])
            next_row = np.diff(full) == 1
            values, times = np.unique(step[next_row & (step > 0)], return_counts=True)
            stride = int(values[np.argmax(times)]) if len(values) else 1
            for run in np.split(full, np.flatnonzero(~next_row | (step != stride)) + 1):
                out[run[0]:run[-1] + 1] = np.ndarray((len(run), k), dtype=element, buffer=heap,
                                                     offset=int(offsets[run[0]]),
                                                     strides=(stride, element.itemsize))
        for i in np.flatnonzero((counts > 0) & (counts < k)):  # short arrays: NaN-padded
            out[i, :counts[i]] = np.ndarray((int(counts[i]),), dtype=element, buffer=heap,
                                            offset=int(offsets[i]))
        return out

    def close(self):
        self._file.close()


def _merge(spans: dict[str, tuple[int, int]]) -> list[tuple[int, int, list[str]]]:
    """Overlapping (start, stop) spans merged: [(start, stop, names), ...]."""
    merged: list[tuple[int, int, list[str]]] = []
    for name, (lo, hi) in sorted(spans.items(), key=lambda item: item[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi), merged[-1][2] + [name])
        else:
            merged.append((lo, hi, [name]))
    return merged


class FitsWriter:
    """fitsio writes the header (of an empty table); the rows are then appended as raw
    big-endian bytes (FITS 4.0, section 7.3), which releases the GIL so that writing overlaps
    computing, and NAXIS2 and the padding are set on close."""

    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._dtype: np.dtype | None = None  # the on-disk row layout
        self._widths: dict[str, int] = {}  # text columns: bytes per value, set by the first chunk
        self._rows = 0

    def _records(self, table: Table) -> np.ndarray:
        """The table as FITS rows: big-endian numbers, 'T'/'F' logicals, NUL-padded text."""
        columns = {}
        for n in table.colnames:
            data = table[n]
            if data.dtype.kind == "O":
                raise UserError(f"column {n!r} holds Python objects and cannot be written to FITS")
            if data.dtype.kind in "US":  # FITS text is ASCII bytes
                data = text_bytes(n, data, self._widths.get(n), "ascii")
                self._widths[n] = data.dtype.itemsize
            elif data.dtype.kind == "b":
                data = np.where(data, b"T", b"F").astype("S1")
            columns[n] = data
        dtype = np.dtype([(n, c.dtype.newbyteorder(">") if c.dtype.kind in "iuf" else c.dtype,
                           c.shape[1:]) for n, c in columns.items()])
        if self._dtype is not None and dtype != self._dtype:
            raise UserError(f"{self.path}: a later chunk has other columns or types than the "
                            f"first")
        rec = np.empty(len(table), dtype=dtype)
        for n, c in columns.items():
            rec[n] = c
        return rec

    def _create(self, table: Table, rec: np.ndarray) -> None:
        import fitsio

        names = table.colnames
        empty = np.zeros(0, dtype=[(n, np.dtype("?") if rec.dtype[n].base == np.dtype("S1")
                                    and table[n].dtype.kind == "b" else rec.dtype[n].base,
                                    rec.dtype[n].shape) for n in names])
        with fitsio.FITS(self.path, "rw", clobber=True) as fits:
            fits.write_table(empty, units=[table.info[n].unit or "" for n in names],
                             extname="XPTOOLS")
            hdu = fits[-1]
            for i, n in enumerate(names, start=1):
                info = table.info[n]
                if info.null is not None:
                    hdu.write_key(f"TNULL{i}", int(info.null))
                if info.description:
                    hdu.write_key(f"TCOMM{i}", info.description)
            for key, value in table.meta.items():
                hdu.write_key(key, value)
            for line in table.history:  # pieces cfitsio will not rewrap, joined when read
                pieces = [line[i:i + _HISTORY_PIECE] for i in range(0, len(line),
                                                                   _HISTORY_PIECE)] or [""]
                for piece in pieces[:-1]:
                    hdu.write_history(piece + _CONTINUED)
                hdu.write_history(pieces[-1])
            offsets = hdu.get_offsets()
            if hdu.read_header()["NAXIS1"] != rec.dtype.itemsize:
                raise RuntimeError("fitsio laid the row out differently than expected")
        self._header_start, self._data_start = offsets["header_start"], offsets["data_start"]
        self._file = open(self.path, "r+b")
        self._file.seek(self._data_start)
        self._file.truncate()  # drop the padding of the empty table
        self._dtype = rec.dtype

    def write(self, table: Table) -> None:
        rec = self._records(table)
        if self._file is None:
            self._create(table, rec)
        self._file.write(memoryview(rec).cast("B"))
        self._rows += len(rec)

    def close(self) -> None:
        if self._file is None:
            return
        size = self._data_start + self._rows * self._dtype.itemsize
        self._file.write(b"\0" * (-size % 2880))  # pad the data to whole FITS blocks
        self._file.seek(self._header_start)
        header = self._file.read(self._data_start - self._header_start)
        for at in range(0, len(header), 80):
            if header[at:at + 8] == b"NAXIS2  ":
                self._file.seek(self._header_start + at + 10)
                self._file.write(f"{self._rows:>20d}".encode())
                break
        else:
            raise RuntimeError("no NAXIS2 card in the header fitsio wrote")
        self._file.close()
        self._file = None
