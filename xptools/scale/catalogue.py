"""HATS catalogues in and out of the row-wise commands (needs the ``scale`` extra: hats).

Input: a HATS catalogue folder or URL (``hats.read_hats``; a collection's main catalogue). Its
partitions, ``dataset/Norder=K/Dir=D/Npix=N.parquet``, are read by xptools' own Parquet
reader, as any Parquet table (`xptools.io.parquet`).

Output (``-o`` a folder): the same partitions, each the command's output for the input
partition, written whole or not at all (a temporary file renamed into place). The folder is a
catalogue once ``hats.properties`` is in it, and that is written last:

1. ``xptools_run.json``: what is being run (the job and its models' SHA-256, the input and its
   partitions, the xptools version, the command line and time its partitions carry, the CPU
   threads each partition computes with); a rerun of the same job resumes, skipping finished partitions,
   with the first run's threads whatever its own ``--workers``: torch's and BLAS's rounding
   depends on the thread count, and a resumed catalogue's partitions are bit for bit the
   uninterrupted run's. ``.xptools.lock``, held while a run writes the folder, keeps a
   second run out;
2. the partitions;
3. temporaries that killed workers left are removed; ``dataset/_metadata`` and
   ``_common_metadata``, ``partition_info.csv`` (hats' writers);
4. ``properties`` and ``hats.properties``: the input's, with this catalogue's name and rows,
   and the xptools provenance (``hats_builder``, ``xptools_command``, ``xptools_date``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from xptools import __version__, provenance
from xptools.errors import UserError, first_line
from xptools.io import atomic
from xptools.progress import progress

STATE = "xptools_run.json"
PROPERTIES = ("properties", "hats.properties")   # written in this order: hats.properties last
_MAX_WARNINGS = 5


def _hats():
    try:
        import hats
    except ImportError:
        raise UserError("HATS catalogues need the scale extra: pip install 'xptools[scale]'") \
            from None
    return hats


def is_url(path: str) -> bool:
    return "://" in path


def is_catalogue(path: str) -> bool:
    """Is IN to be read as a catalogue: a folder or a URL (`Catalogue` says why one is
    not a catalogue; a table is a file)?"""
    return is_url(path) or os.path.isdir(path)


@dataclass(frozen=True)
class Partition:
    order: int
    pixel: int
    source: str   # input Parquet file (path or URL)
    target: str   # output Parquet file ('' when the output is one file)

    def __str__(self) -> str:
        return f"partition Norder={self.order}/Npix={self.pixel} ({self.source})"


class Catalogue:
    """An input catalogue: name, properties (hats' TableProperties) and partitions."""

    def __init__(self, path: str):
        hats = _hats()
        self.name = path.rstrip("/") if is_url(path) else os.path.abspath(path)
        try:
            cat = hats.read_hats(self.name)
        except Exception as e:  # hats raises many kinds; all mean "not a HATS catalogue"
            what = ("cannot read it" if is_url(path) and isinstance(e, OSError)
                    else "not a HATS catalogue")
            raise UserError(f"{path}: {what} ({type(e).__name__}: {first_line(e)})") from None
        cat = getattr(cat, "main_catalog", cat)   # a collection: its main catalogue
        self.info = cat.catalog_info
        if str(self.info.catalog_type) not in ("object", "source", "CatalogType.OBJECT",
                                               "CatalogType.SOURCE"):
            raise UserError(f"{path}: a HATS {self.info.catalog_type} catalogue, not one of "
                            f"objects or sources")
        self.root = str(cat.catalog_base_dir)
        suffix = getattr(self.info, "npix_suffix", None) or ".parquet"
        if suffix != ".parquet":
            raise UserError(f"{path}: partitions stored as folders (npix_suffix {suffix!r}); "
                            f"xptools reads one Parquet file per partition")
        from hats.io import paths

        self.partitions = [(p.order, p.pixel, str(paths.pixel_catalog_file(cat.catalog_base_dir,
                                                                           p)))
                           for p in cat.get_healpix_pixels()]


def open_catalogue(path: str) -> Catalogue:
    return Catalogue(path)


def open_partition(source: str):
    """An InputTable of one partition file, downloaded first when it is a URL (http and
    https with fetch's retries and resume; other schemes through fsspec)."""
    from xptools.io import open_table

    if not is_url(source):
        if not os.path.exists(source):
            raise UserError(f"{source}: partition file missing (the catalogue's "
                            f"partition_info lists it)")
        return open_table(source, "parquet")
    tmp = atomic.temporary_file("xptools-partition-")
    try:
        if source.startswith(("http://", "https://")):
            from xptools.fetch.http import Http, RetryPolicy

            Http(RetryPolicy()).download(source, tmp)
        else:
            from upath import UPath

            with UPath(source).open("rb") as f, open(tmp, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
        src = open_table(tmp, "parquet")
    except BaseException:
        atomic.discard(tmp)
        raise
    src.name = source
    src._temps.append(tmp)   # removed when the table is closed
    return src


def run_partition(part: Partition, job, run: provenance.Run, threads: int) -> dict:
    """One partition, in whatever process runs it: the job's own pipeline, input partition to
    output partition (renamed into place when complete). Returns counts and warnings."""
    from xptools.io import TableWriter
    from xptools.threads import limited

    warnings: list[str] = []
    with limited(threads, job.torch), provenance.running(run):
        runner = job.runner()
        with TableWriter(part.target, "parquet") as out, open_partition(part.source) as src:
            counts = runner(src, out, True, warnings.append)
            rows = out.rows_written
    return {"counts": dict(counts or {}, rows=rows), "warnings": warnings}


def check_replace(path: str, overwrite: bool) -> None:
    """Refuse a catalogue output that exists without --overwrite, and an --overwrite of
    anything that is not a catalogue (so no other folder is ever removed)."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise UserError(f"-o {path}: is a file or a link; a catalogue output is a folder")
    finished = os.path.exists(os.path.join(path, "hats.properties"))
    if not (finished or os.path.exists(os.path.join(path, STATE))) and os.listdir(path):
        raise UserError(f"-o {path}: a folder that is not a catalogue; give a new or empty "
                        f"folder")
    if finished and not overwrite:
        raise UserError(f"{path} exists (a finished catalogue); use --overwrite to replace it")


class Output:
    """An output catalogue folder being written: checks, a lock, resume state, partition
    targets, and the metadata written last."""

    def __init__(self, path: str, source: Catalogue, job, models: list[str], overwrite: bool,
                 threads: int):
        if is_url(path):
            raise UserError(f"-o {path}: xptools writes catalogues to a local or shared "
                            f"disk, not to a URL")
        self.root = os.path.abspath(path)
        self.source = source
        parent = os.path.dirname(self.root)
        if not os.path.isdir(parent):
            raise UserError(f"-o {path}: folder {parent} does not exist")
        if not is_url(source.root) and os.path.exists(self.root) and \
                os.path.samefile(self.root, source.root):
            raise UserError(f"-o {path} is the input catalogue")
        check_replace(path, overwrite)
        os.makedirs(self.root, exist_ok=True)
        self._lock = _lock(self.root)
        state = os.path.join(self.root, STATE)
        if overwrite:   # check_replace let through only a catalogue (or an empty folder)
            for name in os.listdir(self.root):   # all but the lock this run holds
                if name != LOCK:
                    atomic.discard(os.path.join(self.root, name))
        self.partitions = []
        from hats.io import paths
        from hats.pixel_math import HealpixPixel

        for order, pixel, source_file in source.partitions:
            target = str(paths.pixel_catalog_file(self.root, HealpixPixel(order, pixel)))
            self.partitions.append(Partition(order, pixel, source_file, target))
        # what makes partitions alike: a rerun resumes only the same job on the same input
        self.job_key = {"job": json.loads(job.key), "models": models, "input": source.name,
                        "partitions": [[p.order, p.pixel] for p in self.partitions],
                        "xptools": __version__}
        if os.path.exists(state):
            with open(state) as f:
                saved = json.load(f)
            if {k: saved.get(k) for k in self.job_key} != self.job_key:
                raise UserError(f"{path}: holds part of another run ({saved.get('command')}, "
                                f"xptools {saved.get('xptools')}); use --overwrite to start "
                                f"again, or another -o")
            self.run = provenance.Run(saved["command"], saved["time"])
            self.threads = int(saved.get("threads", threads))
        else:
            self.run, self.threads = provenance.Run.now(), threads
            atomic.write_file(state, json.dumps({**self.job_key, "command": self.run.command,
                                                 "time": self.run.time, "threads": threads},
                                                indent=1) + "\n", overwrite=False)
        self.resumed = 0

    def todo(self) -> list[Partition]:
        left = [p for p in self.partitions if not os.path.exists(p.target)]
        self.resumed = len(self.partitions) - len(left)
        for p in left:
            os.makedirs(os.path.dirname(p.target), exist_ok=True)
        return left

    def finish(self) -> int:
        """The metadata, hats.properties last; returns the rows."""
        missing = [p for p in self.partitions if not os.path.exists(p.target)]
        if missing:
            raise UserError(f"{self.root}: {len(missing)} partitions were not written (first "
                            f"{missing[0]}); rerun to finish")
        # every partition is complete, and this run holds the lock: any temporary file left
        # in the dataset is a killed worker's (of any host: `atomic.remove_stale` knows only
        # this host's processes)
        dataset = os.path.join(self.root, "dataset")
        for tmp in glob.glob(os.path.join(dataset, "**", ".*.part"), recursive=True):
            atomic.discard(tmp)
        fields = self.source.info.model_dump(by_alias=False, exclude_none=True)
        for stale in ("default_columns", "skymap_order", "skymap_alt_orders", "hats_max_bytes",
                      "hats_estsize", "moc_sky_fraction"):
            fields.pop(stale, None)   # the input's columns and files, not this catalogue's
        fields["catalog_name"] = os.path.basename(self.root)
        rows = write_metadata(self.root, [(p.order, p.pixel) for p in self.partitions],
                              fields, self.run)
        self.release()
        return rows

    def release(self) -> None:
        _unlock(self._lock)


def write_metadata(root: str, partitions: list[tuple[int, int]], fields: dict,
                   run: provenance.Run) -> int:
    """A catalogue's metadata once its partitions are written (hats' writers):
    ``dataset/_metadata`` and ``_common_metadata``, ``partition_info.csv``, then ``properties``
    and, last, ``hats.properties`` (each renamed into place): ``fields`` (its name included)
    with the rows and the xptools provenance. Returns the rows."""
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io import parquet_metadata
    from hats.pixel_math import HealpixPixel

    try:
        rows = int(parquet_metadata.write_parquet_metadata(root))
    except Exception as e:
        raise UserError(f"{root}: cannot write the catalogue's _metadata "
                        f"({type(e).__name__}: {first_line(e)}); do the partitions' "
                        f"columns differ?") from None
    PartitionInfo.from_healpix([HealpixPixel(o, p) for o, p in partitions]) \
        .write_to_file(catalog_path=root)
    properties = TableProperties(**{
        **fields, "total_rows": rows,
        **TableProperties.new_provenance_dict(root, builder=f"xptools {__version__}"),
        "xptools_command": run.command, "xptools_date": run.time})
    for name in PROPERTIES:
        target = os.path.join(root, name)
        tmp = atomic.temporary_beside(target)
        properties.to_properties_file_path(Path(tmp), initial_comments="HATS catalog")
        os.replace(tmp, target)
        atomic.done_with(tmp)
    return rows


LOCK = ".xptools.lock"


def _lock(root: str):
    """Hold the folder's lock for this run: two runs writing one catalogue would remove each
    other's temporary files."""
    import fcntl

    f = open(os.path.join(root, LOCK), "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"{root}: another xptools run is writing this catalogue") from None
    return f


def _unlock(f) -> None:
    try:
        os.remove(f.name)
    except OSError:
        pass
    f.close()


def run(job, source: Catalogue, output: str, *, format: str | None, overwrite: bool,
        quiet: bool, workers: int | None, scheduler: str | None, warn) -> dict:
    """``job`` over every partition of ``source``: into a catalogue folder, or one file.
    The counts are those of the partitions this run computed (``resumed``: how many were
    done before)."""
    import sys

    from xptools.scale import add_counts, cluster, is_folder_output

    if not is_folder_output(output, format):
        if workers or scheduler:
            raise UserError(f"-o {output}: with --workers or --scheduler the output is a "
                            f"catalogue: give -o a folder")
        return _into_file(job, source, output, format, overwrite, quiet, warn)
    runner = job.runner()   # the options and model are checked before anything is written
    out = Output(output, source, job, getattr(runner, "models", []), overwrite,
                 cluster.threads_per_task(workers, scheduler))
    try:
        todo = out.todo()
        if out.resumed and not quiet:
            print(f"xptools {job.command}: resuming {output}: {out.resumed} of "
                  f"{len(out.partitions)} partitions already done", file=sys.stderr,
                  flush=True)
        total: dict = {"rows": 0}
        warnings: list[str] = []
        finished = out.resumed

        with progress(len(out.partitions), job.command, quiet, unit="partitions") as bar:
            bar.update(out.resumed)

            def done(part, result):
                nonlocal finished
                add_counts(total, result["counts"])
                warnings.extend(m.replace(part.source, source.name)
                                for m in result["warnings"])
                finished += 1
                bar.update(1)

            try:
                if workers or scheduler:
                    with cluster.client(workers, scheduler) as c:
                        cluster.run_tasks(c, run_partition, todo,
                                          (job, out.run, out.threads), done)
                else:
                    for part in todo:
                        done(part, run_partition(part, job, out.run, out.threads))
            except KeyboardInterrupt as e:   # what is done stays done: say how to go on
                e.left = (f"{finished} of {len(out.partitions)} partitions are in "
                          f"{output}; the same command resumes")
                raise
        out.finish()
    finally:
        out.release()
    total["resumed"] = out.resumed
    _report(warnings, warn)
    return total


def _into_file(job, source: Catalogue, output: str, format, overwrite, quiet, warn) -> dict:
    """Every partition in turn, through the job, into one table."""
    from xptools.io import TableWriter
    from xptools.scale import add_counts

    total: dict = {}
    warnings: list[str] = []
    with TableWriter(output, format, overwrite, write_behind=True) as out:
        runner = job.runner()
        with progress(len(source.partitions), job.command, quiet, unit="partitions") as bar:
            for order, pixel, path in source.partitions:
                with open_partition(path) as src:
                    add_counts(total, runner(src, out, True, lambda m: warnings.append(
                        m.replace(path, source.name))))
                bar.update(1)
        total["rows"] = out.rows_written
    _report(warnings, warn)
    return total


def _report(warnings: list[str], warn) -> None:
    """The partitions' warnings, each text once (with the number of partitions giving it)."""
    from collections import Counter

    counted = Counter(warnings)
    for message, n in list(counted.items())[:_MAX_WARNINGS]:
        warn(message + (f" ({n} partitions)" if n > 1 else ""))
    if len(counted) > _MAX_WARNINGS:
        warn(f"... and {len(counted) - _MAX_WARNINGS} more warnings from other partitions")
