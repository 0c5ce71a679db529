"""FITS binary tables through fitsio (cfitsio): chunked reads by row range, appending writes.

The Gaia archive writes array columns as variable-length arrays (TFORM 'PD(55)'); a row whose
array is empty (a missing BP or RP spectrum) is read as NaN. Array cells of our own output are
fixed-length columns (TFORM '343D', TDIM for 2-D cells).
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.io.table import ColumnInfo, Table

# Header keywords that describe the table structure rather than its content.
_STRUCTURAL = re.compile(
    r"^(XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|THEAP|EXTNAME|EXTVER|CHECKSUM|DATASUM|"
    r"COMMENT|HISTORY|CONTINUE|T(TYPE|FORM|UNIT|NULL|DIM|COMM|UCD|UTYP|DISP|ZERO|SCAL|TYP)\d+|"
    r"TUTYP\d+|TUCD\d+|DATE-HDU|STILVERS|STILCLAS|)$")


_HISTORY_WIDTH = 72


def _native(a: np.ndarray) -> np.ndarray:
    """Native byte order, and text as str (FITS stores bytes)."""
    if a.dtype.kind == "S":
        return np.char.decode(a, "ascii", errors="replace")
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
            raise UserError(f"{name}: not a readable FITS file ({_first_line(e)})") from e
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
        dtype, _, is_var = self._hdu.get_rec_dtype(vstorage="fixed")
        self._var = {n for n, v in zip(dtype.names, is_var) if v}
        self._dtype = dtype
        self.schema = Table()
        for i, n in enumerate(dtype.names, start=1):
            sub = dtype[n]
            cell = sub.shape
            base = _native(np.zeros(0, sub.base)).dtype
            null = header.get(f"TNULL{i}")
            self.schema.add_column(n, np.zeros((0, *cell), dtype=base),
                                   unit=(header.get(f"TUNIT{i}") or None),
                                   description=(header.get(f"TCOMM{i}") or None),
                                   null=int(null) if null is not None and base.kind in "iu" else None)
        wrapped = False
        for rec in header.records():
            key = rec["name"]
            if key == "HISTORY":  # cfitsio wraps long HISTORY text into 72-character cards
                text = str(rec["value"])
                if wrapped and self.schema.history:
                    self.schema.history[-1] += text
                else:
                    self.schema.history.append(text)
                wrapped = len(text) == _HISTORY_WIDTH
            elif not _STRUCTURAL.match(key) and rec.get("value") is not None:
                self.schema.meta[key] = rec["value"]

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        names = columns or self.schema.colnames
        fixed = [n for n in names if n not in self._var]
        var = [n for n in names if n in self._var]
        for start in range(0, self.nrows, rows):
            stop = min(start + rows, self.nrows)
            out = self.schema.select(names).rows(slice(0, 0))
            try:
                data = self._hdu.read(rows=np.arange(start, stop), columns=fixed) if fixed else None
                vdata = (self._hdu.read(rows=np.arange(start, stop), columns=var,
                                        vstorage="object") if var else None)
            except (OSError, ValueError) as e:
                raise UserError(f"{self.name}: cannot read rows {start}-{stop - 1} "
                                f"({_first_line(e)})") from e
            for n in names:
                if n in self._var:
                    out.columns[n] = _stack_var(vdata[n], self.schema[n])
                else:
                    out.columns[n] = _native(data[n])
            yield out

    def close(self):
        self._fits.close()


def _stack_var(cells: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Variable-length array cells -> a fixed (rows, K) array; short or empty cells -> NaN."""
    k = like.shape[1]
    fill = np.nan if like.dtype.kind == "f" else 0
    out = np.full((len(cells), k), fill, dtype=like.dtype)
    lengths = np.fromiter((len(c) for c in cells), dtype=np.int64, count=len(cells))
    full = np.flatnonzero(lengths == k)
    if len(full):
        out[full] = np.concatenate([cells[i] for i in full]).reshape(len(full), k)
    for i in np.flatnonzero((lengths > 0) & (lengths < k)):
        out[i, : lengths[i]] = cells[i]
    return out


class FitsWriter:
    def __init__(self, path: str):
        self.path = path
        self._fits = None

    def write(self, table: Table) -> None:
        import fitsio

        names = table.colnames
        for n in names:
            if table[n].dtype.kind == "O":
                raise UserError(f"column {n!r} holds Python objects and cannot be written to FITS")
        rec = np.empty(len(table), dtype=[(n, _fits_dtype(table[n]), table[n].shape[1:])
                                          for n in names])
        for n in names:
            rec[n] = table[n]
        if self._fits is None:
            self._fits = fitsio.FITS(self.path, "rw", clobber=True)
            units = [table.info[n].unit or "" for n in names]
            self._fits.write_table(rec, units=units, extname="XPTOOLS")
            hdu = self._fits[-1]
            for i, n in enumerate(names, start=1):
                info = table.info[n]
                if info.null is not None:
                    hdu.write_key(f"TNULL{i}", int(info.null))
                if info.description:
                    hdu.write_key(f"TCOMM{i}", info.description)
            for key, value in table.meta.items():
                hdu.write_key(key, value)
            for line in table.history:
                hdu.write_history(line)
        elif len(rec):
            self._fits[-1].append(rec)

    def close(self) -> None:
        if self._fits is not None:
            self._fits.close()


def _fits_dtype(a: np.ndarray) -> np.dtype:
    if a.dtype.kind == "U":  # FITS strings are bytes
        return np.dtype(f"S{max(a.dtype.itemsize // 4, 1)}")
    return a.dtype


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
