"""`xptools embed`: latent coordinates of XP spectra with the scatter VAE.

Each row gains ``z`` (one value per latent dimension: the encoder's mean mu), ``z_error`` (the
encoder's sigma' for each dimension) and ``embed_flag`` (its bits: `xptools.flags`, listed by
``xptools embed --help``).

All input columns pass through; rows are never dropped.
"""

from __future__ import annotations

import numpy as np

from xptools import models
from xptools.io import InputTable, TableWriter
from xptools.flags import FLAG_UNUSABLE, description
from xptools.models.features import XPSource
from xptools.progress import progress
from xptools.provenance import stamp


def prepare(model: str | None = None, prefix: str | None = None, chunk_rows: int = 20_000):
    """`xptools embed` as a job (`xptools.scale`): the model loaded once, then
    ``run(src, out, quiet, warn)`` per table."""
    loaded = models.load_latent(model, "embed")
    def run(src, out, quiet, warn) -> dict:
        return run_embed(src, out, loaded, prefix=prefix, chunk_rows=chunk_rows, quiet=quiet)
    run.models = [models.identity(loaded)]   # a resumed catalogue needs the same model
    return run


def run_embed(src: InputTable, out: TableWriter, model, *, prefix: str | None = None,
              chunk_rows: int = 20_000, quiet: bool = False) -> dict:
    names = models.column_names(prefix, ["z", "z_error", "embed_flag"])
    models.check_clash(src.schema, names.values(), src.name)
    source = XPSource(src.schema, src.name, model.features)
    keywords = models.keywords(model)
    counts = {"rows": 0, "unusable": 0}
    with progress(src.nrows, "embed", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            xp, _ = source(chunk)
            x, _, usable, flags = model.prepare(chunk, xp, None)
            z = np.full((len(chunk), model.latent), np.nan, np.float32)
            z_error = np.full_like(z, np.nan)
            if usable.any():
                z[usable], z_error[usable] = model.embed(x[usable])
            table = stamp(chunk.select(chunk.colnames), keywords)
            table.add_column(names["z"], z, description=f"latent coordinates ({model.kind} "
                             f"encoder mean)")
            table.add_column(names["z_error"], z_error, description="latent standard "
                             "deviations (encoder sigma)")
            table.add_column(names["embed_flag"], flags.astype(np.int16),
                             description=description("embed"))
            out.write(table)
            counts["rows"] += len(chunk)
            counts["unusable"] += int(np.count_nonzero(flags & FLAG_UNUSABLE))
            bar.update(len(chunk))
    return counts
