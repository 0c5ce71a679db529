"""CSV and ECSV in the Gaia archive's conventions.

- A header row of column names; lines starting with '#' before it are skipped in CSV.
- Array cells are quoted strings, "(a, b, ...)" in the archive's CSV and "[a,b,...]" (JSON) in
  ECSV; both are read from either. An empty cell is a null: NaN for floats and for a whole array
  (a missing BP or RP spectrum), the null sentinel for integers.
- ECSV carries the column types, units, descriptions and table keywords in its YAML header; a
  CSV's column types are inferred from its first chunk of rows.
"""

from __future__ import annotations

import csv
import re
import sys
import warnings
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.io.table import Table

csv.field_size_limit(sys.maxsize)

_INT = re.compile(r"^\s*[-+]?\d+\s*$")
_BOOL = {"true": True, "false": False, "t": True, "f": False}
_NULL_TEXT = ("", "null", "--", "NULL", "None")


class _Rows:
    """Lines of a CSV body, in chunks, with their line numbers for error messages."""

    def __init__(self, stream, name: str, first_line: int):
        self.reader = csv.reader(stream)
        self.name = name
        self.line = first_line

    def header(self) -> list[str]:
        try:
            names = next(self.reader)
        except StopIteration:
            raise UserError(f"{self.name}: empty file (no header row)") from None
        except csv.Error as e:
            raise UserError(f"{self.name}: line {self.line}: {e}") from e
        names = [n.strip() for n in names]
        if not any(names):
            raise UserError(f"{self.name}: empty header row on line {self.line}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"{self.name}: column {dup[0]!r} appears twice in the header")
        self.line += 1
        self.ncols = len(names)
        return names

    def chunk(self, rows: int) -> tuple[int, list[list[str]]]:
        first = self.line
        out = []
        try:
            for row in self.reader:
                self.line += 1
                if not row:
                    continue
                if len(row) != self.ncols:
                    raise UserError(f"{self.name}: line {self.line - 1} has {len(row)} fields, "
                                    f"the header has {self.ncols}")
                out.append(row)
                if len(out) >= rows:
                    break
        except csv.Error as e:
            raise UserError(f"{self.name}: line {self.line}: {e}") from e
        return first, out


def _is_array_text(cells: list[str]) -> bool:
    """An array column: its first non-null cell opens with '(' or '[' (a malformed cell is
    then reported by line when the column is parsed)."""
    for c in cells:
        c = c.strip()
        if c and c not in _NULL_TEXT:
            return c[0] in "(["
    return False


def _infer(cells: list[str]) -> np.dtype | tuple[str, np.dtype]:
    """Column type of a CSV column from its cells: ('array', float64), int64, float64, bool or str."""
    present = [c for c in cells if c.strip() not in _NULL_TEXT]
    if _is_array_text(cells):
        return ("array", np.dtype(np.float64))
    if present and all(_INT.match(c) for c in present):
        return np.dtype(np.int64)
    if present and all(c.strip().lower() in _BOOL for c in present):
        return np.dtype(bool)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.array([c if c.strip() not in _NULL_TEXT else "nan" for c in cells], dtype=float)
        return np.dtype(np.float64)
    except ValueError:
        return np.dtype(str)


def parse_array_cells(cells: list[str], dtype: np.dtype, width: int | None, where: str,
                      first_line: int) -> np.ndarray:
    """Quoted array cells -> (rows, K) array; empty cells -> NaN rows.

    ``width`` is K when it is known (ECSV 'float64[55]', or from an earlier chunk); every
    non-empty cell must have that many values.
    """
    bodies, rows = [], []
    for i, c in enumerate(cells):
        c = c.strip()
        if c in _NULL_TEXT:
            continue
        if len(c) < 2 or c[0] not in "([" or c[-1] not in ")]":
            raise UserError(f"{where}: line {first_line + i}: malformed array cell "
                            f"{_clip(c)} (expected '(a, b, ...)' or '[a, b, ...]')")
        bodies.append(c[1:-1].replace("null", "nan"))
        rows.append(i)
    counts = np.array([b.count(",") + 1 if b.strip() else 0 for b in bodies], dtype=np.int64)
    if width is None:
        width = int(counts.max()) if len(counts) else 0
    bad = np.flatnonzero(counts != width)
    if len(bad):
        i = rows[bad[0]]
        raise UserError(f"{where}: line {first_line + i}: array has {counts[bad[0]]} values, "
                        f"expected {width}")
    out = np.full((len(cells), width), np.nan if dtype.kind == "f" else 0, dtype=dtype)
    if bodies and width:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                values = np.fromstring(",".join(bodies), sep=",")  # C-speed strtod
        except (ValueError, DeprecationWarning):
            values = None
        if values is None or values.size != width * len(bodies):
            for i, b in zip(rows, bodies):  # find the row to name it
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")
                        ok = np.fromstring(b, sep=",").size == width
                except (ValueError, DeprecationWarning):
                    ok = False
                if not ok:
                    raise UserError(f"{where}: line {first_line + i}: malformed array cell "
                                    f"{_clip(cells[i])}")
        out[rows] = values.reshape(len(bodies), width)
    return out


def _clip(text: str, n: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= n else text[:n] + "...")


def convert_cells(cells: list[str], kind, name: str, where: str, first_line: int,
                  width: int | None = None, null: int | None = None) -> np.ndarray:
    """Text cells of one column -> numpy column; empty integer cells become ``null``."""
    if isinstance(kind, tuple):
        return parse_array_cells(cells, kind[1], width, f"{where}: column {name!r}", first_line)
    if kind.kind in "iu":
        empty = [c.strip() in _NULL_TEXT for c in cells]
        try:
            data = np.array([null if e else int(c) for c, e in zip(cells, empty)], dtype=kind)
        except (ValueError, OverflowError):
            i = next(i for i, c in enumerate(cells) if not (_INT.match(c) or c.strip() in _NULL_TEXT))
            raise UserError(f"{where}: line {first_line + i}: column {name!r}: "
                            f"{_clip(cells[i])} is not an integer") from None
        return data
    if kind.kind == "f":
        try:
            return np.array([c if c.strip() not in _NULL_TEXT else "nan" for c in cells],
                            dtype=kind)
        except ValueError:
            for i, c in enumerate(cells):
                try:
                    float(c if c.strip() not in _NULL_TEXT else "nan")
                except ValueError:
                    raise UserError(f"{where}: line {first_line + i}: column {name!r}: "
                                    f"{_clip(c)} is not a number") from None
    if kind.kind == "b":
        try:
            return np.array([_BOOL[c.strip().lower()] if c.strip() not in _NULL_TEXT else False
                             for c in cells], dtype=bool)
        except KeyError:
            i = next(i for i, c in enumerate(cells)
                     if c.strip() not in _NULL_TEXT and c.strip().lower() not in _BOOL)
            raise UserError(f"{where}: line {first_line + i}: column {name!r}: "
                            f"{_clip(cells[i])} is not a boolean") from None
    return np.array(cells, dtype=str)


class CsvReader:
    """CSV (or ECSV) with a header row; '#' lines before it are skipped (or, in ECSV, parsed)."""

    def __init__(self, path: str, name: str, ecsv: bool = False):
        self.name = name
        self.nrows = None
        self._stream = open(path, "r", encoding="utf-8", errors="replace", newline="")
        header_lines, line_no = [], 1
        pos = self._stream.tell()
        while (line := self._stream.readline()).startswith("#"):
            header_lines.append(line)
            line_no += 1
            pos = self._stream.tell()
        self._stream.seek(pos)
        self._rows = _Rows(self._stream, name, line_no)
        names = self._rows.header()
        self._pending = self._rows.chunk(100_000)
        declared = _ecsv_header(header_lines, name) if ecsv else {}
        raw_columns = list(zip(*self._pending[1])) if self._pending[1] else [()] * len(names)
        self.schema = Table(meta=declared.get("meta", {}), history=declared.get("history", []))
        self._kinds, self._widths = {}, {}
        for n, cells in zip(names, raw_columns):
            if ecsv:
                kind, width, unit, description = declared["columns"].get(n, (np.dtype(str), None,
                                                                             None, None))
            else:
                kind, width, unit, description = _infer(list(cells)), None, None, None
            if isinstance(kind, tuple) and width is None:
                width = _array_width(list(cells))
            self._kinds[n], self._widths[n] = kind, width
            dtype = kind[1] if isinstance(kind, tuple) else kind
            shape = (0, width) if isinstance(kind, tuple) else (0,)
            null = int(np.iinfo(dtype).min) if dtype.kind in "iu" else None
            self.schema.add_column(n, np.zeros(shape, dtype=dtype), unit=unit,
                                   description=description, null=null)
        # convert the first rows now, so that bad cells there fail before any work is done
        first, raw = self._pending
        self._pending = (first, self._convert(first, raw, names) if raw else None)

    def _convert(self, first: int, rows: list[list[str]], names: list[str]) -> Table:
        out = self.schema.select(names)
        index = {n: i for i, n in enumerate(self.schema.colnames)}
        for n in names:
            cells = [r[index[n]] for r in rows]
            out.columns[n] = convert_cells(cells, self._kinds[n], n, self.name, first,
                                           self._widths[n], out.info[n].null)
        return out

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[Table]:
        names = columns or self.schema.colnames
        if self._pending is None:
            raise RuntimeError("a CSV table can be iterated once")
        (first, converted), self._pending = self._pending, None
        if converted is not None:
            converted = converted.select(names)
            for i in range(0, len(converted), rows):
                yield converted.rows(slice(i, i + rows))
        while True:
            first, raw = self._rows.chunk(rows)
            if not raw:
                break
            yield self._convert(first, raw, names)

    def close(self):
        self._stream.close()


def _array_width(cells: list[str]) -> int:
    for c in cells:
        c = c.strip()
        if c not in _NULL_TEXT:
            body = c[1:-1]
            return body.count(",") + 1 if body.strip() else 0
    return 0


def _ecsv_header(lines: list[str], name: str) -> dict:
    """Column types, units, descriptions and table keywords from an ECSV YAML header."""
    import yaml

    if not lines or not lines[0].startswith("# %ECSV"):
        raise UserError(f"{name}: not an ECSV file (no '# %ECSV' first line)")
    text = "".join(l[2:] if l.startswith("# ") else l[1:] for l in lines[1:])
    try:
        header = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{name}: unreadable ECSV header ({str(e).splitlines()[0]})") from e
    columns = {}
    for d in header.get("datatype", []):
        dt, sub = d.get("datatype", "string"), d.get("subtype")
        width = None
        if dt == "string" and sub:
            m = re.match(r"^(\w+)\[(\w*)\]", sub)
            if not m:
                raise UserError(f"{name}: column {d.get('name')!r}: unsupported ECSV subtype {sub!r}")
            base = np.dtype(m.group(1)) if m.group(1) != "json" else np.dtype(float)
            kind = ("array", base if base.kind in "fiu" else np.dtype(float))
            width = int(m.group(2)) if m.group(2).isdigit() else None
        else:
            try:
                kind = np.dtype(str) if dt == "string" else np.dtype(dt)
            except TypeError:
                raise UserError(f"{name}: column {d.get('name')!r}: unknown ECSV datatype {dt!r}") from None
        columns[d.get("name")] = (kind, width, d.get("unit"), d.get("description"))
    meta, history = {}, []
    for key, value in (header.get("meta") or {}).items():
        if key == "HISTORY" and isinstance(value, list):
            history = [str(v) for v in value]
        elif isinstance(value, (str, int, float, bool)):
            meta[key] = value
    return {"columns": columns, "meta": meta, "history": history}


def _format_float(values: np.ndarray) -> list[str]:
    if values.dtype == np.float32:
        return ["" if v != v else "%.9g" % v for v in values.tolist()]
    return ["" if v != v else repr(v) for v in values.tolist()]


def _format_array_rows(values: np.ndarray, open_: str, close: str, sep: str) -> list[str]:
    fmt = "%.9g" if values.dtype == np.float32 else None
    out = []
    for row in values.tolist():
        if values.dtype.kind == "f" and all(v != v for v in row):
            out.append("")
            continue
        if fmt:
            body = sep.join(fmt % v for v in row)
        else:
            body = sep.join(repr(v) for v in row)
        out.append(open_ + body.replace("nan", "NaN" if open_ == "[" else "nan") + close)
    return out


def format_column(table: Table, name: str, ecsv: bool) -> list[str]:
    data = table[name]
    if data.ndim > 2:
        raise UserError(f"column {name!r} has {data.ndim - 1}-D cells; write FITS or HDF5")
    if data.ndim == 2:
        return _format_array_rows(data, "[" if ecsv else "(", "]" if ecsv else ")",
                                  "," if ecsv else ", ")
    if data.dtype.kind == "f":
        return _format_float(data)
    null = table.info[name].null
    if data.dtype.kind in "iu" and null is not None:
        return ["" if v == null else str(v) for v in data.tolist()]
    if data.dtype.kind == "b":
        return ["True" if v else "False" for v in data.tolist()]
    return [str(v) for v in data.tolist()]


def _ecsv_type(a: np.ndarray) -> dict:
    if a.ndim == 2:
        return {"datatype": "string", "subtype": f"{a.dtype.name}[{a.shape[1]}]"}
    if a.dtype.kind == "U":
        return {"datatype": "string"}
    return {"datatype": a.dtype.name}


class CsvWriter:
    def __init__(self, path: str, ecsv: bool = False):
        self._stream = open(path, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._stream, lineterminator="\n")
        self._ecsv = ecsv
        self._started = False

    def _header(self, table: Table) -> None:
        if self._ecsv:
            import yaml

            datatype = []
            for n in table.colnames:
                entry = {"name": n, **_ecsv_type(table[n])}
                if table.info[n].unit:
                    entry["unit"] = table.info[n].unit
                if table.info[n].description:
                    entry["description"] = table.info[n].description
                datatype.append(entry)
            meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in table.meta.items()}
            if table.history:
                meta["HISTORY"] = list(table.history)
            header = {"delimiter": ",", "datatype": datatype}
            if meta:
                header["meta"] = meta
            header["schema"] = "astropy-2.0"
            text = yaml.safe_dump(header, sort_keys=False, width=1000)
            self._stream.write("# %ECSV 1.0\n# ---\n")
            self._stream.write("".join(f"# {line}\n" for line in text.splitlines()))
        self._writer.writerow(table.colnames)

    def write(self, table: Table) -> None:
        if not self._started:
            self._header(table)
            self._started = True
        cols = [format_column(table, n, self._ecsv) for n in table.colnames]
        self._writer.writerows(zip(*cols))

    def close(self) -> None:
        self._stream.close()
