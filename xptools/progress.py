"""Progress bars on stderr: rows, rate and ETA; silent when stderr is not a terminal or with
--quiet, so logs and cron mails stay clean."""

from __future__ import annotations

import sys


def progress(total: int | None, desc: str, quiet: bool = False, unit: str = "rows"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=f" {unit}", unit_scale=True, file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, leave=False)


def print_warning(message: str) -> None:
    print(f"xptools: warning: {message}", file=sys.stderr)
