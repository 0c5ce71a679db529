"""How many CPU threads a command computes with, and torch set up to use them.

A command in one process uses every core ($XPTOOLS_THREADS overrides); a partition of a
catalogue uses the threads the runner gives it (`limited`, `xptools.scale`), so that workers
sharing a machine do not oversubscribe its cores: numpy's BLAS, torch and the sampler's own
pool all keep to it.
"""

from __future__ import annotations

import contextlib
import os

from xptools.errors import UserError

_limit: int | None = None   # set by `limited` while a partition is computed


def cpu_threads() -> int:
    """CPU threads for model commands: $XPTOOLS_THREADS, else every core."""
    value = os.environ.get("XPTOOLS_THREADS", "")
    if value.strip():
        try:
            return max(1, int(value))
        except ValueError:
            raise UserError(f"XPTOOLS_THREADS={value!r} is not a number of threads") from None
    return os.cpu_count() or 1


def available() -> int:
    """The threads the work in hand may use: a partition's share (`limited`), else
    `cpu_threads`."""
    return _limit or cpu_threads()


@contextlib.contextmanager
def limited(threads: int, torch: bool = False):
    """Compute with ``threads`` threads until the block ends: BLAS, the sampler's pool and,
    with ``torch``, torch's intra-op threads."""
    global _limit
    from threadpoolctl import threadpool_limits

    before, _limit = _limit, threads
    try:
        with threadpool_limits(threads):
            if torch:
                torch_with(threads)
            yield
    finally:
        _limit = before


def torch_with(threads: int):
    """torch, imported for a model command, with ``threads`` CPU threads and Intel MKL in its
    reproducible mode (fixed reductions and static scheduling, unless $MKL_CBWR says
    otherwise): without it MKL does not promise equal results from run to run, which
    `--seed` needs. MKL's reproducibility conditions also ask for a fixed thread count, so
    neither MKL nor OpenMP may change it at run time (MKL_DYNAMIC, OMP_DYNAMIC)."""
    os.environ.setdefault("MKL_CBWR", "AUTO")    # read when MKL starts, i.e. at import
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")
    os.environ.setdefault("OMP_DYNAMIC", "FALSE")
    import torch

    torch.set_num_threads(threads)
    return torch
