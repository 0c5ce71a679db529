"""HTTP for `xptools fetch`: retries with exponential backoff and jitter, resumable downloads.

A request is tried again after a connection error, a timeout (no byte for ``timeout``
seconds), a body cut short, or an HTTP status that says "try later" (408, 429, any 5xx). The
n-th consecutive failure waits d/2 + uniform(0, d/2) with d = min(max_delay, backoff * 2^(n-1))
("equal jitter", M. Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015), or
the server's Retry-After when it asks for longer. A download that received bytes before it
failed starts its count afresh, so a long file on a flaky line still completes.

`download` resumes a partial file with an HTTP Range request (RFC 9110, section 14); a server
that ignores Range answers 200 and the file starts again from zero. Any other 4xx is not
retried: it is the request that is wrong, and the error names the URL and the status.

Every retry is reported through ``note`` (the command passes its warning printer unless
--quiet), one line saying what failed in plain words ("cannot resolve host H", "connection
refused by H:P", "HTTP 503 Service Unavailable", "no data from H for 60 s") and the wait before
the next try. A host name that does not resolve is not retried when that host has not answered
yet in this run: it is an `Unresolvable` error at once ("no network: cannot resolve
gea.esac.esa.int ..."), since a name that does not resolve now will not resolve during the
minutes the retries take, whether the network is down or the name is misspelt, and a cron job
should learn that at once. A host that answered earlier in the run and then stops resolving is
a blip (a Wi-Fi reconnect, a resolver restart) and is retried like any connection error.
Messages are whole: a long text from a server is shortened to whole words (`clip`).
"""

from __future__ import annotations

import email.utils
import html
import os
import random
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from xptools.errors import UserError

RETRY_STATUS = {408, 429}  # and every 5xx
CHUNK = 1 << 20
USER_AGENT = "xptools-fetch"
# The archive's hosts, and what to do instead when their names do not resolve
ARCHIVE_HOSTS = {
    "gea.esac.esa.int": "give --datalink-url/--tap-url for a mirror",
    "cdn.gea.esac.esa.int": "give --bulk a mirror or a local folder",
}


@dataclass
class RetryPolicy:
    retries: int = 8          # consecutive failures allowed per request
    backoff: float = 1.0      # seconds before the first retry; doubles each time
    max_delay: float = 60.0   # cap on one wait
    timeout: float = 60.0     # seconds to connect, and between two received bytes


class Unresolvable(UserError):
    """A host name that does not resolve, for a host that has not answered in this run: no
    network, or a wrong name. Not retried."""


class TransientError(Exception):
    """A failure worth another try (the server or the line, not the request)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retryable(status: int) -> bool:
    return status >= 500 or status in RETRY_STATUS


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_error(url: str, response) -> UserError:
    detail = _server_says(response)
    return UserError(f"{url}: HTTP {response.status_code} {response.reason}"
                     + (f": {detail}" if detail else ""))


def _server_says(response) -> str:
    """The gist of an error answer, on one line: an HTML page's title, else the first line of
    its text (the text of the elements, for XML such as a VOTable error document)."""
    text = response.text or ""
    if text.lstrip().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        if title:
            text = title.group(1)
        elif re.search(r"<html", text, re.I):
            text = ""  # a page without a title: its text is navigation and styles
        text = html.unescape(re.sub(r"<[^>]*>", "\n", text))
    return clip(next((line for line in text.splitlines() if line.strip()), ""), 200)


def clip(text: str, limit: int = 160) -> str:
    """``text`` on one line; when longer than ``limit`` characters, its first whole words
    followed by ' ...' (never a word cut in two)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = text[:limit + 1]
    head = head.rsplit(" ", 1)[0] if " " in head else text[:limit]  # one long token: a URL
    return head.rstrip(" ,;:(") + " ..."


def _seconds(delay: float) -> str:
    return f"{delay:.2f} s" if delay < 1 else f"{delay:.1f} s" if delay < 10 else f"{delay:.0f} s"


class Http:
    """Requests with the retry policy; counts retries and the bytes received."""

    def __init__(self, policy: RetryPolicy, note: Callable[[str], None] | None = None):
        import requests

        self.policy = policy
        self.note = note or (lambda message: None)
        self.reports = note is not None  # each retry is reported as it happens
        self.retried = 0
        self.received = 0
        self.reached: set[str] = set()   # the hosts that answered in this run
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self.session = retrying_session(self)

    def answered(self, url: str) -> None:
        """Note that the host of ``url`` answered (so its name resolves)."""
        host = urlsplit(url).hostname
        if host:
            self.reached.add(host.lower())

    def failure(self, error: BaseException, url: str | None) -> str:
        """Plain words for a network failure of a request to ``url``. A host name that does
        not resolve, for a host that has not answered in this run, raises Unresolvable."""
        host = _unresolved_host(error, url)
        if host is not None and host.lower() not in self.reached:
            hint = ARCHIVE_HOSTS.get(host.lower())
            if hint:
                message = f"no network: cannot resolve {host} (check the connection, or {hint})"
            else:
                message = (f"cannot resolve {host}" + (f" (in {url})" if url else "")
                           + ": a wrong host name, or no network")
            raise Unresolvable(message) from error
        return _describe(error, url, self.policy.timeout)

    def wait(self, failures: int, what: str, error: object, retry_after: float | None) -> None:
        """Sleep before retry number ``failures``, or give up with the last error."""
        p = self.policy
        if failures > p.retries:
            gave_up = ("not tried again: --retries 0" if p.retries == 0 else
                       f"gave up after {p.retries} {'retry' if p.retries == 1 else 'retries'}")
            raise UserError(f"{what}: {error} ({gave_up})")
        d = min(p.max_delay, p.backoff * 2 ** (failures - 1))
        delay = d / 2 + random.uniform(0, d / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, p.max_delay))
        self.retried += 1
        self.note(f"{what}: {error}; trying again in {_seconds(delay)} "
                  f"(retry {failures} of {p.retries})")
        time.sleep(delay)

    def attempt(self, what: str, once: Callable[[], object], resumable: bool = False):
        """``once()`` until it returns; a TransientError or a network error from it is tried
        again under the policy. For a ``resumable`` download, an attempt that received bytes
        (``self.received``) starts the failure count afresh."""
        import requests
        import urllib3

        failures = 0
        while True:
            before = self.received
            try:
                return once()
            except TransientError as e:
                error, retry_after = e, e.retry_after
            except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError,
                    TimeoutError) as e:  # not other OSErrors: a full disk is no network fault
                error, retry_after = self.failure(e, _url_in(what)), None
            failures = 1 if resumable and self.received > before else failures + 1
            self.wait(failures, what, error, retry_after)

    def _get(self, url: str, headers: dict | None = None):
        p = self.policy
        response = self._session.get(url, headers=headers or {}, stream=True,
                                     timeout=(p.timeout, p.timeout))
        self.answered(url)
        if _retryable(response.status_code):
            response.close()
            raise TransientError(f"HTTP {response.status_code} {response.reason}",
                                 _retry_after(response))
        return response

    def get_bytes(self, url: str) -> bytes:
        """A small document (a listing, a checksum file), read whole."""

        def once():
            with self._get(url) as response:
                if response.status_code != 200:
                    raise _status_error(url, response)
                body = self._read_all(response)
                _check_length(response, len(body), 0)
                return body

        return self.attempt(url, once)

    def download(self, url: str, part: str, progress: Callable[[int], None] | None = None) -> None:
        """Complete the file ``part`` with the body of ``url``, resuming what is there."""

        def once():
            have = os.path.getsize(part) if os.path.exists(part) else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._get(url, headers) as response:
                if response.status_code == 416:  # nothing left after ``have``, or a bad start
                    total = _content_range_total(response)
                    if total == have:
                        return
                    os.remove(part)
                    raise TransientError(f"range {have}- not satisfiable; starting again")
                if response.status_code not in (200, 206):
                    raise _status_error(url, response)
                start = have if response.status_code == 206 else 0
                if response.status_code == 206 and _content_range_start(response) != have:
                    os.remove(part)
                    raise TransientError("server answered a different range; starting again")
                with open(part, "r+b" if start else "wb") as f:
                    f.seek(start)
                    f.truncate()
                    for chunk in _pieces(response, decode=False):
                        f.write(chunk)
                        f.flush()
                        self.received += len(chunk)
                        if progress:
                            progress(len(chunk))
                    size = f.tell()
                _check_length(response, size, start)

        self.attempt(url, once, resumable=True)

    def post_to_file(self, url: str, data: dict, path: str,
                     check: Callable[[str], None] | None = None) -> None:
        """POST a form and write the answer to ``path``; ``check(path)`` may raise
        TransientError for an answer that arrived whole but is unusable. A failed answer is
        asked again from the start (a POST cannot be resumed)."""
        p = self.policy

        def once():
            with self._session.post(url, data=data, stream=True,
                                    timeout=(p.timeout, p.timeout)) as response:
                self.answered(url)
                if _retryable(response.status_code):
                    raise TransientError(f"HTTP {response.status_code} {response.reason}",
                                         _retry_after(response))
                if response.status_code != 200:
                    raise _status_error(url, response)
                with open(path, "wb") as f:
                    for chunk in _pieces(response, decode=True):
                        f.write(chunk)
                        self.received += len(chunk)
                    size = f.tell()
                if "Content-Encoding" not in response.headers:
                    _check_length(response, size, 0)
            if check:
                check(path)

        self.attempt(url, once)

    def _read_all(self, response) -> bytes:
        parts = []
        for chunk in _pieces(response, decode=True):
            parts.append(chunk)
            self.received += len(chunk)
        return b"".join(parts)


def _pieces(response, decode: bool):
    """The body as it arrives (each piece is whatever the network delivered, at most CHUNK
    bytes), so that a partial download is on disk up to the last byte received."""
    while piece := response.raw.read1(CHUNK, decode_content=decode):
        yield piece


def _check_length(response, size: int, start: int) -> None:
    """A body shorter than the Content-Length the server announced was cut off."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and size != start + int(length):
        raise TransientError(f"body cut off after {size - start} of {length} bytes")


def _content_range_start(response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes */TOTAL"
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _url_in(what: str) -> str | None:
    """The URL in a label such as 'https://...' or 'TAP https://...'."""
    return next((word for word in what.split() if "://" in word), None)


def _chain(error: BaseException):
    """``error`` and the exceptions it wraps (requests -> urllib3 -> socket), outermost first."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]


def _unresolved_host(error: BaseException, url: str | None) -> str | None:
    """The host whose name did not resolve, when that is the failure."""
    import urllib3

    for e in _chain(error):
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return getattr(e, "_host", None) or _host(error, url) or "the host"
        if isinstance(e, socket.gaierror):
            return _host(error, url) or "the host"
    return None


def _host(error: BaseException, url: str | None, port: bool = False) -> str | None:
    """The host (``port``: host:port) a failed request went to."""
    request = getattr(error, "request", None)
    url = getattr(request, "url", None) or url
    if url:
        parts = urlsplit(url)
        if parts.hostname:
            return f"{parts.hostname}:{parts.port}" if port and parts.port else parts.hostname
    for e in _chain(error):
        pool = getattr(e, "pool", None)
        if getattr(pool, "host", None):
            return f"{pool.host}:{pool.port}" if port and pool.port else pool.host
    return None


def _describe(error: BaseException, url: str | None = None, timeout: float | None = None) -> str:
    """What a network failure was, in plain words (requests' own messages run to several
    lines of connection-pool details)."""
    import http.client
    import ssl

    import requests
    import urllib3

    chain = list(_chain(error))

    def first(*kinds):
        return next((e for e in chain if isinstance(e, kinds)), None)

    host = _host(error, url) or "the server"
    within = f" {timeout:g} s" if timeout else ""
    if (name := _unresolved_host(error, url)) is not None:
        return f"cannot resolve host {name}"
    tls = first(ssl.SSLError)
    if tls is not None or first(requests.exceptions.SSLError):
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None)
        return f"TLS with {host} failed" + (f" ({clip(reason, 80)})" if reason else "")
    system = next((e for e in chain if isinstance(e, OSError) and isinstance(e.errno, int)
                   and e.errno > 0), None)  # the operating system's reason
    if isinstance(system, ConnectionRefusedError):
        return f"connection refused by {_host(error, url, port=True) or host}"
    if isinstance(system, ConnectionResetError):
        return f"connection reset by {host}"
    if system is not None:  # e.g. "network is unreachable", "no route to host"
        return f"{os.strerror(system.errno).lower()} ({host})"
    # (urllib3 2 makes NewConnectionError a ConnectTimeoutError, for compatibility)
    if first(requests.ConnectTimeout) or any(
            isinstance(e, urllib3.exceptions.ConnectTimeoutError)
            and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain):
        return f"no connection to {host} within{within}" if within else f"no connection to {host}"
    if first(requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
        return f"no data from {host} for{within}" if within else f"no data from {host} (timed out)"
    if first(requests.exceptions.ChunkedEncodingError, http.client.IncompleteRead,
             urllib3.exceptions.IncompleteRead) or "IncompleteRead" in str(error):
        return "connection dropped in the middle of the body"
    if first(http.client.RemoteDisconnected):
        return f"{host} closed the connection without answering"
    if "timed out" in str(error).lower():
        return "timed out"
    inner = chain[-1]
    text = next((line for line in str(inner).splitlines() if line.strip()), type(inner).__name__)
    return f"connection failed ({clip(text, 100)})"


def retrying_session(http: Http):
    """A requests.Session for libraries (pyvo) whose requests should follow the retry policy:
    connection errors, timeouts and retryable statuses are tried again, and the last failure
    is a UserError. Bodies the library reads later are not covered: the caller tries the whole
    operation again for those."""
    import requests

    class RetryingSession(requests.Session):
        def request(self, method, url, **kwargs):
            kwargs.setdefault("timeout", (http.policy.timeout, http.policy.timeout))
            failures = 0
            while True:
                for f in (kwargs.get("files") or {}).values():  # uploads are sent again
                    if hasattr(f, "seek"):
                        f.seek(0)
                try:
                    response = super().request(method, url, **kwargs)
                except (requests.ConnectionError, requests.Timeout) as e:
                    failures += 1
                    http.wait(failures, url, http.failure(e, url), None)
                    continue
                http.answered(url)
                if not _retryable(response.status_code):
                    return response
                failures += 1
                response.close()
                http.wait(failures, url, f"HTTP {response.status_code} {response.reason}",
                          _retry_after(response))

    session = RetryingSession()
    session.headers["User-Agent"] = USER_AGENT
    return session


def warn_retries(http: Http, quiet: bool) -> None:
    if http.retried and not quiet:
        print(f"xptools fetch: {http.retried} requests failed and were tried again"
              + ("" if http.reports else " (--verbose shows each)"), file=sys.stderr)
