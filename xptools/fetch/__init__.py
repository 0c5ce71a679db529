"""`xptools fetch`: XP spectra, and gaia_source columns, for a list of stars, from the Gaia
archive (DataLink, TAP) or from its bulk files; resumable, and never silently short.

    ids.py       the ids asked for: a text file, a table, a query result, a HEALPix range
    http.py      retries with exponential backoff and jitter; resumable downloads
    store.py     the cache of finished requests, so that a rerun continues where it stopped
    datalink.py  DataLink XP_CONTINUOUS / XP_SAMPLED, at most 5,000 ids per request
    tap.py       TAP jobs: --query, and --columns from gaiadr3.gaia_source
    bulk.py      the DR3 bulk files: selection by HEALPix pixel, MD5 checks, row extraction
    collect.py   rows gathered in any order, read out in the order asked

Every id asked for is in the output exactly once, in the order asked; an id the source did not
answer keeps NaN (or null) values and a ``fetch_flag``, is counted on stderr and listed in the
--missing report.
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass

import numpy as np

from xptools.errors import UserError
from xptools.fetch.bulk import Bulk, covering, overlapping, pixel_filter
from xptools.fetch.collect import Collector
from xptools.fetch.datalink import DataLink
from xptools.fetch.http import Http
from xptools.fetch.ids import Request, healpix8, read_ids, unique_in_order
from xptools.fetch.store import WorkFolder
from xptools.fetch.tap import ColumnJoin, Tap
from xptools.io import Table, TableWriter, open_table
from xptools.progress import progress
from xptools.provenance import stamp
from xptools.xp import DEFAULT_GRID, grid_keywords

FLAG_NO_SPECTRUM = 1
FLAG_NO_COLUMNS = 2
CHUNK_ROWS = 10_000


@dataclass
class Sources:
    """Where the ids, the spectra and the columns come from."""

    ids: str | None = None            # --ids FILE
    id_column: str = "source_id"
    input_format: str | None = None
    query: str | None = None          # --query ADQL
    healpix_range: tuple[int, int] | None = None
    bulk: str | None = None           # --bulk URL_OR_DIR
    product: str = "XP_CONTINUOUS"    # or XP_SAMPLED
    columns: list[str] | None = None  # --columns
    datalink_url: str = ""
    tap_url: str = ""
    cache: str = ""
    batch_size: int = 5000
    retry_missing: bool = False


def _request_from_query(tap: Tap, query: str, warn) -> Request:
    path, table = tap.query_table(query)
    name = f"--query result ({path})"
    if "source_id" not in table:
        raise UserError(f"{name}: the query must return a source_id column (it returned "
                        f"{', '.join(table.colnames[:8]) or 'no columns'})")
    if not len(table):
        raise UserError(f"{name}: the query returned no rows")
    ids = np.asarray(table["source_id"], dtype=np.int64)
    keep = unique_in_order(ids, lambda i: f"row {i}", warn, name)
    return Request(ids[keep], table.rows(keep), "source_id", name)


def _from_bulk(src: Sources, request: Request | None, http: Http, work: str, quiet: bool,
               warn) -> tuple[Request, Collector, str]:
    """Rows from the bulk files: those of the ids asked, or all in the HEALPix range; and a
    line saying what was read."""
    bulk = Bulk(src.bulk, src.product, http, src.cache)
    files = bulk.files()
    if not bulk.remote and files[0].md5 is None:
        warn(f"{src.bulk} has no _MD5SUM.txt: its files are read without a checksum test")
    if request is not None:
        needed = covering(files, healpix8(request.ids))
        keep = pixel_filter(request.ids)
    else:
        needed = overlapping(files, *src.healpix_range)
        keep = pixel_filter(None, *src.healpix_range)
    pieces, found = [], []
    with progress(len(needed), "bulk files", quiet, "files") as bar:
        for i, f in enumerate(needed):
            received = [0]

            def downloaded(n: int) -> None:  # the bar shows each new megabyte
                if (received[0] + n) >> 20 > received[0] >> 20:
                    bar.set_postfix_str(f"{f.name}: {(received[0] + n) >> 20} MB")
                received[0] += n

            path = bulk.local_path(f, downloaded)
            dest = os.path.join(work, f"bulk-{i}.ecsv")
            found.append(bulk.extract(path, keep, dest))
            pieces.append((f"{bulk.location}{f.name}", dest))
            bar.update(1)
            bar.set_postfix_str(f"{sum(map(len, found))} rows")
    if request is None:
        ids = np.concatenate(found) if found else np.zeros(0, np.int64)
        if not len(ids):
            raise UserError(f"--healpix-range {src.healpix_range[0]}-{src.healpix_range[1]}: "
                            f"no sources there in {src.bulk}")
        name = f"{src.bulk} pixels {src.healpix_range[0]}-{src.healpix_range[1]}"
        keep_rows = unique_in_order(ids, lambda i: f"row {i}", warn, name)
        request = Request(ids[keep_rows], None, "source_id", name)
    rows = Collector(request.ids, work, "xp")
    for name, dest in pieces:
        with open(dest, "rb") as f:
            fmt = "ecsv" if f.read(7) == b"# %ECSV" else "csv"
        with open_table(dest, fmt) as table:
            for chunk in table.chunks(CHUNK_ROWS):
                rows.add(chunk, name)
        os.remove(dest)
    return request, rows, (f"{len(needed)} bulk files read, {bulk.downloaded} of them "
                           f"downloaded now")


def _joined(request: Request, columns: list[Table | None], flags: np.ndarray, offset: int,
            keywords: dict) -> Table:
    n = len(flags)
    if request.table is not None:
        table = request.table.rows(slice(offset, offset + n))
    else:
        table = Table({"source_id": request.ids[offset:offset + n]})
    for part in columns:
        if part is None:
            continue
        for c in part.colnames:
            if c == "source_id" and request.id_column == "source_id":
                continue
            if c in table:
                raise UserError(f"{request.name}: already has a column {c!r}; drop or rename "
                                f"it first")
            info = part.info[c]
            table.add_column(c, part[c], unit=info.unit, description=info.description,
                             null=info.null)
    if "fetch_flag" in table:
        raise UserError(f"{request.name}: already has a column 'fetch_flag'; drop or rename it "
                        f"first")
    table.add_column("fetch_flag", flags, description="bitmask: 1 = no XP spectrum found, "
                     "2 = no gaia_source row found")
    return stamp(table, keywords)


def _report_missing(request: Request, flags: np.ndarray, product: str, origin: str,
                    missing: TableWriter | None, quiet: bool) -> None:
    """Count the ids not found on stderr and list them in the report; the count is printed
    even with --quiet unless the report records it."""
    labels = {FLAG_NO_SPECTRUM: product, FLAG_NO_COLUMNS: "gaia_source"}
    n = len(flags)
    for bit, label in labels.items():
        k = int(np.count_nonzero(flags & bit))
        if k and not (quiet and missing is not None):
            where = f"; listed in {missing.path}" if missing is not None else \
                "; --missing FILE lists them"
            print(f"xptools fetch: {k} of {n} ids have no {label} at {origin} "
                  f"(fetch_flag {bit}){where}", file=sys.stderr)
    if missing is not None:
        bad = np.flatnonzero(flags)
        reasons = np.array([" ".join(label for bit, label in labels.items() if f & bit)
                            for f in flags[bad]], dtype=str)
        report = Table({"source_id": request.ids[bad], "missing": reasons})
        report.info["missing"].description = "what was not found for this id"
        missing.write(stamp(report))


def run_fetch(src: Sources, out: TableWriter, missing: TableWriter | None, http: Http,
              quiet: bool, warn) -> None:
    """Fetch everything; write the table, and the missing report."""
    origin = src.bulk or src.datalink_url
    tap = Tap(src.tap_url, http, src.cache) if (src.query or src.columns) else None
    with WorkFolder(src.cache) as work:
        if src.ids is not None:
            request = read_ids(src.ids, src.id_column, src.input_format, warn)
        elif src.query is not None:
            request = _request_from_query(tap, src.query, warn)
        else:
            request = None
        if src.bulk:
            request, spectra, done = _from_bulk(src, request, http, work, quiet, warn)
        else:
            datalink = DataLink(src.datalink_url, src.product, http, src.cache, work)
            requests, asked = datalink.fetch(request.ids, src.batch_size, src.retry_missing,
                                             quiet)
            done = (f"{asked} asked from DataLink in {requests} requests, "
                    f"{len(request.ids) - asked} answered by earlier runs")
            spectra = Collector(request.ids, work, "xp")
            for label, table in datalink.answers(request.ids):
                spectra.add(table, label)
        flags = np.where(spectra.found, 0, FLAG_NO_SPECTRUM).astype(np.int16)
        extra = None
        if src.columns:
            join = ColumnJoin(tap, src.columns)
            join.fetch(request.ids, quiet, src.retry_missing)
            extra = Collector(request.ids, work, "tap")
            for label, table in join.answers(request.ids):
                extra.add(table, label)
            flags |= np.where(extra.found, 0, FLAG_NO_COLUMNS).astype(np.int16)
        keywords = {"XPKIND": "sampled" if src.product == "XP_SAMPLED" else "continuous",
                    "XPSOURCE": f"{src.product} from {origin}"}
        if src.product == "XP_SAMPLED":
            keywords.update(grid_keywords(DEFAULT_GRID))
        parts = zip(spectra.chunks(CHUNK_ROWS),
                    extra.chunks(CHUNK_ROWS) if extra is not None else itertools.repeat(None))
        offset = 0
        with progress(len(request.ids), "writing", quiet) as bar:
            for xp, more in parts:
                n = len(xp)
                out.write(_joined(request, [xp, more], flags[offset:offset + n], offset,
                                  keywords))
                offset += n
                bar.update(n)
    if not quiet:
        print(f"xptools fetch: {len(request.ids)} ids; {done}", file=sys.stderr)
    _report_missing(request, flags, src.product, origin, missing, quiet)
