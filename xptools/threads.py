"""How many CPU threads a command computes with, and torch set up to use them.

A command in one process uses every core ($XPTOOLS_THREADS overrides); a partition of a
catalogue run on Dask uses the threads the runner gives it (`xptools.scale`), so that workers
sharing a machine do not oversubscribe its cores.
"""

from __future__ import annotations

import os

from xptools.errors import UserError


def cpu_threads() -> int:
    """CPU threads for model commands: $XPTOOLS_THREADS, else every core."""
    value = os.environ.get("XPTOOLS_THREADS", "")
    if value.strip():
        try:
            return max(1, int(value))
        except ValueError:
            raise UserError(f"XPTOOLS_THREADS={value!r} is not a number of threads") from None
    return os.cpu_count() or 1


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
