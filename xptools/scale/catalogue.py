"""HATS catalogues in and out of the row-wise commands (needs the ``scale`` extra: hats).

Input: a HATS catalogue folder or URL (``hats.read_hats``; a collection's main catalogue). Its
partitions, ``dataset/Norder=K/Dir=D/Npix=N.parquet``, are read by xptools' own Parquet
reader, as any Parquet table (`xptools.io.parquet`).

Output (``-o`` a folder): the same partitions, each the command's output for the input
partition, written whole or not at all (a temporary file renamed into place). The folder is a
catalogue once ``hats.properties`` is in it, and that is written last:

1. ``xptools_run.json``: what is being run (the job, the input, the command line and time its
   partitions carry, the CPU threads each partition computes with); a rerun with the same job
   resumes, skipping finished partitions, with the first run's threads whatever its own
   ``--workers``: torch's and BLAS's rounding depends on the thread count, and a resumed
   catalogue is bit for bit the uninterrupted one;
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
import tempfile
from dataclasses import dataclass

from xptools import __version__, provenance
from xptools.errors import UserError
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
    """A folder or a URL: a catalogue, or an error saying why it is not one (a table is a
    file)."""
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
        self.name = path
        try:
            cat = hats.read_hats(path)
        except Exception as e:  # hats raises many kinds; all mean "not a HATS catalogue"
            text = str(e).strip().splitlines()
            raise UserError(f"{path}: not a HATS catalogue ({type(e).__name__}: "
                            f"{text[0] if text else ''})") from None
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
        self.total_rows = self.info.total_rows


def open_catalogue(path: str) -> Catalogue:
    return Catalogue(path)


def open_partition(source: str):
    """An InputTable of one partition file, downloaded first when it is a URL."""
    from xptools.io import open_table

    if not is_url(source):
        if not os.path.exists(source):
            raise UserError(f"{source}: partition file missing (the catalogue's "
                            f"partition_info lists it)")
        return open_table(source, "parquet")
    from upath import UPath

    tmp = atomic.temporary_file("xptools-partition-")
    try:
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
    from threadpoolctl import threadpool_limits

    from xptools.io import TableWriter

    warnings: list[str] = []
    with threadpool_limits(threads), provenance.running(run):
        if job.torch:
            from xptools.threads import torch_with
            torch_with(threads)
        runner = job.runner()
        with TableWriter(part.target, "parquet") as out, open_partition(part.source) as src:
            counts = runner(src, out, True, warnings.append)
            rows = out.rows_written
    return {"counts": dict(counts or {}, rows=rows), "warnings": warnings}


class Output:
    """An output catalogue folder being written: checks, resume state, partition targets,
    and the metadata written last."""

    def __init__(self, path: str, source: Catalogue, job, overwrite: bool, threads: int):
        self.root = path.rstrip("/" + os.sep) or path
        self.source = source
        if is_url(path):
            raise UserError(f"-o {path}: xptools writes catalogues to a local or shared "
                            f"disk, not to a URL")
        parent = os.path.dirname(os.path.abspath(self.root))
        if not os.path.isdir(parent):
            raise UserError(f"-o {path}: folder {parent} does not exist")
        if os.path.abspath(self.root) == os.path.abspath(source.root):
            raise UserError(f"-o {path} is the input catalogue")
        state = os.path.join(self.root, STATE)
        self.job_key = {"job": json.loads(job.key), "input": source.name}
        if os.path.isdir(self.root) and os.listdir(self.root):
            ours = os.path.exists(state) or os.path.exists(os.path.join(self.root,
                                                                        "hats.properties"))
            if not ours:
                raise UserError(f"-o {path}: a folder that is not an xptools catalogue; "
                                f"give a new or empty folder")
            if overwrite:
                shutil.rmtree(self.root)
            elif os.path.exists(os.path.join(self.root, "hats.properties")):
                raise UserError(f"{path} exists (a finished catalogue); use --overwrite to "
                                f"replace it")
        elif os.path.exists(self.root) and not os.path.isdir(self.root):
            raise UserError(f"-o {path}: is a file; a catalogue output is a folder")
        self.resumed = 0
        if os.path.exists(state):
            with open(state) as f:
                saved = json.load(f)
            if {k: saved.get(k) for k in self.job_key} != self.job_key:
                raise UserError(f"{path}: holds part of another run ({saved.get('command')}); "
                                f"use --overwrite to start again, or another -o")
            self.run = provenance.Run(saved["command"], saved["time"])
            self.threads = int(saved.get("threads", threads))
        else:
            self.run, self.threads = provenance.Run.now(), threads
            os.makedirs(self.root, exist_ok=True)
            atomic.write_file(state, json.dumps({**self.job_key, "command": self.run.command,
                                                 "time": self.run.time, "threads": threads},
                                                indent=1) + "\n", overwrite=False)
        from hats.io import paths
        from hats.pixel_math import HealpixPixel

        self.partitions = []
        for order, pixel, source_file in source.partitions:
            target = str(paths.pixel_catalog_file(self.root, HealpixPixel(order, pixel)))
            self.partitions.append(Partition(order, pixel, source_file, target))

    def todo(self) -> list[Partition]:
        left = [p for p in self.partitions if not os.path.exists(p.target)]
        self.resumed = len(self.partitions) - len(left)
        for p in left:
            os.makedirs(os.path.dirname(p.target), exist_ok=True)
        return left

    def finish(self) -> int:
        """The metadata, hats.properties last; returns the rows."""
        from hats.catalog import PartitionInfo, TableProperties
        from hats.io import parquet_metadata
        from hats.pixel_math import HealpixPixel

        dataset = os.path.join(self.root, "dataset")
        for tmp in glob.glob(os.path.join(dataset, "**", ".*.part"), recursive=True):
            atomic.discard(tmp)  # left by killed workers: every partition is done
        try:
            rows = parquet_metadata.write_parquet_metadata(self.root)
        except Exception as e:
            raise UserError(f"{self.root}: cannot write the catalogue's _metadata "
                            f"({type(e).__name__}: {e}); do the partitions' columns differ?") \
                from None
        PartitionInfo.from_healpix([HealpixPixel(p.order, p.pixel) for p in self.partitions]) \
            .write_to_file(catalog_path=self.root)
        fields = self.source.info.model_dump(by_alias=False, exclude_none=True)
        fields.update(catalog_name=os.path.basename(os.path.abspath(self.root)),
                      total_rows=int(rows),
                      **TableProperties.new_provenance_dict(self.root,
                                                            builder=f"xptools {__version__}"),
                      xptools_command=self.run.command, xptools_date=self.run.time)
        for stale in ("hats_max_bytes", "hats_estsize", "moc_sky_fraction"):
            fields.pop(stale, None)   # the input's sizes; not this catalogue's
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".xptools-properties-") as tmp:
            TableProperties(**fields).to_properties_file(tmp)
            for name in PROPERTIES:
                os.replace(os.path.join(tmp, name), os.path.join(self.root, name))
        return int(rows)


def run(job, source: Catalogue, output: str, *, format: str | None, overwrite: bool,
        quiet: bool, workers: int | None, scheduler: str | None, warn) -> dict:
    """``job`` over every partition of ``source``: into a catalogue folder, or one file."""
    from xptools.scale import add_counts, is_folder_output

    if not is_folder_output(output, format):
        if workers or scheduler:
            raise UserError(f"-o {output}: with --workers or --scheduler the output is a "
                            f"catalogue: give -o a folder")
        return _into_file(job, source, output, format, overwrite, quiet, warn)
    from xptools.scale import cluster

    out = Output(output, source, job, overwrite, cluster.threads_per_task(workers, scheduler))
    job.runner()   # the options and the model are checked here, before any partition
    todo = out.todo()
    if out.resumed and not quiet:
        print(f"xptools {job.command}: resuming {out.root}: {out.resumed} of "
              f"{len(out.partitions)} partitions already done", flush=True,
              file=__import__("sys").stderr)
    total: dict = {"rows": 0}
    warnings: list[str] = []

    with progress(len(out.partitions), job.command, quiet, unit="partitions") as bar:
        bar.update(out.resumed)

        def done(part, result):
            add_counts(total, result["counts"])
            warnings.extend(m.replace(part.source, source.name) for m in result["warnings"])
            bar.update(1)

        if workers or scheduler:
            with cluster.client(workers, scheduler) as c:
                cluster.run_tasks(c, run_partition, todo, (job, out.run, out.threads), done)
        else:
            for part in todo:
                done(part, run_partition(part, job, out.run, out.threads))
    total["rows"] = out.finish()
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
