"""The source_ids a fetch asks for: from a text file, a table, or a HEALPix range.

A Gaia DR3 source_id carries the HEALPix level-12 (nested) index of the source in its bits 35
and up (Gaia DR3 documentation, section 20.1.1, gaia_source.source_id): 0 < source_id <
12 * 4^12 * 2^35. Each level divides a pixel in four, so the level-8 index of the bulk files is
source_id >> (35 + 2 * 4) = source_id >> 43.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from xptools.errors import UserError
from xptools.io import (STDIO, Table, atomic, format_from_name, is_stream, read_table, sniff,
                        spool)

MAX_SOURCE_ID = 12 * 4 ** 12 * 2 ** 35
HEALPIX8_PIXELS = 12 * 4 ** 8
HEALPIX8_SHIFT = 43


def healpix8(source_ids: np.ndarray) -> np.ndarray:
    """HEALPix level-8 (nested) index of each source_id."""
    return np.asarray(source_ids, dtype=np.int64) >> HEALPIX8_SHIFT


def parse_healpix_range(text: str) -> tuple[int, int]:
    """'A-B' (level-8 pixels, both included) -> (A, B)."""
    try:
        first, last = (int(v) for v in text.split("-"))
    except ValueError:
        raise UserError(f"--healpix-range {text!r}: expected A-B, two level-8 HEALPix "
                        f"indices (0 to {HEALPIX8_PIXELS - 1})") from None
    if not 0 <= first <= last < HEALPIX8_PIXELS:
        raise UserError(f"--healpix-range {text!r}: need 0 <= A <= B <= {HEALPIX8_PIXELS - 1}")
    return first, last


@dataclass
class Request:
    """The ids to fetch, each once, in the order asked; ``table`` holds the input's columns
    for them (one row per id, the id's first row) when the ids came from a table."""

    ids: np.ndarray
    table: Table | None
    id_column: str
    name: str


def _check_range(ids: np.ndarray, where) -> None:
    bad = np.flatnonzero((ids <= 0) | (ids >= MAX_SOURCE_ID))
    if len(bad):
        raise UserError(f"{where(int(bad[0]))}: {int(ids[bad[0]])} is not a Gaia source_id "
                        f"(must be between 1 and {MAX_SOURCE_ID - 1})")


def unique_in_order(ids: np.ndarray, where, warn, name: str) -> np.ndarray:
    """Indices of the first occurrence of each id, in input order; a warning names repeats."""
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    keep = np.sort(first)
    repeated = np.flatnonzero(counts > 1)
    if len(repeated):
        value = ids[first[repeated[0]]]
        at = np.flatnonzero(ids == value)[:2]
        warn(f"{name}: {len(repeated)} ids appear more than once (e.g. {int(value)} at "
             f"{where(int(at[0]))} and {where(int(at[1]))}); each is fetched and written once")
    return keep


def _is_plain_text(head: bytes) -> bool:
    """One token per line (ids, perhaps a header), not a table format."""
    if sniff(head) in ("fits", "hdf5", "parquet", "ecsv", "votable") or b"\0" in head:
        return False
    lines = head.decode("utf-8", errors="replace").splitlines()
    if len(head) >= 65536 and len(lines) > 1:
        lines = lines[:-1]  # maybe cut in the middle
    lines = [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]
    return all(len(l.split()) == 1 and "," not in l for l in lines)


def _read_plain(lines, id_column: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids and their line numbers from a text file of one id per line."""
    values, numbers = [], []
    header_allowed = True
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        try:
            values.append(int(token))
        except ValueError:
            if header_allowed and token == id_column:
                header_allowed = False
                continue
            raise UserError(f"{name}: line {number}: {token[:40]!r} is not a Gaia source_id"
                            + (f" (a header line must be the id column's name, "
                               f"{id_column!r})" if header_allowed else "")) from None
        header_allowed = False
        numbers.append(number)
    try:
        ids = np.array(values, dtype=np.int64)
    except OverflowError:
        big = next(v for v in values if not -2 ** 63 <= v < 2 ** 63)
        raise UserError(f"{name}: line {numbers[values.index(big)]}: {big} is not a Gaia "
                        f"source_id (too large)") from None
    return ids, np.array(numbers, dtype=np.int64)


def _id_values(table: Table, column: str, name: str) -> np.ndarray:
    """The id column of a table as int64, with nulls and non-integers named by row."""
    data = table.select([column])[column]
    if data.ndim != 1:
        raise UserError(f"{name}: column {column!r} holds arrays, not source_ids")
    if data.dtype.kind in "iu":
        null = table.info[column].null
        if null is not None and (data == null).any():
            row = int(np.flatnonzero(data == null)[0])
            raise UserError(f"{name}: row {row}: column {column!r} is empty")
        if data.dtype.kind == "u" and (data > np.iinfo(np.int64).max).any():
            row = int(np.flatnonzero(data > np.iinfo(np.int64).max)[0])
            raise UserError(f"{name}: row {row}: {int(data[row])} is not a Gaia source_id")
        return data.astype(np.int64)
    if data.dtype.kind in "US":
        out = np.empty(len(data), np.int64)
        for i, v in enumerate(data.astype(str)):
            try:
                out[i] = int(v)
            except (ValueError, OverflowError):
                raise UserError(f"{name}: row {i}: column {column!r}: {v[:40]!r} is not a Gaia "
                                f"source_id") from None
        return out
    raise UserError(f"{name}: column {column!r} holds {data.dtype} values; Gaia source_ids are "
                    f"64-bit integers (floating point cannot hold them exactly)")


def _read_ids(local: str, name: str, named_format: str | None, id_column: str,
              input_format: str | None):
    """The ids of a regular file: plain text or a table; with the table and the rows' names."""
    plain = False
    if input_format is None:
        with open(local, "rb") as f:
            head = f.read(65536)
        plain = named_format is None and not head.startswith(b"\x1f\x8b") and _is_plain_text(head)
    if plain:
        with open(local, encoding="utf-8", errors="replace") as f:
            ids, numbers = _read_plain(f, id_column, name)
        return ids, None, lambda i: f"line {numbers[i]}"
    table = read_table(local, input_format or named_format)
    return _id_values(table, id_column, name), table, lambda i: f"row {i}"


def read_ids(path: str, id_column: str = "source_id", input_format: str | None = None,
             warn=None) -> Request:
    """The ids of a text file (one per line, '#' comments, optional header line naming the
    column) or of a table's ``id_column`` (other columns kept); ``-`` is stdin."""
    warn = warn or (lambda message: None)
    name = "<stdin>" if path == STDIO else path
    if path == STDIO and (sys.stdin is None or sys.stdin.isatty()):
        raise UserError("--ids -: no ids on stdin")
    if not os.path.exists(path) and path != STDIO:
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a list of ids")
    local = spool(path) if is_stream(path) else path  # stdin or <(...): read it once
    try:
        ids, table, where = _read_ids(local, name, format_from_name(path), id_column,
                                      input_format)
    finally:
        if local != path:
            atomic.discard(local)
    if not len(ids):
        raise UserError(f"{name}: no source_ids in it")
    _check_range(ids, lambda i: f"{name}: {where(i)}")
    keep = unique_in_order(ids, where, warn, name)
    if table is not None and len(keep) < len(ids):
        table = table.rows(keep)
    return Request(ids[keep], table, id_column if table is not None else "source_id", name)
