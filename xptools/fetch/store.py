"""The fetch cache: finished requests kept on disk, so that a rerun (after an interrupt, or the
next day from cron) asks the archive only for what it has not answered yet.

    DIR/datalink/<endpoint key>/   one folder per (endpoint, product, parameters)
        source.txt                 what the folder holds, for people
        <batch>.zip                the archive's answer to one request, as received
        <batch>.npz                the ids asked and the ids answered; written last, so a
                                   batch without it is unfinished and asked again
    DIR/tap/<endpoint key>/        the same for TAP column joins; query-<key>.vot for --query
    DIR/bulk/<source key>/         bulk files, each with <name>.md5 once its MD5 matched
    DIR/work/                      per-run scratch space, removed at the end

Every file is written under a temporary name and renamed into place, so a killed run leaves
either a finished file or none.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np

from xptools.basis import cache_dir
from xptools.io import atomic


def default_cache() -> str:
    """``$XPTOOLS_CACHE/fetch`` (default ``~/.cache/xptools/fetch``)."""
    return os.path.join(cache_dir(), "fetch")


def key(*parts: object) -> str:
    """A short stable name for a combination of settings."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode())
    return h.hexdigest()[:16]


def folder(root: str, kind: str, name: str, description: str) -> str:
    """A cache folder, created with a ``source.txt`` saying what it holds."""
    path = os.path.join(root, kind, name)
    os.makedirs(path, exist_ok=True)
    note = os.path.join(path, "source.txt")
    if not os.path.exists(note):
        replace_with(note, description.encode() + b"\n")
    return path


def replace_with(path: str, data: bytes) -> None:
    """Write a file atomically."""
    tmp = atomic.temporary_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        atomic.done_with(tmp)
    finally:
        atomic.discard(tmp)


class BatchStore:
    """Answers to batched requests (a list of ids in, a table out) in one cache folder."""

    def __init__(self, path: str, suffix: str):
        self.path = path
        self.suffix = suffix
        self._index = None

    def answer(self, batch: str) -> str:
        return os.path.join(self.path, batch + self.suffix)

    def _load_index(self):
        """(ids asked so far, sorted unique; ids answered, sorted; the batch number of each
        answered id; batch names)."""
        if self._index is None:
            names = sorted(f[:-4] for f in os.listdir(self.path) if f.endswith(".npz"))
            asked, answered, owner = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], \
                [np.zeros(0, np.int64)]
            for i, name in enumerate(names):
                with np.load(os.path.join(self.path, name + ".npz")) as f:
                    asked.append(f["asked"])
                    answered.append(f["answered"])
                    owner.append(np.full(len(f["answered"]), i, dtype=np.int64))
            answered_ids, owners = np.concatenate(answered), np.concatenate(owner)
            order = np.argsort(answered_ids, kind="stable")
            self._index = (np.unique(np.concatenate(asked)), answered_ids[order], owners[order],
                           names)
        return self._index

    def pending(self, ids: np.ndarray, again_unanswered: bool = False) -> np.ndarray:
        """The ids (in the given order) not asked yet; with ``again_unanswered`` also those
        asked before without an answer."""
        asked, answered, _, _ = self._load_index()
        return ids[~np.isin(ids, answered if again_unanswered else asked)]

    def holding(self, ids: np.ndarray) -> list[str]:
        """The batches that hold an answer for any of ``ids``, in name order."""
        _, answered, owners, names = self._load_index()
        return [names[i] for i in np.unique(owners[np.isin(answered, ids)])]

    def new_batch(self, asked: np.ndarray) -> tuple[str, str]:
        """A name for the batch of ``asked`` ids and a temporary path for its answer."""
        name = hashlib.sha256(np.asarray(asked, np.int64).tobytes()).hexdigest()[:20]
        return name, os.path.join(self.path, f".{name}{self.suffix}.part")

    def finish(self, name: str, answer_tmp: str, asked: np.ndarray, answered: np.ndarray) -> None:
        """Move the answer into place, then record the batch as done."""
        os.replace(answer_tmp, self.answer(name))
        record = io.BytesIO()
        np.savez(record, asked=np.asarray(asked, np.int64), answered=np.asarray(answered, np.int64))
        replace_with(os.path.join(self.path, name + ".npz"), record.getvalue())
        self._index = None


class WorkFolder:
    """Scratch space for one run in ``DIR/work``, removed when the run ends; folders left by
    runs that were killed are removed by the next run (`xptools.io.atomic`)."""

    def __init__(self, root: str):
        base = os.path.join(root, "work")
        os.makedirs(base, exist_ok=True)
        self.path = atomic.temporary_beside(os.path.join(base, "run"), suffix=".work",
                                            folder=True)

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        atomic.discard(self.path)
