"""Table I/O for every subcommand: FITS, HDF5, Parquet, CSV, ECSV and VOTable, files or
stdin/stdout.

- The format comes from ``format=`` (the ``--format`` option), else the file extension, else
  (stdin, odd extensions) the first bytes of the data. ``.gz`` is handled transparently.
- ``-`` is stdin or stdout. Input from stdin is spooled to a temporary file first (FITS,
  HDF5 and Parquet need random access); output to stdout is written to a temporary file and
  copied out when complete, so a failed run writes nothing.
- Output files are written to a temporary file beside the target and renamed into place at the
  end (`xptools.io.atomic`); an existing file is only replaced with ``overwrite=True``. A failed
  or interrupted run removes what it wrote.

    with open_table("in.fits") as src, TableWriter("out.h5") as out:
        for chunk in src.chunks(10_000):
            out.write(chunk)
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import sys
import zlib
from typing import Iterator

from xptools.errors import UserError
from xptools.io import atomic
from xptools.io.pipeline import BehindWriter, ReadAhead
from xptools.io.table import ColumnInfo, Table, concat

__all__ = ["Table", "ColumnInfo", "concat", "open_table", "read_table", "TableWriter",
           "write_table", "FORMATS", "output_format"]

# name -> file extensions (first is the one we write), binary?
FORMATS = {
    "fits": (("fits", "fit", "fts"), True),
    "hdf5": (("h5", "hdf5", "hdf"), True),
    "parquet": (("parquet", "pq", "parq"), True),
    "csv": (("csv",), False),
    "ecsv": (("ecsv",), False),
    "votable": (("vot", "votable", "xml"), False),
}
STDIO = "-"


def _reader(fmt: str, path: str, name: str):
    if fmt == "fits":
        from xptools.io.fits import FitsReader
        return FitsReader(path, name)
    if fmt == "hdf5":
        from xptools.io.hdf5 import Hdf5Reader
        return Hdf5Reader(path, name)
    if fmt == "parquet":
        from xptools.io.parquet import ParquetReader
        return ParquetReader(path, name)
    if fmt in ("csv", "ecsv"):
        from xptools.io.text import CsvReader
        return CsvReader(path, name, ecsv=fmt == "ecsv")
    from xptools.io.votable import VotableReader
    return VotableReader(path, name)


def _writer(fmt: str, path: str):
    if fmt == "fits":
        from xptools.io.fits import FitsWriter
        return FitsWriter(path)
    if fmt == "hdf5":
        from xptools.io.hdf5 import Hdf5Writer
        return Hdf5Writer(path)
    if fmt == "parquet":
        from xptools.io.parquet import ParquetWriter
        return ParquetWriter(path)
    if fmt in ("csv", "ecsv"):
        from xptools.io.text import CsvWriter
        return CsvWriter(path, ecsv=fmt == "ecsv")
    from xptools.io.votable import VotableWriter
    return VotableWriter(path)


def _check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return fmt


def format_from_name(path: str) -> str | None:
    base = path[:-3] if path.endswith(".gz") else path
    ext = base.rsplit(".", 1)[-1].lower() if "." in os.path.basename(base) else ""
    for fmt, (exts, _) in FORMATS.items():
        if ext in exts:
            return fmt
    return None


def sniff(head: bytes) -> str | None:
    """The format of a table from its first bytes, or None."""
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"# %ECSV"):
        return "ecsv"
    text = head.lstrip()
    if text.startswith(b"<?xml") or text.startswith(b"<VOTABLE"):
        return "votable"
    lines = [l for l in head.decode("utf-8", errors="replace").splitlines()
             if l.strip() and not l.startswith("#")]
    if lines and "," in lines[0] and lines[0].isprintable() and "\ufffd" not in lines[0]:
        return "csv"
    return None


def is_stream(path: str) -> bool:
    """Stdin ('-'), or a pipe such as bash's <(command): data that can be read only once."""
    return path == STDIO or (os.path.exists(path) and not os.path.isfile(path)
                             and not os.path.isdir(path))


def spool(path: str) -> str:
    """A temporary regular file with the data of stdin ('-') or of a pipe, which formats that
    need random access (FITS, HDF5, Parquet), or a second look, can read; remove it with
    `atomic.discard`."""
    tmp = atomic.temporary_file("xptools-stdin-")
    try:
        with (open(path, "rb") if path != STDIO else contextlib.nullcontext(sys.stdin.buffer)) \
                as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except BaseException:
        atomic.discard(tmp)
        raise
    return tmp


class InputTable:
    """An open input table: ``schema`` (zero rows), ``nrows`` (None if unknown) and ``chunks``."""

    def __init__(self, path: str, format: str | None = None):
        self._temps: list[str] = []
        self._read_ahead: ReadAhead | None = None
        self.name = "<stdin>" if path == STDIO else path
        try:
            local = self._local_copy(path)
            with open(local, "rb") as f:
                head = f.read(4096)
            if not head:
                raise UserError(f"{self.name}: empty file")
            if head.startswith(b"\x1f\x8b"):
                local = self._gunzip(local)
                with open(local, "rb") as f:
                    head = f.read(4096)
                if not head:
                    raise UserError(f"{self.name}: empty file (after decompression)")
            fmt = _check_format(format) if format else (
                format_from_name(path) if path != STDIO else None) or sniff(head)
            if fmt is None:
                raise UserError(f"{self.name}: unknown table format (not FITS, HDF5, Parquet, "
                                f"CSV, ECSV or VOTable); name it with --format")
            self.format = fmt
            self._reader = _reader(fmt, local, self.name)
        except BaseException:
            self.close()
            raise
        self.schema: Table = self._reader.schema

    @property
    def nrows(self) -> int | None:
        return self._reader.nrows

    def _local_copy(self, path: str) -> str:
        if path == STDIO and (sys.stdin is None or sys.stdin.isatty()):
            raise UserError("no input on stdin (give a file name, or pipe a table in)")
        if path != STDIO and not os.path.exists(path):
            raise UserError(f"{path}: no such file")
        if path != STDIO and os.path.isdir(path):
            raise UserError(f"{path}: is a directory, not a table")
        if is_stream(path):
            tmp = spool(path)
            self._temps.append(tmp)
            return tmp
        return path

    def _gunzip(self, path: str) -> str:
        tmp = atomic.temporary_file("xptools-gunzip-")
        self._temps.append(tmp)
        try:
            with gzip.open(path, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{self.name}: broken gzip data ({e})") from e
        return tmp

    def chunks(self, rows: int = 10_000, columns: list[str] | None = None,
               read_ahead: bool = False) -> Iterator[Table]:
        """The table in pieces of at most ``rows`` rows (at least one piece, maybe empty);
        with ``read_ahead`` the next piece is read in a thread meanwhile."""
        if columns:
            self.schema.select(columns)  # names a missing column clearly
        pieces = self._reader.chunks(rows, columns)
        if read_ahead:
            self._stop_read_ahead()
            pieces = self._read_ahead = ReadAhead(pieces)
        empty = True
        for piece in pieces:
            empty = False
            yield piece
        if empty:
            yield self.schema.select(columns or self.schema.colnames)

    def read(self, columns: list[str] | None = None) -> Table:
        return concat(list(self.chunks(1 << 62, columns)))

    def _stop_read_ahead(self) -> None:
        if self._read_ahead is not None:
            self._read_ahead.stop()
            self._read_ahead = None

    def close(self) -> None:
        self._stop_read_ahead()  # the thread must not read from a closed file
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
        for tmp in self._temps:
            atomic.discard(tmp)
        self._temps = []

    def __enter__(self) -> "InputTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_table(path: str, format: str | None = None) -> InputTable:
    return InputTable(path, format)


def read_table(path: str, format: str | None = None, columns: list[str] | None = None) -> Table:
    with open_table(path, format) as t:
        return t.read(columns)


def output_format(path: str | None, format: str | None) -> str:
    """The format an output will be written in (stdout defaults to FITS)."""
    if format:
        return _check_format(format)
    if path in (None, STDIO):
        return "fits"
    fmt = format_from_name(path)
    if fmt is None:
        raise UserError(f"{path}: cannot tell the output format from the file name; "
                        f"use a known extension ({', '.join(e[0][0] for e in FORMATS.values())}) "
                        f"or --format")
    return fmt


class TableWriter:
    """Write a table chunk by chunk; the target appears only when everything is written.

    All checks that can fail early (existing file, binary data to a terminal, unknown format)
    run in the constructor, before any work is done.
    """

    def __init__(self, path: str | None, format: str | None = None, overwrite: bool = False,
                 write_behind: bool = False):
        self.path = STDIO if path in (None, STDIO) else path
        self.format = output_format(self.path, format)
        self._backend = None
        self._behind = None
        self._write_behind = write_behind
        if self.path == STDIO:
            if FORMATS[self.format][1] and sys.stdout.isatty():
                raise UserError(f"refusing to write binary {self.format.upper()} to a terminal; "
                                f"give -o FILE, or pipe it on (e.g. '| xptools info -')")
            self._tmp = atomic.temporary_file("xptools-out-")
        else:
            if os.path.exists(self.path) and not overwrite:
                raise UserError(f"{self.path} exists; use --overwrite to replace it")
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                raise UserError(f"{self.path}: folder {folder} does not exist")
            try:
                self._tmp = atomic.temporary_beside(self.path)
            except OSError as e:
                raise UserError(f"{self.path}: cannot write there ({e.strerror})") from e
        self.rows_written = 0

    def _failed(self, error: OSError) -> None:
        """Turn a full disk into one line naming it (the temporary file is removed by
        `abort`, which the caller's ``with`` runs)."""
        message = atomic.no_space(error, self._tmp or self.path)
        if message:
            raise UserError(f"{self.path}: {message}") from error

    def write(self, table: Table) -> None:
        """Append rows (with ``write_behind``, in a thread while the caller goes on)."""
        try:
            if self._backend is None:
                self._backend = _writer(self.format, self._tmp)
                if self._write_behind:
                    self._behind = BehindWriter(self._backend.write)
            (self._behind or self._backend).write(table)
        except OSError as e:
            self._failed(e)
            raise
        self.rows_written += len(table)

    def commit(self) -> None:
        if self._backend is None:
            raise RuntimeError("nothing was written")
        try:
            self._finish()
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                self._failed(e)
            raise

    def _finish(self) -> None:
        if self._behind is not None:
            self._behind.close()
            self._behind = None
        self._backend.close()
        self._backend = None
        src = self._tmp
        if self.path.endswith(".gz"):
            src = self._tmp + ".gz"
            atomic.track(src)
            with open(self._tmp, "rb") as f, gzip.open(src, "wb", compresslevel=6) as g:
                shutil.copyfileobj(f, g, 1 << 20)
            atomic.discard(self._tmp)
            self._tmp = src
        if self.path == STDIO:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
            atomic.discard(src)
        else:
            os.replace(src, self.path)
            atomic.done_with(src)
        self._tmp = None

    def abort(self) -> None:
        """Stop writing and remove the temporary file; never raises."""
        if self._behind is not None:
            self._behind.cancel()
            self._behind = None
        if self._backend is not None:
            try:
                self._backend.close()
            except Exception:
                pass
            self._backend = None
        atomic.discard(self._tmp)
        self._tmp = None

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_table(table: Table, path: str | None, format: str | None = None,
                overwrite: bool = False) -> None:
    with TableWriter(path, format, overwrite) as out:
        out.write(table)
