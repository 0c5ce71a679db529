"""The Gaia archive's TAP service: the ids of an ADQL query (--query) and gaia_source columns
for the fetched ids (--columns).

Both run as asynchronous TAP jobs (IVOA TAP 1.1 on UWS 1.1) at the TAP endpoint, by default
https://gea.esac.esa.int/tap-server/tap, through pyvo:

    POST {tap}/async            REQUEST=doQuery, LANG=ADQL, QUERY=...
                                (+ UPLOAD=ids,param:ids and a VOTable part, for --columns)
    POST {job}/phase            PHASE=RUN
    GET  {job}?WAIT=-1          until the phase is COMPLETED (or ERROR, ABORTED)
    GET  {job}/results/result   the VOTable, downloaded here (resumable) into the cache
    DELETE {job}

Synchronous queries are not used: the archive cuts their results at 2,000 rows. pyvo's
requests go through a session with xptools' retry policy (`xptools.fetch.http`), and a job that
fails on the way is submitted again. --columns runs, per batch of at most 50,000 ids,

    SELECT u.source_id, g.<column>, ... FROM TAP_UPLOAD.ids AS u
    JOIN gaiadr3.gaia_source AS g ON g.source_id = u.source_id
"""

from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.fetch.http import Http, TransientError, clip
from xptools.fetch.store import BatchStore, folder, key
from xptools.io import Table, read_table
from xptools.progress import progress

TAP_URL = "https://gea.esac.esa.int/tap-server/tap"
SOURCE_TABLE = "gaiadr3.gaia_source"
JOIN_BATCH = 50_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_columns(text: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c'] (gaia_source column names; source_id is always there)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not _NAME.match(n)]
    if bad or not names:
        raise UserError(f"--columns {text!r}: expected column names separated by commas, "
                        f"e.g. phot_g_mean_mag,parallax" + (f" ({bad[0]!r} is not a name)"
                                                            if bad else ""))
    out = []
    for n in names:
        if n.lower() != "source_id" and n.lower() not in (o.lower() for o in out):
            out.append(n)
    return out


def _overflowed(path: str) -> bool:
    """Whether the result says it was cut at a row limit (INFO QUERY_STATUS=OVERFLOW); an
    unreadable result is a TransientError (the job is run again)."""
    import warnings

    from astropy.io.votable import parse
    from astropy.io.votable.exceptions import VOWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VOWarning)
            votable = parse(path, verify="ignore")
    except Exception as e:  # the XML parser raises many kinds
        raise TransientError(f"unreadable TAP result ({clip(str(e), 120)})") from e
    infos = list(votable.infos) + [i for r in votable.resources for i in r.infos]
    return any(i.name == "QUERY_STATUS" and str(i.value).upper() == "OVERFLOW" for i in infos)


class Tap:
    """Asynchronous TAP jobs whose results are kept in the cache."""

    def __init__(self, url: str, http: Http, cache: str):
        self.url = url.rstrip("/")
        self.http = http
        self.cache = cache

    def run(self, query: str, dest: str, uploads: dict | None = None,
            maxrec: int | None = None) -> None:
        """Run ``query`` and download its VOTable result to ``dest`` (atomically)."""
        import pyvo
        from pyvo.dal.exceptions import DALQueryError, DALServiceError

        service = pyvo.dal.TAPService(self.url, session=self.http.session)
        part = dest + ".part"

        def once():
            if os.path.exists(part):
                os.remove(part)  # a new job: its result is a new document
            try:
                job = service.submit_job(query, uploads=uploads, maxrec=maxrec)
                job.run()
                job.wait()
                job.raise_if_error()
                result = job.result_uri
            except DALQueryError as e:
                raise UserError(f"TAP {self.url}: the query failed: {e}") from e
            except DALServiceError as e:
                raise TransientError(f"TAP job failed ({clip(str(e), 200)})") from e
            if result is None:
                raise TransientError("TAP job completed without a result")
            try:
                self.http.download(result, part)
            finally:
                try:
                    job.delete()
                except (DALServiceError, UserError):
                    pass  # the server removes old jobs itself
            if _overflowed(part):
                raise UserError(f"TAP {self.url}: the result was cut at the service's row limit; "
                                f"split the query")

        self.http.attempt(f"TAP {self.url}", once)
        os.replace(part, dest)

    def query_table(self, query: str) -> tuple[str, Table]:
        """The result of an ADQL query (run once; later runs read it from the cache)."""
        path = folder(self.cache, "tap", key(self.url), f"xptools fetch: TAP results from {self.url}")
        dest = os.path.join(path, f"query-{key(query)}.vot")
        if not os.path.exists(dest):
            self.run(query, dest)
        return dest, read_table(dest, "votable")


class ColumnJoin:
    """gaia_source columns for lists of ids, by batches of uploaded ids, kept in the cache."""

    def __init__(self, tap: Tap, columns: list[str]):
        self.tap = tap
        self.columns = columns
        settings = f"{SOURCE_TABLE}: {','.join(columns)}"
        path = folder(tap.cache, "tap", key(tap.url, settings),
                      f"xptools fetch: {settings} from {tap.url}, one VOTable per batch of ids")
        self.store = BatchStore(path, ".vot")

    def query(self) -> str:
        picked = ", ".join(f"g.{c}" for c in self.columns)
        return (f"SELECT u.source_id, {picked} FROM TAP_UPLOAD.ids AS u "
                f"JOIN {SOURCE_TABLE} AS g ON g.source_id = u.source_id")

    def fetch(self, ids: np.ndarray, quiet: bool, again_unanswered: bool = False) -> int:
        """Ask for the ids the cache has no answer to yet; returns the number of jobs."""
        from astropy.table import Table as AstropyTable

        todo = self.store.pending(ids, again_unanswered)
        batches = [todo[i:i + JOIN_BATCH] for i in range(0, len(todo), JOIN_BATCH)]
        with progress(len(batches), f"TAP {SOURCE_TABLE}", quiet, "batches") as bar:
            for batch in batches:
                name, tmp = self.store.new_batch(batch)
                upload = AstropyTable({"source_id": np.asarray(batch, dtype=np.int64)})
                self.tap.run(self.query(), tmp, uploads={"ids": upload}, maxrec=len(batch))
                result = read_table(tmp, "votable")
                if "source_id" not in result:
                    raise UserError(f"TAP {self.tap.url}: the join result has no source_id column")
                self.store.finish(name, tmp, batch, np.asarray(result["source_id"], np.int64))
                bar.update(1)
        return len(batches)

    def answers(self, ids: np.ndarray) -> Iterator[tuple[str, Table]]:
        for name in self.store.holding(ids):
            path = self.store.answer(name)
            yield f"TAP result {path}", read_table(path, "votable")
