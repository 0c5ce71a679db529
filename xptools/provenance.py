"""Provenance keywords every output carries: who wrote it, how, and when.

XPTVERS (xptools version), XPTCMD (the command line), XPTDATE (UTC, ISO 8601) describe the
latest step; one HISTORY line per xptools step keeps the chain of a pipeline.
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone

from xptools import __version__
from xptools.io import Table


def command_line() -> str:
    args = sys.argv[1:]
    return " ".join(["xptools", *map(shlex.quote, args)])


def stamp(table: Table, extra: dict[str, object] | None = None) -> Table:
    """Set the provenance keywords (and ``extra`` keywords) on a table's metadata."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cmd = command_line()
    table.meta.update(extra or {})
    table.meta.update({"XPTVERS": __version__, "XPTCMD": cmd, "XPTDATE": now})
    table.history.append(f"{now} xptools {__version__}: {cmd}")
    return table
