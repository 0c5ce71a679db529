"""Row-wise commands over a file or a HATS catalogue: the one place that decides which.

`sample`, `infer`, `embed`, `generate --reconstruct`, `flag` and `photometry` each describe
their work as a `Job`: the name of a function that, given the command's options, loads what it
needs (a model) and returns ``run(src, out, quiet, warn) -> counts``, the command's own
pipeline over one input table into one writer. `run` hands it

- a file (or stdin) and one output file: the command as it always ran, in this process;
- a HATS catalogue (a folder with ``hats.properties``, or a URL) and an output folder: every
  partition is an input table and its output partition a writer (`xptools.scale.catalogue`),
  run one after another here, or on Dask workers (``--workers N`` starts a local cluster,
  ``--scheduler ADDRESS`` joins one; `xptools.scale.cluster`). Finished partitions are
  skipped on a rerun; the catalogue's metadata is written last;
- a catalogue and one output file: the partitions in turn into that file, in this process.

So a partition runs exactly the code a file does. A job is prepared once per process: a
model is loaded once per worker, not per partition.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field

from xptools.errors import UserError
from xptools.progress import print_warning


@dataclass(frozen=True)
class Job:
    """One row-wise command, picklable: ``prepare`` ('module:function') is called with
    ``options`` to make ``run(src, out, quiet, warn) -> dict`` of counts. ``torch``: the job
    computes with torch, whose threads a worker sets."""

    command: str
    prepare: str
    options: dict = field(default_factory=dict)
    torch: bool = False

    @property
    def key(self) -> str:
        return json.dumps([self.command, self.prepare, self.options], sort_keys=True,
                          default=str)

    def runner(self):
        """The prepared ``run`` function, made once per process."""
        if self.key not in _prepared:
            module, name = self.prepare.split(":")
            _prepared[self.key] = getattr(importlib.import_module(module), name)(**self.options)
        return _prepared[self.key]


_prepared: dict[str, object] = {}


def add_counts(total: dict, counts: dict) -> dict:
    """Sum the counts of two runs (partitions): numbers add, objects with ``merge`` (flag's
    plot accumulator) merge, anything else is the first run's."""
    for name, value in counts.items():
        if name not in total:
            total[name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[name] += value
        elif hasattr(total[name], "merge"):
            total[name].merge(value)
    return total


def is_folder_output(path: str | None, format: str | None) -> bool:
    """Does ``-o`` name a catalogue folder: an existing folder, a name ending in '/', or a
    name without an extension (and no --format)?"""
    from xptools.io import STDIO

    if path in (None, STDIO):
        return False
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        return True
    return format is None and "." not in os.path.basename(path)


def run(job: Job, input: str, output: str, *, format: str | None = None,
        input_format: str | None = None, overwrite: bool = False, quiet: bool = False,
        workers: int | None = None, scheduler: str | None = None, warn=None) -> dict:
    """Run ``job`` over ``input`` (a table or a HATS catalogue) into ``output``; returns the
    counts (summed over partitions)."""
    from xptools.scale import catalogue

    warn = warn or ((lambda m: None) if quiet else print_warning)
    if catalogue.is_catalogue(input):
        return catalogue.run(job, catalogue.open_catalogue(input), output, format=format,
                             overwrite=overwrite, quiet=quiet, workers=workers,
                             scheduler=scheduler, warn=warn)
    if workers or scheduler:
        raise UserError(f"{input}: --workers and --scheduler run over a HATS catalogue, and "
                        f"this is a table (make a catalogue of it with xptools hats-import)")
    if is_folder_output(output, format):
        raise UserError(f"-o {output}: a folder is written as a HATS catalogue, from a "
                        f"catalogue input; {input} is a table (make a catalogue of it with "
                        f"xptools hats-import, or give -o a file name with an extension)")
    from xptools.io import TableWriter, open_table

    with TableWriter(output, format, overwrite, write_behind=True) as out, \
            open_table(input, input_format) as src:
        return job.runner()(src, out, quiet, warn)
