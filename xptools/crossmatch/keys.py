"""The id join: a hash join of left rows on the right table's key column.

The right keys go into a hash table once (pandas' factorize and Index, which are khash hash
tables in C); each left chunk is looked up in it, which costs O(rows) whatever the order of
either table. Keys are compared as the same kind of value: integers of any width with
integers, text with text (surrounding blanks ignored), floats with floats; a float key never
equals an integer one (a float64 holds Gaia source_ids exactly only up to 2^53), so that is
refused rather than guessed. Missing keys (the column's null value, NaN, empty text) match
nothing.
"""

from __future__ import annotations

import numpy as np

from xptools.errors import UserError

_KINDS = {"i": "integer", "u": "integer", "f": "float", "U": "text", "S": "text", "b": "boolean"}


def key_kind(data: np.ndarray, what: str) -> str:
    if data.ndim != 1:
        raise UserError(f"{what} holds arrays ({list(data.shape[1:])} per row); a key must be "
                        f"one value per row")
    kind = _KINDS.get(data.dtype.kind)
    if kind is None:
        raise UserError(f"{what} has type {data.dtype}, which cannot be a key")
    return kind


def check_kinds(left: np.ndarray, right: np.ndarray, left_what: str, right_what: str) -> None:
    """Refuse keys of different kinds, naming both columns and their types."""
    lk, rk = key_kind(left, left_what), key_kind(right, right_what)
    if lk != rk:
        hint = (" (a float64 holds 64-bit ids such as Gaia source_ids exactly only up to 2^53; "
                "store them as integers)" if {lk, rk} == {"integer", "float"} else "")
        raise UserError(f"key types differ: {left_what} is {lk} ({left.dtype}), {right_what} is "
                        f"{rk} ({right.dtype}){hint}")


def normalised(data: np.ndarray, null: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Keys as comparable values (int64, float64 or str) and a mask of the present ones."""
    kind = data.dtype.kind
    if kind in "iu":
        present = np.ones(len(data), bool) if null is None else data != null
        if kind == "u" and data.dtype.itemsize == 8 and len(data) and \
                data[present].max(initial=0) > np.iinfo(np.int64).max:
            raise UserError("unsigned 64-bit key values above 2^63 - 1 are not supported")
        return data.astype(np.int64), present
    if kind == "f":
        values = data.astype(np.float64)
        return values, ~np.isnan(values)
    if kind in "US":
        text = np.char.strip(np.char.decode(data, "utf-8") if kind == "S" else data)
        return text.astype(str), text != ""
    return data, np.ones(len(data), bool)


class KeyIndex:
    """The right table's keys in a hash table: for left keys, the right rows that match."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray):
        """``keys`` (normalised, present) of the right table's rows ``rows``."""
        import pandas as pd

        codes, uniques = pd.factorize(keys)
        self._index = pd.Index(uniques)
        self.sizes = np.bincount(codes, minlength=len(uniques))
        self._starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self._members = rows[np.argsort(codes, kind="stable")]  # file order within a key
        self._uniques = uniques

    def duplicated(self) -> tuple[int, list[tuple[object, int]]]:
        """How many keys are on more than one right row, and the first few (key, rows)."""
        dup = np.flatnonzero(self.sizes > 1)
        return len(dup), [(self._uniques[i], int(self.sizes[i])) for i in dup[:3]]

    def pairs(self, keys: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (left, right) with equal keys: ``left`` indexes ``keys``, ``right`` is a right
        table row; sorted by left, then right file order."""
        found = np.full(len(keys), -1, np.int64)
        found[present] = self._index.get_indexer(keys[present])
        counts = np.zeros(len(keys), np.int64)
        counts[found >= 0] = self.sizes[found[found >= 0]]
        left = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
        # position of each pair within its key's group: 0, 1, ... counts - 1
        group_start = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(len(left), dtype=np.int64) - group_start
        right = self._members[self._starts[found[left]] + within]
        return left, right
