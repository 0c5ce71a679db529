"""``xptools crossmatch``: attach a right table's columns to the rows of a left table, by id
(a hash join, `keys`) or by sky position (a KD-tree on unit vectors, `sky`).

The right table is read whole and indexed once; the left table streams through chunk by chunk,
so the left can be any size. For each left chunk the index gives every candidate pair (left
row, right row[, separation]); `choose` keeps one per left row or all of them; `columns` brings
the right columns across. Every output row carries

    match_count       the number of right rows that matched the left row (0: none)
    match_flag        bitmask: 1 = the left key is missing, 2 = the left position is missing
                      or out of range, 4 = no proper motion (position not propagated)
    match_separation  arcsec between the two positions (sky match only)

Bad left rows are never dropped silently: they are flagged (and kept by a left join), and a
warning counts them. Bad right rows (missing key or position) cannot match and are counted in
a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from xptools.crossmatch import choose
from xptools.crossmatch.columns import RightColumns, output_name
from xptools.errors import UserError
from xptools.io import InputTable, Table, TableWriter
from xptools.progress import print_warning, progress
from xptools.provenance import stamp

FLAG_NO_KEY = 1
FLAG_BAD_POSITION = 2
FLAG_NO_PROPER_MOTION = 4
CHUNK_BYTES = 64 << 20   # default left chunk: about this much memory per chunk of input


@dataclass
class Match:
    """What to match and how; the command line's options."""

    on: tuple[str, str] | None = None          # left key, right key
    radius: float | None = None                # arcsec
    how: str = "inner"                         # inner | left
    rule: str | None = None                    # choose.NEAREST | BEST | ALL, None: default
    best: str | None = None                    # right column for choose.BEST
    columns: list[str] | None = None           # right columns to bring (default: all)
    suffix: str = "_r"
    ra: tuple[str, str] = ("ra", "ra")
    dec: tuple[str, str] = ("dec", "dec")
    pm: tuple[str, str] | None = None          # left pmra, pmdec columns (mas/yr)
    epochs: tuple[float, float] = (2016.0, 2016.0)  # left, right (Julian years)
    chunk_rows: int | None = None

    def check(self) -> None:
        if (self.on is None) == (self.radius is None):
            raise UserError("give either --on COL[=RIGHTCOL] (id join) or --sky RADIUS_ARCSEC")
        if self.how not in ("inner", "left"):
            raise UserError(f"--how {self.how!r}: choose inner or left")
        if self.radius is not None and not 0 < self.radius < 180 * 3600:
            raise UserError(f"--sky {self.radius:g}: the radius must be between 0 and "
                            f"648000 arcsec (180 deg)")
        if self.on is not None and self.rule == choose.NEAREST:
            raise UserError("--nearest is for sky matches (--sky); for an id join choose "
                            "--best COL or --all")
        if self.pm is not None and self.on is not None:
            raise UserError("--pm moves positions for a sky match; it does nothing with --on")
        if not self.suffix:
            raise UserError("--suffix must not be empty")

    @property
    def sky(self) -> bool:
        return self.radius is not None

    @property
    def keep(self) -> str:
        """The rule that picks among several matches."""
        return self.rule or (choose.NEAREST if self.sky else choose.UNIQUE)


MATCH_COLUMNS = {  # name -> description; match_separation for sky matches only
    "match_count": "number of right rows that match this left row",
    "match_flag": "bitmask: 1 = no key, 2 = bad position, 4 = no proper motion",
    "match_separation": "separation between the matched positions",
}


def _column(schema: Table, name: str, table: str, role: str) -> None:
    if name not in schema:
        shown = ", ".join(schema.colnames[:20]) + (", ..." if len(schema.colnames) > 20 else "")
        raise UserError(f"{table}: no column {name!r} ({role}); columns: {shown}")


@dataclass
class Plan:
    """The columns the options name, checked against both tables before any work is done."""

    brought: list[str]            # right columns that come across
    needed: list[str]             # right columns to read: keys or positions, --best, brought
    match_names: dict[str, str]   # match column -> its output name
    right_names: dict[str, str]   # right column -> its output name


def plan(match: Match, left: Table, left_name: str, right: Table, right_name: str) -> Plan:
    """Check that the named columns exist and give every output column its name: a right or
    match column whose name the left table has gets the suffix (see `columns`)."""
    for name, role in ([(match.ra[0], "--ra"), (match.dec[0], "--dec"),
                        *((c, "--pm") for c in match.pm or ())] if match.sky
                       else [(match.on[0], "--on")]):
        _column(left, name, left_name, role)
    keys = [(match.ra[1], "--ra"), (match.dec[1], "--dec")] if match.sky else \
        [(match.on[1], "--on")]
    for name, role in keys + ([(match.best, "--best")] if match.best else []):
        _column(right, name, right_name, role)
    rkey = None if match.sky else match.on[1]
    brought = match.columns if match.columns is not None else \
        [c for c in right.colnames if c != rkey]
    for name in brought:
        _column(right, name, right_name, "--columns")
    taken = set(left.colnames)
    names: dict[str, dict[str, str]] = {"match": {}, "right": {}}
    for kind, table_name, columns in (
            ("match", left_name, [c for c in MATCH_COLUMNS
                                  if match.sky or c != "match_separation"]),
            ("right", right_name, brought)):
        for name in columns:
            names[kind][name] = output_name(name, taken, match.suffix, table_name)
            taken.add(names[kind][name])
    needed = list(dict.fromkeys([n for n, _ in keys] + ([match.best] if match.best else []) +
                                brought))
    return Plan(brought, needed, names["match"], names["right"])


def keywords(match: Match, right_name: str) -> dict[str, object]:
    """Header keywords that record the match."""
    return {"XMRIGHT": os.path.basename(right_name.rstrip("/")), "XMHOW": match.how,
            "XMKEEP": f"best {match.best}" if match.best else match.keep,
            **({"XMRADIUS": float(match.radius)} if match.sky else
               {"XMON": f"{match.on[0]}={match.on[1]}"}),
            **({"XMEPOCHL": match.epochs[0], "XMEPOCHR": match.epochs[1]} if match.pm
               else {})}


def duplicates_error(right_name: str, key: str, count: int, examples) -> UserError:
    shown = ", ".join(f"{k} ({r} rows)" for k, r in examples)
    return UserError(f"{right_name}: {count} {key} values occur on more than one row (e.g. "
                     f"{shown}), so a left row can match several; choose --best COL to keep "
                     f"the one with the highest COL, or --all to keep every pair")


def flagged_rows_warning(name: str, flag: int, count: int, first: int | None,
                         match: Match) -> str:
    """The warning about left rows with a flag (``first``: the first such row, if known)."""
    where = f" (first at row {first})" if first is not None else ""
    if flag == FLAG_NO_PROPER_MOTION:
        return (f"{name}: {count} rows have no proper motion{where}; matched at their epoch "
                f"{match.epochs[0]:g} position, match_flag {flag}")
    what = f"no {match.on[0]!r}" if flag == FLAG_NO_KEY else "a missing or out-of-range position"
    fate = ("kept unmatched" if match.how == "left" else
            "left out of the inner join (--how left keeps them)")
    return f"{name}: {count} rows have {what}{where}; unmatched, {fate}, match_flag {flag}"


def _chunk_rows(schema: Table) -> int:
    row_bytes = sum(c.dtype.itemsize * int(np.prod(c.shape[1:])) for c in schema.columns.values())
    return int(np.clip(CHUNK_BYTES // max(row_bytes, 1), 1_000, 1_000_000))


def _first_rows(mask: np.ndarray, offset: int) -> tuple[int, int | None]:
    """How many rows are set, and the first one (as a row number of the file)."""
    rows = np.flatnonzero(mask)
    return len(rows), (offset + int(rows[0]) if len(rows) else None)


class _Tally:
    """Counts of flagged rows and where the first one was, for the closing warnings."""

    def __init__(self):
        self.counts: dict[int, int] = {}
        self.first: dict[int, int] = {}

    def add(self, flag: int, mask: np.ndarray, offset: int) -> None:
        n, first = _first_rows(mask, offset)
        if n:
            self.counts[flag] = self.counts.get(flag, 0) + n
            self.first.setdefault(flag, first)


class _IdMatcher:
    def __init__(self, match: Match, left: InputTable, right: Table, right_name: str):
        from xptools.crossmatch.keys import KeyIndex, check_kinds, normalised

        lkey, rkey = match.on
        check_kinds(left.schema[lkey], right[rkey], f"{left.name} column {lkey!r}",
                    f"{right_name} column {rkey!r}")
        keys, present = normalised(right[rkey], right.info[rkey].null)
        n, first = _first_rows(~present, 0)
        self.unusable = f"{n} rows have no {rkey!r} (first at row {first})" if n else None
        self.index = KeyIndex(keys[present], np.flatnonzero(present))
        self.valid = int(present.sum())
        if match.rule is None:
            count, examples = self.index.duplicated()
            if count:
                raise duplicates_error(right_name, rkey, count, examples)
        self._key = lkey
        self._null = left.schema.info[lkey].null
        self._normalised = normalised

    def pairs(self, chunk: Table, flags: np.ndarray):
        keys, present = self._normalised(chunk[self._key], self._null)
        flags[~present] |= FLAG_NO_KEY
        left, right = self.index.pairs(keys, present)
        return left, right, None


class _SkyMatcher:
    def __init__(self, match: Match, left: InputTable, right: Table, right_name: str):
        from xptools.crossmatch.sky import SkyIndex, in_unit, unit_vectors, valid_positions

        ra = in_unit(right[match.ra[1]], right.info[match.ra[1]].unit, "deg",
                     f"{right_name} column {match.ra[1]!r}")
        dec = in_unit(right[match.dec[1]], right.info[match.dec[1]].unit, "deg",
                      f"{right_name} column {match.dec[1]!r}")
        good = valid_positions(ra, dec)
        n, first = _first_rows(~good, 0)
        self.unusable = (f"{n} rows have a missing or out-of-range position (first at row "
                         f"{first}: RA {ra[first]:g}, Dec {dec[first]:g})") if n else None
        self.index = SkyIndex(unit_vectors(ra[good], dec[good]), np.flatnonzero(good),
                              match.radius)
        self.valid = int(good.sum())
        self._match = match
        self._units = {n: left.schema.info[n].unit for n in (match.ra[0], match.dec[0],
                                                               *(match.pm or ()))}
        self._name = left.name

    def _values(self, chunk: Table, name: str, target: str) -> np.ndarray:
        from xptools.crossmatch.sky import in_unit

        return in_unit(chunk[name], self._units[name], target, f"{self._name} column {name!r}")

    def pairs(self, chunk: Table, flags: np.ndarray):
        from xptools.crossmatch.sky import propagated, unit_vectors, valid_positions

        m = self._match
        ra, dec = self._values(chunk, m.ra[0], "deg"), self._values(chunk, m.dec[0], "deg")
        good = valid_positions(ra, dec)
        flags[~good] |= FLAG_BAD_POSITION
        if m.pm is not None:
            pmra, pmdec = (self._values(chunk, c, "mas / yr") for c in m.pm)
            flags[good & ~(np.isfinite(pmra) & np.isfinite(pmdec))] |= FLAG_NO_PROPER_MOTION
            vectors = propagated(ra[good], dec[good], pmra[good], pmdec[good],
                                 m.epochs[1] - m.epochs[0])
        else:
            vectors = unit_vectors(ra[good], dec[good])
        rows = np.flatnonzero(good)
        left, right, separation = self.index.pairs(vectors)
        return rows[left], right, separation


def run_crossmatch(src: InputTable, right_src: InputTable, out: TableWriter, match: Match,
                   quiet: bool = False, warn=print_warning) -> int:
    """Stream ``src`` through the match with ``right_src`` into ``out``; returns the number
    of output rows."""
    match.check()
    sky = match.sky
    columns = plan(match, src.schema, src.name, right_src.schema, right_src.name)
    right = right_src.read(columns.needed)
    if match.best:
        best = right[match.best]
        if best.ndim != 1 or best.dtype.kind not in "iuf":
            raise UserError(f"{right_src.name}: --best {match.best!r} must be a column of "
                            f"numbers, not {best.dtype}")
    matcher = (_SkyMatcher if sky else _IdMatcher)(match, src, right, right_src.name)
    if matcher.valid == 0:
        what = "no rows" if len(right) == 0 else "no row with a valid " + \
            ("position" if sky else f"{match.on[1]!r}")
        if match.how == "inner":
            raise UserError(f"{right_src.name}: {what}, so an inner join would be empty "
                            f"(--how left keeps the left rows, unmatched)")
        warn(f"{right_src.name}: {what}; every row is unmatched (match_count = 0)")
    if matcher.unusable and matcher.valid:
        warn(f"{right_src.name}: {matcher.unusable}; they cannot match")
    right_columns = RightColumns(right, columns.right_names, blanks=match.how == "left")
    header = keywords(match, right_src.name)
    names = columns.match_names
    score = right[match.best].astype(np.float64) if match.best else None
    tally = _Tally()
    offset = written = 0
    with progress(src.nrows, "crossmatch", quiet) as bar:
        for chunk in src.chunks(match.chunk_rows or _chunk_rows(src.schema), read_ahead=True):
            n = len(chunk)
            flags = np.zeros(n, np.int16)
            left, right_rows, separation = matcher.pairs(chunk, flags)
            counts = np.bincount(left, minlength=n).astype(np.int32)
            keep = choose.kept(match.keep, left, score[right_rows] if score is not None
                               else None)
            left, right_rows = left[keep], right_rows[keep]
            separation = separation[keep] if sky else None
            if match.how == "left":
                lonely = np.flatnonzero(counts == 0)
                order = np.argsort(np.concatenate([left, lonely]), kind="stable")
                left = np.concatenate([left, lonely])[order]
                right_rows = np.concatenate([right_rows, np.full(len(lonely), -1)])[order]
                if sky:
                    separation = np.concatenate([separation, np.full(len(lonely), np.nan)])[
                        order]
            for flag in (FLAG_NO_KEY, FLAG_BAD_POSITION, FLAG_NO_PROPER_MOTION):
                tally.add(flag, (flags & flag) != 0, offset)
            table = stamp(chunk.rows(left), header)  # writers keep the first chunk's
            right_columns.add_to(table, right_rows)
            values = {"match_count": counts[left], "match_flag": flags[left],
                      "match_separation": separation}
            for name, out_name in names.items():
                table.add_column(out_name, values[name], description=MATCH_COLUMNS[name],
                                 unit="arcsec" if name == "match_separation" else None)
            out.write(table)
            written += len(table)
            offset += n
            bar.update(n)
    for flag, count in tally.counts.items():
        warn(flagged_rows_warning(src.name, flag, count, tally.first[flag], match))
    return written
