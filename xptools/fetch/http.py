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
"""

from __future__ import annotations

import email.utils
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable

from xptools.errors import UserError

RETRY_STATUS = {408, 429}  # and every 5xx
CHUNK = 1 << 20
USER_AGENT = "xptools-fetch"


@dataclass
class RetryPolicy:
    retries: int = 8          # consecutive failures allowed per request
    backoff: float = 1.0      # seconds before the first retry; doubles each time
    max_delay: float = 60.0   # cap on one wait
    timeout: float = 60.0     # seconds to connect, and between two received bytes


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
    text = (response.text or "").strip().splitlines()
    detail = f": {text[0][:200]}" if text else ""
    return UserError(f"{url}: HTTP {response.status_code} {response.reason}{detail}")


class Http:
    """Requests with the retry policy; counts retries and the bytes received."""

    def __init__(self, policy: RetryPolicy, note: Callable[[str], None] | None = None):
        import requests

        self.policy = policy
        self.note = note or (lambda message: None)
        self.retried = 0
        self.received = 0
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self.session = retrying_session(self)

    def wait(self, failures: int, what: str, error: object, retry_after: float | None) -> None:
        """Sleep before retry number ``failures``, or give up with the last error."""
        p = self.policy
        if failures > p.retries:
            raise UserError(f"{what}: {error} (gave up after {p.retries} retries)")
        d = min(p.max_delay, p.backoff * 2 ** (failures - 1))
        delay = d / 2 + random.uniform(0, d / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, p.max_delay))
        self.retried += 1
        self.note(f"{what}: {error}; retry {failures}/{p.retries} in {delay:.1f} s")
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
                error, retry_after = _describe(e), None
            failures = 1 if resumable and self.received > before else failures + 1
            self.wait(failures, what, error, retry_after)

    def _get(self, url: str, headers: dict | None = None):
        p = self.policy
        response = self._session.get(url, headers=headers or {}, stream=True,
                                     timeout=(p.timeout, p.timeout))
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


def _describe(error: BaseException) -> str:
    """A short name for a network failure (requests' messages run to several lines)."""
    import requests

    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timed out"
    if isinstance(error, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(error):
        return "connection dropped in the middle of the body"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"connection failed ({text[:120]})"


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
                    http.wait(failures, url, _describe(e), None)
                    continue
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
        print(f"xptools fetch: {http.retried} requests failed and were tried again "
              f"(--verbose shows each)", file=sys.stderr)
