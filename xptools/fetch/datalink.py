"""XP spectra from the Gaia archive's DataLink service, at most 5,000 source_ids per request.

One request is a POST (application/x-www-form-urlencoded) to the data endpoint, by default
https://gea.esac.esa.int/data-server/data, with the parameters astroquery.gaia's
``Gaia.load_data`` sends (astroquery 0.4, ``astroquery/gaia/core.py``):

    RETRIEVAL_TYPE  XP_CONTINUOUS, or XP_SAMPLED with --sampled
    DATA_STRUCTURE  RAW      one file for all ids, array columns kept as arrays
    FORMAT          fits     typed columns; arrays as FITS variable-length arrays
    RELEASE         Gaia DR3
    VALID_DATA      false
    USE_ZIP_ALWAYS  true     the answer is a zip archive, also for a single id
    ID              the source_ids, comma-separated (the archive accepts at most 5,000)

The answer is a zip holding XP_CONTINUOUS_RAW.fits (XP_SAMPLED_RAW.fits): one row per id that
has the product, in the archive's own order; ids without it are simply absent. The zip is kept
in the cache as received. astroquery writes the answer into the working directory and gives
no control over timeouts or retries, so the request is made here, with `xptools.fetch.http`.
"""

from __future__ import annotations

import os
import zipfile
from typing import Iterator

import numpy as np

from xptools.errors import UserError
from xptools.fetch.http import Http, TransientError
from xptools.fetch.store import BatchStore, folder, key
from xptools.io import Table, open_table
from xptools.progress import progress

DATALINK_URL = "https://gea.esac.esa.int/data-server/data"
MAX_IDS = 5000
RELEASE = "Gaia DR3"


def request_parameters(product: str) -> dict[str, str]:
    return {"RETRIEVAL_TYPE": product, "DATA_STRUCTURE": "RAW", "FORMAT": "fits",
            "RELEASE": RELEASE, "VALID_DATA": "false", "USE_ZIP_ALWAYS": "true"}


def _fits_members(archive: zipfile.ZipFile, product: str, label: str) -> list[str]:
    names = archive.namelist()
    members = [m for m in names if os.path.basename(m).startswith(product)
               and m.lower().endswith(".fits")]
    if names and not members:
        raise UserError(f"{label}: the DataLink answer holds no {product} FITS file "
                        f"(it holds {', '.join(names[:5])})")
    return members


def read_answer(path: str, product: str, work: str, label: str,
                columns: list[str] | None = None) -> Iterator[Table]:
    """The tables in a DataLink answer (a zip of FITS files)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TransientError(f"the answer is not a zip archive ({e})") from e
    with archive:
        for member in _fits_members(archive, product, label):
            tmp = os.path.join(work, "datalink-member.fits")
            try:
                with archive.open(member) as src, open(tmp, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
            except (zipfile.BadZipFile, EOFError, OSError) as e:  # CRC mismatch, cut short
                raise TransientError(f"damaged zip member {member} ({e})") from e
            try:
                with open_table(tmp, "fits") as t:
                    yield t.read(columns)
            finally:
                os.remove(tmp)


class DataLink:
    """Batches of DataLink requests for one product, answered once and kept in the cache."""

    def __init__(self, url: str, product: str, http: Http, cache: str, work: str):
        self.url = url
        self.product = product
        self.http = http
        self.work = work
        self.parameters = request_parameters(product)
        settings = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        path = folder(cache, "datalink", key(url, settings),
                      f"xptools fetch: DataLink answers from {url} ({settings}), one zip per "
                      f"request; <batch>.npz lists the ids asked and answered")
        self.store = BatchStore(path, ".zip")

    def fetch(self, ids: np.ndarray, batch_size: int, again_unanswered: bool,
              quiet: bool) -> tuple[int, int]:
        """Ask for every id the cache has no answer to yet; returns (requests, ids asked)."""
        todo = self.store.pending(ids, again_unanswered)
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        rows = 0
        with progress(len(batches), f"DataLink {self.product}", quiet, "batches") as bar:
            for batch in batches:
                rows += self._request(batch)
                bar.update(1)
                bar.set_postfix_str(f"{rows} rows")
        return len(batches), len(todo)

    def _request(self, batch: np.ndarray) -> int:
        name, tmp = self.store.new_batch(batch)
        label = f"DataLink batch {name}"
        answered: list[np.ndarray] = []

        def check(path: str) -> None:
            answered.clear()
            for table in read_answer(path, self.product, self.work, label, ["source_id"]):
                answered.append(np.asarray(table["source_id"], dtype=np.int64))

        data = {**self.parameters, "ID": ",".join(str(int(i)) for i in batch)}
        self.http.post_to_file(self.url, data, tmp, check)
        ids = np.concatenate(answered) if answered else np.zeros(0, np.int64)
        self.store.finish(name, tmp, batch, ids)
        return len(ids)

    def answers(self, ids: np.ndarray) -> Iterator[tuple[str, Table]]:
        """The cached answers that hold any of ``ids``, as (label, table)."""
        for name in self.store.holding(ids):
            label = f"DataLink answer {self.store.answer(name)}"
            try:
                for table in read_answer(self.store.answer(name), self.product, self.work,
                                         label):
                    yield label, table
            except TransientError as e:
                raise UserError(f"{label}: damaged in the cache ({e}); delete it and its .npz, "
                                f"then run again") from e
