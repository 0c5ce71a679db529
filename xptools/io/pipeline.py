"""Overlap reading, computing and writing: one chunk is read ahead and one written behind in
threads while the caller works on the current chunk. File reads, numpy copies and BLAS release
the GIL, so on a multi-core machine the three really run at once."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

_DONE = object()


def prefetch(items: Iterator, depth: int = 1) -> Iterator:
    """Yield the items of ``items``, producing the next ones in a thread meanwhile."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_DONE, None))
        except BaseException as e:  # handed to the consumer
            slots.put((_DONE, e))

    worker = threading.Thread(target=produce, daemon=True, name="xptools-prefetch")
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


class BehindWriter:
    """Calls ``write(item)`` in a thread; errors surface on the next call or on ``close``."""

    def __init__(self, write):
        self._write = write
        self._slots: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, daemon=True, name="xptools-writer")
        self._worker.start()

    def _run(self):
        while True:
            item = self._slots.get()
            if item is _DONE:
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as e:
                    self._error = e

    def write(self, item) -> None:
        self._raise()
        self._slots.put(item)

    def close(self) -> None:
        """Wait for the writes in flight; raise the first error, if any."""
        if self._worker.is_alive():
            self._slots.put(_DONE)
            self._worker.join()
        self._raise()

    def _raise(self):
        if self._error is not None:
            error, self._error = self._error, None
            raise error
