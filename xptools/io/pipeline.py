"""Overlap reading, computing and writing: one chunk is read ahead and one written behind in
threads while the caller works on the current chunk. File reads, numpy copies and BLAS release
the GIL, so on a multi-core machine the three really run at once.

Both threads can be stopped at any moment (an interrupt, an error in the caller): no queue
operation blocks without looking at the stop signal, so stopping takes at most the chunk read
or write in flight."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

_DONE = object()
_POLL = 0.05  # seconds between looks at the stop signal while a queue is full or empty


class ReadAhead:
    """Iterate over ``items``, producing the next ones in a thread meanwhile. `stop` (also
    called when the iteration ends early) waits for the thread to finish the item in hand,
    so the caller may close what the thread reads from."""

    def __init__(self, items: Iterator, depth: int = 1):
        self._items = items
        self._slots: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._produce, daemon=True,
                                        name="xptools-read-ahead")
        self._worker.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._slots.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, None)):
                    return
            self._put((_DONE, None))
        except BaseException as e:  # handed to the consumer
            self._put((_DONE, e))

    def __iter__(self) -> Iterator:
        try:
            while True:
                item, error = self._slots.get()
                if error is not None:
                    raise error
                if item is _DONE:
                    return
                yield item
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not threading.current_thread():
            self._worker.join()


class BehindWriter:
    """Calls ``write(item)`` in a thread; errors surface on the next call or on ``close``;
    `cancel` drops what is queued and waits only for the write in flight."""

    def __init__(self, write):
        self._write = write
        self._slots: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._worker = threading.Thread(target=self._run, daemon=True, name="xptools-writer")
        self._worker.start()

    def _run(self):
        while True:
            try:
                item = self._slots.get(timeout=_POLL)
            except queue.Empty:
                if self._cancelled.is_set():
                    return
                continue
            if item is _DONE or self._cancelled.is_set():
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as e:
                    self._error = e

    def write(self, item) -> None:
        self._raise()
        while True:  # a put that a dead writer thread can never take would block forever
            try:
                self._slots.put(item, timeout=_POLL)
                return
            except queue.Full:
                self._raise()
                if not self._worker.is_alive():
                    raise RuntimeError("the writer thread has stopped")

    def close(self) -> None:
        """Wait for the writes in flight; raise the first error, if any."""
        if self._worker.is_alive():
            self.write(_DONE)
            self._worker.join()
        self._raise()

    def cancel(self) -> None:
        """Give up: drop the queued writes and wait for the one in flight."""
        self._cancelled.set()
        self._worker.join()

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error
