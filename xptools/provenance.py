"""Provenance keywords every output carries: who wrote it, how, and when.

XPTVERS (xptools version), XPTCMD (the command line), XPTDATE (UTC, ISO 8601) describe the
latest step; one HISTORY line per xptools step keeps the chain of a pipeline.

The partitions of a catalogue run (`xptools.scale`) are written by other processes, on other
machines, maybe by a second run resuming the first: they all carry the command line and time
of the run that started the catalogue (`Run`, set with `running`), so that a resumed catalogue
equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

from xptools import __version__
from xptools.io import Table


@dataclass(frozen=True)
class Run:
    command: str   # the command line
    time: str      # UTC, ISO 8601

    @classmethod
    def now(cls) -> "Run":
        return cls(command_line(), datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


_current: Run | None = None  # set by `running`; else each stamp is the command and time now


def command_line() -> str:
    args = sys.argv[1:]
    return " ".join(["xptools", *map(shlex.quote, args)])


@contextlib.contextmanager
def running(run: Run):
    """Stamp tables with ``run``'s command line and time until the block ends."""
    global _current
    before, _current = _current, run
    try:
        yield
    finally:
        _current = before


def stamp(table: Table, extra: dict[str, object] | None = None) -> Table:
    """Set the provenance keywords (and ``extra`` keywords) on a table's metadata."""
    run = _current or Run.now()
    table.meta.update(extra or {})
    table.meta.update({"XPTVERS": __version__, "XPTCMD": run.command, "XPTDATE": run.time})
    table.history.append(f"{run.time} xptools {__version__}: {run.command}")
    return table
