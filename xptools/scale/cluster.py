"""Partitions handed out to Dask workers: a local cluster (``--workers N``) or an existing one
(``--scheduler ADDRESS``, e.g. ``dask scheduler`` and ``dask worker`` on a cluster, or
dask_jobqueue's). Needs the ``scale`` extra (distributed).

Each partition is one task (``client.submit``), not a step of a Dask dataframe graph: the task
reads its input partition and writes its output partition itself, so the driver holds no data,
a finished partition is on disk the moment its task ends (resumable), and the task runs the
very code a file does. A worker that dies mid-partition leaves a temporary file only; the
scheduler gives the partition to another worker (up to distributed's
``scheduler.allowed-failures``, 3 by default), and the driver fails with one line after that.
"""

from __future__ import annotations

import contextlib
import logging
import os

from xptools.errors import UserError


@contextlib.contextmanager
def client(workers: int | None, scheduler: str | None):
    """A distributed Client: a local cluster of ``workers`` one-thread worker processes on
    127.0.0.1, or the scheduler at ``scheduler``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--workers and --scheduler need Dask's distributed: pip install "
                        "'xptools[scale]'") from None
    if scheduler:
        try:
            c = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise UserError(f"--scheduler {scheduler}: cannot connect ({e})") from None
        with c:
            try:
                c.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise UserError(f"--scheduler {scheduler}: no workers joined in 60 s") \
                    from None
            yield c
        return
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         host="127.0.0.1", dashboard_address="127.0.0.1:0",
                         silence_logs=logging.CRITICAL) as cluster, Client(cluster) as c:
        yield c


def worker_environment() -> dict:
    """Dask's environment for new worker processes, less MALLOC_TRIM_THRESHOLD_: glibc takes
    any explicit threshold as a reason to stop adapting its mmap threshold, so each chunk's
    arrays (megabytes) are mapped and unmapped afresh, page fault by page fault (docs/scale.md).
    The thread variables stay: `threads.limited` sets the threads a partition uses."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def threads_per_task(workers: int | None, scheduler: str | None) -> int:
    """CPU threads each partition computes with: in one process, every core
    ($XPTOOLS_THREADS); a local cluster shares this machine's cores among its workers (at most
    $XPTOOLS_THREADS each); on a cluster, $XPTOOLS_THREADS or one (a worker runs as many
    partitions at once as it has threads)."""
    from xptools.threads import cpu_threads

    if workers:
        return max(1, min(cpu_threads(), (os.cpu_count() or 1) // workers))
    if scheduler:
        return cpu_threads() if os.environ.get("XPTOOLS_THREADS", "").strip() else 1
    return cpu_threads()


def run_tasks(c, function, items: list, args: tuple, done) -> None:
    """``function(item, *args)`` for every item on the cluster; ``done(item, result)`` as each
    finishes. The first failure cancels the rest (finished partitions stay) and is raised."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    futures = {c.submit(function, item, *args, pure=False): item for item in items}
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except FutureCancelledError:
                raise UserError(f"{futures[future]}: cancelled by the cluster (its scheduler "
                                f"restarted?); rerun to resume") from None
            except Exception as e:
                if type(e).__name__ == "KilledWorker":
                    raise UserError(f"{futures[future]}: the workers running this partition "
                                    f"died ({e}); out of memory? Rerun to resume, maybe with "
                                    f"a smaller --chunk-rows") from None
                raise
            done(futures[future], result)
    finally:
        c.cancel(list(futures), force=True)
