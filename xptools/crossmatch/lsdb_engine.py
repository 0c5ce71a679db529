"""``--engine lsdb``: the same matches for catalogues beyond one machine, with LSDB (HATS
catalogues partitioned by HEALPix) on Dask. Needs the ``scale`` extra.

LEFT and RIGHT are HATS catalogue directories (opened lazily with ``lsdb.open_catalog``; their
size is bounded by the cluster, not by this machine) or any table xptools reads (read whole
and partitioned with ``lsdb.from_dataframe``: for joining a small table to a HATS catalogue).

- Sky match: LSDB pairs each left HEALPix partition with the right partitions over it plus the
  right catalogue's margin (the sources just outside the partition, so that matches across
  partition borders are found) and calls our crossmatch algorithm on each pair: the local
  engine's `SkyIndex` and `choose`, so pairs, ``match_count`` and ``match_separation`` are the
  same. The right catalogue needs a margin at least as wide as the radius.
- Id join: a Dask merge, which shuffles both sides on the key. ``--best`` first keeps one right
  row per key (ties: the earlier row); ``match_count`` is the key's number of right rows.

The result is computed a few partitions at a time on the Dask cluster (``--scheduler
ADDRESS``, else Dask's threads in this process) and streamed into the output file, in
partition order rather than the left table's order. Not available here: ``--pm``, text keys.
"""

from __future__ import annotations

import os

import numpy as np

from xptools.crossmatch import (FLAG_BAD_POSITION, FLAG_NO_KEY, MATCH_COLUMNS, Match, choose,
                                duplicates_error, flagged_rows_warning, keywords, plan)
from xptools.crossmatch.columns import blank_for
from xptools.errors import NotImplementedYet, UserError
from xptools.io import ColumnInfo, Table, TableWriter, read_table
from xptools.progress import print_warning, progress
from xptools.provenance import stamp

_KEY, _LEFT_ROW, _RIGHT_ROW = "_xptools_key", "_xptools_left_row", "_xptools_right_row"
# Dask's task-based shuffle: its peer-to-peer one cannot carry array cells (pyarrow
# fixed-size lists) as of dask/distributed 2026.8
_SHUFFLE = "tasks"


class _Input:
    """A HATS catalogue (lazy) or a table read whole, with a zero-row ``schema`` giving each
    column's numpy type (text at its widest, so that every partition writes alike)."""

    def __init__(self, path: str, input_format: str | None):
        self.name = path
        self.catalog = self.table = None
        if os.path.isdir(path):
            import dask
            import lsdb

            try:
                self.catalog = lsdb.open_catalog(path)
            except Exception as e:  # lsdb raises many kinds; all mean "not a HATS catalogue"
                raise UserError(f"{path}: not a HATS catalogue ({type(e).__name__}: {e})") \
                    from None
            head = self.catalog.head(1)
            frame = self.catalog.to_dask_dataframe(divisions=False)
            text = [n for n in head.columns if "string" in str(head[n].dtype)]
            widths = dict(zip(text, dask.compute(*[frame[n].str.len().max() for n in text])))
            self.schema = Table()
            for name in head.columns:
                data = _numpy(head[name]) if name not in widths else \
                    np.zeros(1, f"U{max(int(widths[name] or 1), 1)}")
                self.schema.add_column(name, data[:0])
        else:
            self.table = read_table(path, input_format)
            self.schema = self.table.rows(slice(0, 0))
            for name, data in self.table.columns.items():
                if data.ndim > 2:
                    raise UserError(f"{path}: column {name!r} has {data.ndim - 1}-D cells, "
                                    f"which --engine lsdb cannot carry")

    def column(self, name: str) -> np.ndarray:
        """A column's values where known (a table), else its zero-row schema."""
        return self.table[name] if self.table is not None else self.schema[name]

    def frame(self, columns: list[str], rows=slice(None)):
        """Rows and columns of the table as a pyarrow-backed DataFrame (integers stay exact
        where a left join leaves them missing; array cells become fixed-size lists)."""
        import pandas as pd
        import pyarrow as pa

        arrays = {}
        for name in columns:
            data = self.table[name][rows]
            arrays[name] = pa.FixedSizeListArray.from_arrays(
                pa.array(data.ravel()), data.shape[1]) if data.ndim == 2 else pa.array(data)
        return pa.table(arrays).to_pandas(types_mapper=pd.ArrowDtype)


def _numpy(series) -> np.ndarray:
    """A pandas column without missing values as numpy; list cells become a 2-D array."""
    values = series.to_numpy()
    if values.dtype == object and len(values) and isinstance(values[0], (list, np.ndarray)):
        return np.stack([np.asarray(v) for v in values])
    return values.astype(str) if values.dtype == object else values


def _to_table(frame, like: Table, blanks: dict, info: dict) -> Table:
    """A computed partition as a Table of the output's types; missing values -> blanks."""
    table = Table()
    for name in like.colnames:
        template = like[name]
        series = frame[name]
        missing = series.isna().to_numpy()
        data = np.empty((len(series), *template.shape[1:]), template.dtype)
        data[missing] = blanks[name]
        if (~missing).any():
            data[~missing] = _numpy(series[~missing])
        table.add_column(name, data)
        table.info[name] = info[name]
    return table


def run_lsdb(left_path: str, right_path: str, out: TableWriter, match: Match, *,
             input_format: str | None = None, scheduler: str | None = None,
             quiet: bool = False, warn=print_warning) -> int:
    """The match on LSDB/Dask, streamed into ``out``; returns the number of output rows."""
    try:
        import dask
        import lsdb  # noqa: F401
    except ImportError as e:
        raise UserError(f"--engine lsdb needs the 'scale' extra (pip install "
                        f"'xptools[scale]'): {e}") from None
    match.check()
    if match.pm is not None:
        raise NotImplementedYet("--pm with --engine lsdb: not implemented yet (moved positions "
                                "can leave their HEALPix partition)")
    if "-" in (left_path, right_path):
        raise UserError("--engine lsdb reads files or HATS catalogues, not stdin")
    client = None
    if scheduler is not None:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise UserError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") \
                from None
    try:
        return _Run(left_path, right_path, match, input_format).write(out, dask, quiet, warn)
    finally:
        if client is not None:
            client.close()


class _Run:
    def __init__(self, left_path: str, right_path: str, match: Match, input_format):
        self.match = m = match
        self.sky = m.sky
        self.left, self.right = _Input(left_path, input_format), _Input(right_path, None)
        columns = plan(m, self.left.schema, self.left.name, self.right.schema, self.right.name)
        self.brought, self.names = columns.brought, columns.match_names
        self.right_names, self.needed = columns.right_names, columns.needed
        self.lonely = np.zeros(0, np.int64)  # left rows that cannot be partitioned
        self.parts = self._sky() if self.sky else self._ids()

    # --- sky match ---

    def _catalog(self, source: _Input, columns: list[str], ra: str, dec: str,
                 margin: float | None):
        """The source as an LSDB catalogue with these columns (positions in degrees), and
        the rows of a table without a valid position, which cannot be partitioned."""
        import lsdb

        from xptools.crossmatch.sky import in_unit, valid_positions

        if source.catalog is not None:
            return source.catalog[columns], np.zeros(0, np.int64)
        t = source.table
        ra_deg = in_unit(t[ra], t.info[ra].unit, "deg", f"{source.name} column {ra!r}")
        dec_deg = in_unit(t[dec], t.info[dec].unit, "deg", f"{source.name} column {dec!r}")
        good = valid_positions(ra_deg, dec_deg)
        if not good.any():
            return None, np.flatnonzero(~good)
        frame = source.frame(columns, good)
        frame[ra], frame[dec] = ra_deg[good], dec_deg[good]
        return lsdb.from_dataframe(frame, ra_column=ra, dec_column=dec,
                                   margin_threshold=margin, should_generate_moc=False), \
            np.flatnonzero(~good)

    def _sky(self):
        m = self.match
        # a margin wider than the radius costs little and is much faster for LSDB to build
        right, bad = self._catalog(self.right, self.needed, m.ra[1], m.dec[1],
                                   max(60.0, 1.1 * m.radius))
        if right is None:
            raise UserError(f"{self.right.name}: no row with a valid position")
        margin = right.margin
        if self.right.catalog is not None and (
                margin is None or margin.hc_structure.catalog_info.margin_threshold < m.radius):
            raise UserError(f"{self.right.name}: needs a margin cache at least {m.radius:g} "
                            f"arcsec wide (the radius), or matches across partition borders "
                            f"would be lost")
        self.right_bad = bad
        left, self.lonely = self._catalog(self.left, self.left.schema.colnames, m.ra[0],
                                          m.dec[0], None)
        if left is None:
            return []
        # rename right columns to their output names, so LSDB's suffixes never apply; the
        # position columns keep theirs (LSDB locates positions by name) and get the suffix
        # from LSDB, under the same rule
        rename = {c: n for c, n in self.right_names.items()
                  if n != c and c not in (m.ra[1], m.dec[1])}
        if rename:
            right = right.rename(rename)
        best = rename.get(m.best, m.best)
        result = left.crossmatch(right, algorithm=_sky_algorithm(m, self.names, best),
                                 how=m.how, suffixes=("", m.suffix),
                                 suffix_method="overlapping_columns", log_changes=False)
        return result.to_delayed()

    # --- id join ---

    def _ids(self):
        import dask
        import dask.dataframe as dd

        from xptools.crossmatch.keys import check_kinds, key_kind

        m = self.match
        lkey, rkey = m.on
        check_kinds(self.left.schema[lkey], self.right.schema[rkey],
                    f"{self.left.name} column {lkey!r}", f"{self.right.name} column {rkey!r}")
        if key_kind(self.left.schema[lkey], lkey) == "text":
            raise NotImplementedYet("text keys with --engine lsdb: not implemented yet")

        def frame(source: _Input, columns: list[str], key: str):
            if source.catalog is not None:
                df = source.catalog[columns].to_dask_dataframe(divisions=False)
            else:
                df = dd.from_pandas(source.frame(columns), npartitions=os.cpu_count() or 1)
            null = source.schema.info[key].null
            present = ~df[key].isna()
            return df, present & (df[key] != null) if null is not None else present

        r, present = frame(self.right, self.needed, rkey)
        self.right_valid, self.right_missing = (int(v) for v in dask.compute(present.sum(),
                                                                             (~present).sum()))
        if self.right_valid == 0:
            raise UserError(f"{self.right.name}: no row with a valid {rkey!r}")
        r = r[present]
        r = r.assign(**{_KEY: r[rkey], _RIGHT_ROW: 1})
        r[_RIGHT_ROW] = r[_RIGHT_ROW].cumsum()  # file order, for ties
        count = self.names["match_count"]
        sizes = r.groupby(_KEY).size().rename(count)
        if m.rule is None:
            duplicated = sizes[sizes > 1]
            n = int(duplicated.shape[0].compute())
            if n:
                raise duplicates_error(self.right.name, rkey, n,
                                       duplicated.head(3, npartitions=-1).items())
        if m.rule == choose.BEST:
            best = m.best

            def best_rows(df):
                score = -df[best].astype("float64").fillna(-np.inf)
                return (df.assign(_score=score).sort_values(["_score", _RIGHT_ROW],
                                                            kind="stable")
                        .drop_duplicates(_KEY).drop(columns="_score"))

            r = r.shuffle(_KEY, shuffle_method=_SHUFFLE).map_partitions(best_rows)
        r = r.merge(sizes.to_frame().reset_index(), on=_KEY)
        r = r.rename(columns=self.right_names)[[_KEY, _RIGHT_ROW, count,
                                                 *self.right_names.values()]]
        left, present = frame(self.left, self.left.schema.colnames, lkey)
        left = left.assign(**{_KEY: left[lkey].where(present), _LEFT_ROW: 1})
        left[_LEFT_ROW] = left[_LEFT_ROW].cumsum()
        self.missing_keys = int((~present).sum().compute())
        # a missing (NA) left key matches no right key: those have none
        joined = left.merge(r, on=_KEY, how=m.how, shuffle_method=_SHUFFLE)
        joined = joined.map_partitions(
            lambda df: df.sort_values([_LEFT_ROW, _RIGHT_ROW], kind="stable"))
        return joined.to_delayed()

    # --- output ---

    def _layout(self):
        """A zero-row table of the output's columns, their infos and blanks."""
        like, info, blanks = Table(), {}, {}
        columns = [(self.left, n, n) for n in self.left.schema.colnames] + \
            [(self.right, n, out) for n, out in self.right_names.items()]
        for source, name, out_name in columns:
            given = source.schema.info[name]
            data, null, blanks[out_name] = blank_for(source.column(name), given.null)
            like.add_column(out_name, data[:0])
            info[out_name] = ColumnInfo(given.unit, given.description, null)
        for name, data, unit, blank in (("match_count", np.zeros(0, np.int32), None, 0),
                                        ("match_separation", np.zeros(0), "arcsec", np.nan)):
            if name in self.names:
                like.add_column(self.names[name], data)
                info[self.names[name]] = ColumnInfo(unit, MATCH_COLUMNS[name])
                blanks[self.names[name]] = blank
        return like, info, blanks

    def _finish(self, table: Table, flags: np.ndarray, header: dict) -> Table:
        """Add match_flag and put the columns in the local engine's order."""
        table.add_column(self.names["match_flag"], flags,
                         description=MATCH_COLUMNS["match_flag"])
        tail = [self.names[n] for n in ("match_count", "match_flag", "match_separation")
                if n in self.names]
        return stamp(table.select([c for c in table.colnames if c not in tail] + tail), header)

    def write(self, out: TableWriter, dask, quiet: bool, warn) -> int:
        m = self.match
        like, info, blanks = self._layout()
        header = {**keywords(m, self.right.name), "XMENGINE": "lsdb"}
        if self.sky and len(self.right_bad):
            warn(f"{self.right.name}: {len(self.right_bad)} rows have a missing or "
                 f"out-of-range position (first at row {self.right_bad[0]}); they cannot match")
        if not self.sky and self.right_missing:
            warn(f"{self.right.name}: {self.right_missing} rows have no {m.on[1]!r}; they "
                 f"cannot match")
        written = 0
        batch = 2 * (os.cpu_count() or 1)
        with progress(len(self.parts), "crossmatch", quiet, unit="partitions") as bar:
            for start in range(0, len(self.parts), batch):
                for frame in dask.compute(*self.parts[start:start + batch]):
                    table = _to_table(frame, like, blanks, info)
                    flags = np.zeros(len(table), np.int16)
                    if not self.sky:
                        flags[frame[_KEY].isna().to_numpy()] |= FLAG_NO_KEY
                    out.write(self._finish(table, flags, header))
                    written += len(table)
                bar.update(min(batch, len(self.parts) - start))
        if len(self.lonely):
            if m.how == "left":
                rows = self.left.table.rows(self.lonely)
                table = Table()
                for name in like.colnames:
                    table.add_column(name, rows[name] if name in rows else np.full(
                        (len(self.lonely), *like[name].shape[1:]), blanks[name],
                        like[name].dtype))
                    table.info[name] = info[name]
                out.write(self._finish(table, np.full(len(self.lonely), FLAG_BAD_POSITION,
                                                      np.int16), header))
                written += len(table)
            warn(flagged_rows_warning(self.left.name, FLAG_BAD_POSITION, len(self.lonely),
                                      int(self.lonely[0]), m))
        if not self.sky and self.missing_keys:
            warn(flagged_rows_warning(self.left.name, FLAG_NO_KEY, self.missing_keys, None, m))
        if out.rows_written == 0:  # no partition at all: still a table, with its columns
            out.write(self._finish(like, np.zeros(0, np.int16), header))
        return written


def _sky_algorithm(match: Match, names: dict[str, str], best: str | None):
    """An LSDB crossmatch algorithm that runs the local engine on each partition pair."""
    import pandas as pd
    import pyarrow as pa
    from lsdb.core.crossmatch.abstract_crossmatch_algorithm import AbstractCrossmatchAlgorithm

    from xptools.crossmatch.sky import SkyIndex, unit_vectors

    rule = match.keep
    count, separation = names["match_count"], names["match_separation"]
    types = {count: pd.ArrowDtype(pa.int32()), separation: pd.ArrowDtype(pa.float64())}

    def positions(df, info):
        return unit_vectors(df[info.ra_column].to_numpy(float),
                            df[info.dec_column].to_numpy(float))

    def perform_crossmatch(self, args):
        vectors = positions(args.left_df, args.left_catalog_info)
        index = SkyIndex(positions(args.right_df, args.right_catalog_info),
                         np.arange(len(args.right_df)), match.radius)
        left, right, distance = index.pairs(vectors)
        counts = np.bincount(left, minlength=len(vectors))
        score = args.right_df[best].to_numpy(float, na_value=np.nan)[right] if best else None
        keep = choose.kept(rule, left, score)
        left, right = left[keep], right[keep]
        extra = pd.DataFrame({count: pd.Series(counts[left], dtype=types[count]),
                              separation: pd.Series(distance[keep], dtype=types[separation])})
        return left, right, extra

    return type("XptoolsSkyMatch", (AbstractCrossmatchAlgorithm,),
                {"extra_columns": pd.DataFrame({n: pd.Series(dtype=t) for n, t in types.items()}),
                 "perform_crossmatch": perform_crossmatch})()
