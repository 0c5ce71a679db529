"""A stand-in for the Gaia archive on 127.0.0.1, for tests and benchmarks: DataLink, TAP
(asynchronous, UWS) and bulk-file folders over HTTP, answering in the archive's own formats,
with faults on demand and a log of every request and of the bytes served.

    with ArchiveServer(tmp_path, continuous=table) as server:
        server.add_bulk("xp", folder)          # files and _MD5SUM.txt under server.bulk_url("xp")
        run("fetch", "--ids", ids, "--datalink-url", server.datalink_url, ...)

DataLink (POST /data-server/data) answers like the real service for DATA_STRUCTURE=RAW,
FORMAT=fits, USE_ZIP_ALWAYS=true: a zip holding XP_CONTINUOUS_RAW.fits (XP_SAMPLED_RAW.fits)
with one row per id it knows, sorted by source_id, array columns as FITS variable-length arrays
(TFORM 'PD()'/'PE()', empty for a missing band) as in the archive's own file
gaiaxpy_reference/xp_continuous/XP_CONTINUOUS_RAW.fits. TAP runs the join xptools sends and
the queries a test registers. Faults (HTTP 500 and 503, a body cut off halfway, a stall longer
than the client's timeout) hit a chosen share of the requests under a path prefix, drawn from
a seeded generator so that a sequential client sees the same faults every run.

Run alone, it serves the real DR3 data of ../shared/data until Ctrl-C, to try `xptools fetch`
without the internet (``python tests/archive_server.py --help``).
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from xptools.io import Table


@dataclass
class Faults:
    rate: float = 0.0
    kinds: tuple = ("500", "503", "cut", "stall")
    seed: int = 0
    prefix: str = "/"
    stall: float = 2.0          # seconds a stalled answer waits before the server hangs up
    _rng: random.Random = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pick(self, path: str) -> str | None:
        if not path.startswith(self.prefix) or self.rate <= 0:
            return None
        with self._lock:
            if self._rng is None:
                self._rng = random.Random(self.seed)
            if self._rng.random() >= self.rate:
                return None
            return self._rng.choice(self.kinds)


@dataclass
class Served:
    method: str
    path: str
    status: int
    body_bytes: int
    range_start: int | None
    fault: str | None
    ids: int | None = None      # DataLink: the number of ids asked


def archive_fits(table: Table, extname: str) -> bytes:
    """A table as the archive writes it in FITS: array columns as variable-length arrays
    (empty for a missing band), TNULL for integer columns with nulls, TCOMM descriptions."""
    import fitsio

    names = table.colnames
    dtype = [(n, "O") if table[n].ndim == 2 else (n, table[n].dtype) for n in names]
    rec = np.empty(len(table), dtype=dtype)
    for n in names:
        if table[n].ndim == 2:
            rec[n] = [np.zeros(0, row.dtype) if np.isnan(row).all() else row for row in table[n]]
        else:
            rec[n] = table[n]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "answer.fits")
        with fitsio.FITS(path, "rw", clobber=True) as f:
            f.write_table(rec, extname=extname, units=[table.info[n].unit or "" for n in names])
            hdu = f[-1]
            for i, n in enumerate(names, start=1):
                if table.info[n].null is not None:
                    hdu.write_key(f"TNULL{i}", int(table.info[n].null))
                if table.info[n].description:
                    hdu.write_key(f"TCOMM{i}", table.info[n].description)
        with open(path, "rb") as f:
            return f.read()


def votable_bytes(table) -> bytes:
    """An astropy table as a TAP result document (BINARY2, QUERY_STATUS=OK)."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info

    votable = from_table(table)
    votable.resources[0].infos.append(Info(name="QUERY_STATUS", value="OK"))
    out = io.BytesIO()
    votable.to_xml(out, tabledata_format="binary2")
    return out.getvalue()


UWS = ('<?xml version="1.0" encoding="UTF-8"?>\n'
       '<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
       'xmlns:xlink="http://www.w3.org/1999/xlink" '
       'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">'
       '<uws:jobId>{id}</uws:jobId><uws:ownerId xsi:nil="true"/><uws:phase>{phase}</uws:phase>'
       '<uws:quote xsi:nil="true"/><uws:creationTime>2024-01-01T00:00:00Z</uws:creationTime>'
       '<uws:startTime xsi:nil="true"/><uws:endTime xsi:nil="true"/>'
       '<uws:executionDuration>0</uws:executionDuration>'
       '<uws:destruction xsi:nil="true"/><uws:parameters/>'
       '<uws:results>{results}</uws:results>{error}</uws:job>')


class ArchiveServer:
    """The stand-in archive; a context manager that starts and stops the server thread."""

    def __init__(self, workdir, continuous: Table | None = None, sampled: Table | None = None,
                 gaia_source: Table | None = None, faults: Faults | None = None, port: int = 0):
        self.workdir = str(workdir)
        self.catalogues = {"XP_CONTINUOUS": continuous, "XP_SAMPLED": sampled}
        self.gaia_source = gaia_source
        self.faults = faults or Faults()
        self.queries: dict[str, object] = {}     # ADQL text -> astropy Table
        self.corrupt: set[str] = set()           # bulk file names served damaged
        self.holds: dict[str, dict] = {}         # see hold()
        self.held = threading.Event()            # set when a held answer has sent its bytes
        self.release = threading.Event()         # lets held answers end (the client is gone)
        self.ranges = True                       # False: ignore Range headers, answer 200
        self.log: list[Served] = []
        self._bulk: dict[str, str] = {}
        self._jobs: dict[str, dict] = {}
        self._job_count = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.datalink_url = self.url + "/data-server/data"
        self.tap_url = self.url + "/tap-server/tap"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "ArchiveServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def hold(self, path: str, nbytes: int, after: int = 0) -> None:
        """Answer request number ``after + 1`` to ``path`` with its first ``nbytes`` bytes,
        then wait (until `release` is set) without closing: a client to be killed."""
        self.holds[path] = {"after": after, "bytes": nbytes}

    def add_bulk(self, name: str, folder: str) -> str:
        self._bulk[name] = str(folder)
        return self.bulk_url(name)

    def bulk_url(self, name: str) -> str:
        return f"{self.url}/bulk/{name}/"

    def served(self, prefix: str = "/", method: str | None = None) -> list[Served]:
        with self._lock:
            return [s for s in self.log if s.path.startswith(prefix)
                    and (method is None or s.method == method)]

    def bytes_served(self, prefix: str = "/") -> int:
        return sum(s.body_bytes for s in self.served(prefix))

    # -- DataLink ------------------------------------------------------------------------
    def datalink(self, form: dict) -> tuple[int, str, bytes]:
        product = form.get("RETRIEVAL_TYPE", "")
        catalogue = self.catalogues.get(product)
        expected = {"DATA_STRUCTURE": "RAW", "FORMAT": "fits", "USE_ZIP_ALWAYS": "true",
                    "RELEASE": "Gaia DR3"}
        wrong = [k for k, v in expected.items() if form.get(k) != v]
        if catalogue is None or wrong:
            return 400, "text/plain", f"unsupported request {product} {wrong}".encode()
        ids = [int(v) for v in form.get("ID", "").split(",") if v]
        if len(ids) > 5000:
            return 400, "text/plain", b"Too many ids: at most 5000 per request"
        known = np.isin(catalogue["source_id"], ids)
        rows = catalogue.rows(np.flatnonzero(known))
        rows = rows.rows(np.argsort(rows["source_id"], kind="stable"))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            if len(rows):
                z.writestr(f"{product}_RAW.fits", archive_fits(rows, product))
        return 200, "application/zip", out.getvalue()

    # -- TAP ----------------------------------------------------------------------------
    def run_query(self, query: str, uploads: dict) -> tuple[object | None, str | None]:
        from astropy.table import Table as AstropyTable

        query = " ".join(query.split())
        m = re.match(r"SELECT u\.source_id, (.+) FROM TAP_UPLOAD\.ids AS u JOIN "
                     r"gaiadr3\.gaia_source AS g ON g\.source_id = u\.source_id$", query)
        if m:
            columns = [c.strip()[2:] for c in m.group(1).split(",")]
            unknown = [c for c in columns if c not in self.gaia_source]
            if unknown:
                return None, f"Column '{unknown[0]}' does not exist in gaiadr3.gaia_source"
            ids = np.asarray(uploads["ids"]["source_id"], dtype=np.int64)
            rows = self.gaia_source.rows(np.flatnonzero(np.isin(self.gaia_source["source_id"],
                                                                ids)))
            out = AstropyTable({"source_id": rows["source_id"]})
            for c in columns:
                out[c] = rows[c]
                out[c].unit = rows.info[c].unit
            return out, None
        if query in self.queries:
            return self.queries[query], None
        return None, f"unknown query: {query[:80]}"

    def tap(self, method: str, path: str, form: dict, files: dict) -> tuple[int, str, bytes, dict]:
        base = "/tap-server/tap/async"
        if method == "POST" and path == base:
            with self._lock:
                self._job_count += 1
                job = str(self._job_count)
                self._jobs[job] = {"form": form, "files": files, "phase": "PENDING"}
            return 303, "text/plain", b"", {"Location": f"{self.url}{base}/{job}"}
        m = re.match(rf"^{base}/(\d+)(/phase|/results/result)?$", path)
        if not m or m.group(1) not in self._jobs:
            return 404, "text/plain", b"no such job", {}
        job_id, tail = m.group(1), m.group(2)
        job = self._jobs[job_id]
        if method == "DELETE":
            self._jobs.pop(job_id, None)
            return 303, "text/plain", b"", {"Location": f"{self.url}{base}"}
        if tail == "/phase" and method == "POST":
            if form.get("PHASE") == "RUN" and job["phase"] == "PENDING":
                from astropy.io.votable import parse_single_table

                uploads = {}
                for spec in filter(None, job["form"].get("UPLOAD", "").split(";")):
                    name, ref = spec.split(",", 1)
                    data = job["files"][ref.split(":", 1)[1]]
                    uploads[name] = parse_single_table(io.BytesIO(data)).to_table()
                result, error = self.run_query(job["form"].get("QUERY", ""), uploads)
                job["phase"] = "ERROR" if error else "COMPLETED"
                job["error"] = error
                job["result"] = votable_bytes(result) if result is not None else None
            return 303, "text/plain", b"", {"Location": f"{self.url}{base}/{job_id}"}
        if tail == "/results/result":
            return 200, "application/x-votable+xml", job["result"], {}
        results = (f'<uws:result id="result" xlink:href="{self.url}{base}/{job_id}/results/'
                   f'result"/>' if job["phase"] == "COMPLETED" else "")
        error = (f'<uws:errorSummary type="fatal" hasDetail="false"><uws:message>{job["error"]}'
                 f'</uws:message></uws:errorSummary>' if job.get("error") else "")
        body = UWS.format(id=job_id, phase=job["phase"], results=results, error=error)
        return 200, "text/xml", body.encode(), {}


def _form(handler, body: bytes) -> tuple[dict, dict]:
    """(fields, files) of an urlencoded or multipart request body."""
    kind = handler.headers.get("Content-Type", "")
    if kind.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {kind}\r\n\r\n".encode() + body)
        fields, files = {}, {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            if part.get_filename() is not None:
                files[name] = data
            else:
                fields[name] = data.decode()
        return fields, files
    return {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode(),
                                                        keep_blank_values=True).items()}, {}


def _handler(server: ArchiveServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"   # one request per connection; the server hangs up

        def log_message(self, *args):
            pass

        ids = None

        def _record(self, status, sent, start, fault):
            with server._lock:
                server.log.append(Served(self.command, urllib.parse.urlsplit(self.path).path,
                                         status, sent, start, fault, self.ids))

        def _send(self, status: int, kind: str, body: bytes, headers: dict | None = None,
                  path: str = "", whole: int | None = None, start: int | None = None):
            fault = server.faults.pick(path)
            if fault in ("500", "503"):
                text = b"Service temporarily unavailable" if fault == "503" else b"Internal error"
                self.send_response(int(fault))
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)
                self._record(int(fault), 0, start, fault)
                return
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{whole}")
            if whole is not None:
                self.send_header("Accept-Ranges", "bytes")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            hold = server.holds.get(path)
            if hold is not None and hold["after"] > 0:
                hold["after"] -= 1
                hold = None
            if fault in ("cut", "stall") and len(body) > 1:
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                self._record(status, half, start, fault)
                if fault == "stall":
                    time.sleep(server.faults.stall)
                return
            if hold is not None:
                del server.holds[path]
                self.wfile.write(body[:hold["bytes"]])
                self.wfile.flush()
                self._record(status, hold["bytes"], start, "hold")
                server.held.set()
                server.release.wait()
                return
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self._record(status, len(body), start, None)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_POST(self):
            path = urllib.parse.urlsplit(self.path).path
            form, files = _form(self, self._body())
            if path == "/data-server/data":
                self.ids = len([v for v in form.get("ID", "").split(",") if v])
                self._send(*server.datalink(form), path=path)
            elif path.startswith("/tap-server/tap"):
                status, kind, body, headers = server.tap("POST", path, form, files)
                self._send(status, kind, body, headers, path=path)
            else:
                self._send(404, "text/plain", b"not found", path=path)

        def do_DELETE(self):
            path = urllib.parse.urlsplit(self.path).path
            status, kind, body, headers = server.tap("DELETE", path, {}, {})
            self._send(status, kind, body, headers, path=path)

        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith("/tap-server/tap"):
                status, kind, body, headers = server.tap("GET", path, {}, {})
                return self._serve_bytes(status, kind, body, headers, path)
            m = re.match(r"^/bulk/([^/]+)/([^/]+)$", path)
            if not m or m.group(1) not in server._bulk:
                return self._send(404, "text/plain", b"not found", path=path)
            file = os.path.join(server._bulk[m.group(1)], m.group(2))
            if not os.path.isfile(file):
                return self._send(404, "text/plain", b"not found", path=path)
            with open(file, "rb") as f:
                data = f.read()
            if m.group(2) in server.corrupt:
                data = bytearray(data)
                data[len(data) // 2] ^= 0xFF
                data = bytes(data)
            kind = "text/plain" if file.endswith(".txt") else "application/gzip"
            self._serve_bytes(200, kind, data, {}, path)

        def _serve_bytes(self, status, kind, data, headers, path):
            """A document, or the part of it a Range header asks for."""
            wanted = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
            if status != 200 or not wanted or not server.ranges:
                return self._send(status, kind, data, headers, path=path, whole=len(data)
                                  if status == 200 else None)
            start = int(wanted.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return self._record(416, 0, start, None)
            self._send(206, kind, data[start:], headers, path=path, whole=len(data), start=start)

    return Handler


# -- archive files from the real data in ../shared/data ------------------------------------

def full_schema_sources(shared: str) -> Table:
    """The real DR3 sources with the archive's full XP_CONTINUOUS schema (7 sources, one
    without BP), as one table with the archive's column types."""
    from xptools.io import concat, read_table

    paths = ["gaiaxpy_reference/xp_continuous/XP_CONTINUOUS_RAW.fits",
             "xp_continuous/xp_continuous_4_full_schema.vot",
             "gaiaxpy_reference/xp_continuous/XP_CONTINUOUS_RAW_with_missing_BP.fits"]
    tables = [read_table(os.path.join(shared, p)) for p in paths]
    first = tables[0]
    for n in first.colnames:  # one type per column; an integer null where any file has one
        nulls = [t.info[n].null for t in tables if t.info[n].null is not None]
        for t in tables:
            t.columns[n] = t[n].astype(first[n].dtype)
            t.info[n] = first.info[n]
        first.info[n].null = nulls[0] if nulls else None
    table = concat([t.select(first.colnames) for t in tables])
    _, keep = np.unique(table["source_id"], return_index=True)
    return table.rows(np.sort(keep))


def repeated(table: Table, n: int, first_id: int) -> Table:
    """``n`` rows cycling through ``table``, with new source_ids first_id, first_id + 1, ..."""
    out = table.rows(np.arange(n) % len(table))
    out.columns["source_id"] = np.arange(first_id, first_id + n, dtype=np.int64)
    return out


def bulk_sources(shared: str) -> Table:
    """The 2,000 real DR3 sources of xp_continuous_2000.fits in the archive's array layout
    (the columns that file has: coefficients, errors, n_relevant_bases)."""
    from xptools.io import read_table

    src = read_table(os.path.join(shared, "xp_continuous", "xp_continuous_2000.fits"))
    out = Table()
    out.add_column("source_id", src["source_id"])
    for band in ("bp", "rp"):
        out.add_column(f"{band}_coefficients", np.stack(
            [src[f"{band}_coeff_{i}"] for i in range(55)], axis=1).astype(np.float64))
        out.add_column(f"{band}_coefficient_errors", np.stack(
            [src[f"e_{band}_coeff_{i}"] for i in range(55)], axis=1).astype(np.float32))
        out.add_column(f"{band}_n_relevant_bases", src[f"{band}_n_relevant_bases"])
    return out


def _ecsv_cell(value) -> str:
    if isinstance(value, np.ndarray):
        if np.isnan(value).all():
            return "null"
        return '"[' + ",".join("NaN" if v != v else repr(v) for v in value.tolist()) + ']"'
    if isinstance(value, (float, np.floating)):
        return "null" if value != value else repr(float(value))
    return str(value)


def write_bulk_ecsv(table: Table, path: str) -> None:
    """A bulk file as in the DR3 folders: gzip ECSV, array cells as quoted strings "[...]",
    'null' for missing values."""
    import gzip

    import yaml

    datatype = []
    for n in table.colnames:
        a = table[n]
        entry = {"name": n, "datatype": "string", "subtype": f"{a.dtype.name}[{a.shape[1]}]"} \
            if a.ndim == 2 else {"name": n, "datatype": a.dtype.name}
        datatype.append(entry)
    header = yaml.safe_dump({"delimiter": ",", "datatype": datatype,
                             "schema": "astropy-2.0"}, sort_keys=False, width=1000)
    with gzip.open(path, "wt", encoding="utf-8", newline="\n") as f:
        f.write("# %ECSV 1.0\n# ---\n")
        f.write("".join(f"# {line}\n" for line in header.splitlines()))
        f.write(",".join(table.colnames) + "\n")
        columns = [table[n] for n in table.colnames]
        for i in range(len(table)):
            f.write(",".join(_ecsv_cell(c[i]) for c in columns) + "\n")


def write_bulk_folder(table: Table, folder: str, files: int,
                      prefix: str = "XpContinuousMeanSpectrum") -> list[str]:
    """Split a table by level-8 HEALPix pixel (source_id >> 43) into ``files`` bulk files
    of consecutive pixel ranges, with an _MD5SUM.txt; returns the file names."""
    import hashlib

    os.makedirs(folder, exist_ok=True)
    table = table.rows(np.argsort(table["source_id"], kind="stable"))
    pixels = table["source_id"] >> 43
    distinct = np.unique(pixels)
    groups = np.array_split(distinct, files)
    names, sums = [], []
    for i, group in enumerate(groups):
        first = 0 if i == 0 else int(group[0])
        last = int(groups[i + 1][0]) - 1 if i + 1 < len(groups) else int(group[-1])
        name = f"{prefix}_{first:06d}-{last:06d}.csv.gz"
        rows = table.rows(np.flatnonzero((pixels >= first) & (pixels <= last)))
        write_bulk_ecsv(rows, os.path.join(folder, name))
        with open(os.path.join(folder, name), "rb") as f:
            sums.append(f"{hashlib.md5(f.read()).hexdigest()}  {name}\n")
        names.append(name)
    with open(os.path.join(folder, "_MD5SUM.txt"), "w") as f:
        f.writelines(sums)
    return names


def kill_when_held(server: ArchiveServer, args, written=lambda: True, wait: float = 120.0) -> bool:
    """Run ``python -m xptools ARGS`` and kill it (SIGKILL) once the server has sent a held
    answer (`ArchiveServer.hold`) and ``written()`` says the client stored what it received;
    returns whether both happened within ``wait`` seconds."""
    process = subprocess.Popen([sys.executable, "-m", "xptools", *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + wait
        happened = server.held.wait(wait)
        while happened and not written():
            happened = time.monotonic() < deadline
            time.sleep(0.05)
        return happened
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


# -- run alone: python tests/archive_server.py ---------------------------------------------

def main(argv=None) -> None:
    """Serve the real DR3 data of ../shared/data on 127.0.0.1 until Ctrl-C (or SIGTERM)."""
    import argparse

    from xptools.io import read_table

    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(
        description="A stand-in Gaia archive on 127.0.0.1 (DataLink, TAP, bulk files) serving "
                    "the real DR3 data of ../shared/data, to try `xptools fetch` offline.")
    parser.add_argument("--port", type=int, default=8321, help="port (default 8321; 0: any)")
    parser.add_argument("--shared", default=os.environ.get(
        "XPTOOLS_SHARED_DATA", os.path.join(here, "..", "..", "shared", "data")),
        help="the shared data folder (default $XPTOOLS_SHARED_DATA, else ../shared/data)")
    parser.add_argument("--faults", type=float, default=0.0, metavar="SHARE",
                        help="answer this share of the requests (0-1) with HTTP 500 or 503")
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults")
    args = parser.parse_args(argv)

    continuous = full_schema_sources(args.shared)       # 7 sources, the archive's schema
    library = read_table(os.path.join(args.shared, "apogee_xp", "xp_sampled.fits"))
    library = library.rows(slice(0, 2000))
    sampled = library.select(["source_id", "flux", "flux_error"])
    gaia_source = library.select(["source_id", "phot_g_mean_mag", "phot_bp_mean_mag",
                                  "phot_rp_mean_mag"])
    faults = Faults(rate=args.faults, kinds=("500", "503"), seed=args.seed)
    query = "SELECT source_id FROM gaiadr3.gaia_source"

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="archive-server-") as work:
        bulk = os.path.join(work, "xp_continuous_mean_spectrum")
        stars = bulk_sources(args.shared)
        write_bulk_folder(stars, bulk, 20)
        pixels = np.asarray(stars["source_id"]) >> 43
        with ArchiveServer(work, continuous=continuous, sampled=sampled,
                           gaia_source=gaia_source, faults=faults, port=args.port) as server:
            from astropy.table import Table as AstropyTable

            server.queries[query] = AstropyTable({"source_id": sampled["source_id"]})
            print(f"""stand-in Gaia archive at {server.url} (Ctrl-C stops it)
  DataLink  --datalink-url {server.datalink_url}
            XP_CONTINUOUS of {len(continuous)} sources: {' '.join(map(str, continuous['source_id']))}
            XP_SAMPLED (--sampled) of {len(sampled)} sources of apogee_xp/xp_sampled.fits
  TAP       --tap-url {server.tap_url}
            --columns of {','.join(gaia_source.colnames[1:])}
            --query "{query}" (the {len(sampled)} XP_SAMPLED sources)
  bulk      --bulk {server.add_bulk("xp_continuous_mean_spectrum", bulk)}
            --healpix-range {pixels.min()}-{pixels.max()}: {len(stars)} sources in 20 files
  faults    {args.faults:g} of the requests answered HTTP 500 or 503 (--faults)""", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
