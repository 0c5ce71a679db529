"""`xptools hats-import`: tables (FITS, HDF5, Parquet, CSV, ECSV, VOTable; bulk files or
`fetch` outputs) -> a HATS catalogue the row-wise commands, LSDB and hats read.

1. One pass over the inputs reads the positions only: each row's ``_healpix_29`` (hats'
   spatial index) and a histogram of rows per HEALPix pixel at ``--highest-order``.
2. hats' `generate_alignment` merges pixels into partitions of at most ``--max-rows`` rows
   (or ``--order K`` puts every partition at order K).
3. Further passes stream the rows into one temporary Parquet file per partition (a group of
   at most `OPEN_FILES` partitions per pass, so the open files stay bounded), then each
   partition is sorted by ``_healpix_29`` and written as ``Norder=K/Dir=D/Npix=N.parquet``
   by xptools' Parquet writer (array columns as list columns, units and descriptions kept).
4. The metadata (hats' writers): ``_metadata``, ``_common_metadata``, ``partition_info.csv``,
   ``skymap.fits``, ``hats.properties`` with the xptools provenance.

Tables without positions (the Gaia bulk XP files have none) can be placed by their Gaia
``source_id`` (``--positions-from-source-id``): its top bits are the source's HEALPix level-12
pixel (Gaia DR3 documentation, source_id), so the partitions are right; the ``ra`` and ``dec``
columns this adds are the centre of that pixel, within 0.9 arcmin of the source, and say so
in their descriptions. Cross-match such a catalogue by id, not by position.

The catalogue is built in a temporary folder beside ``-o`` and renamed into place when
complete: an interrupted import leaves nothing behind. Memory: about 32 bytes a row (the
spatial index, each row's histogram cell and partition), the histogram (12 4^K 8 bytes), and
one partition at a time.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from xptools.errors import UserError
from xptools.io import InputTable, TableWriter, concat, open_table
from xptools.io import atomic
from xptools.progress import progress
from xptools.provenance import Run, running, stamp

INDEX = "_healpix_29"
OPEN_FILES = 256   # partitions written at once in one pass over the inputs
SOURCE_ID_ORDER = 12            # the HEALPix level of a Gaia source_id: source_id // 2**35
SOURCE_ID_SHIFT = 35


def _source_id_pixels(chunk, name: str, offset: int) -> np.ndarray:
    """The HEALPix level-12 nested pixel of each row's Gaia source_id."""
    ids = np.asarray(chunk["source_id"])
    if ids.dtype.kind not in "iu":
        raise UserError(f"{name}: source_id is not an integer column")
    pixels = ids.astype(np.int64) >> SOURCE_ID_SHIFT
    bad = (ids <= 0) | (pixels >= 12 * 4 ** SOURCE_ID_ORDER)
    if bad.any():
        row = offset + int(np.flatnonzero(bad)[0])
        raise UserError(f"{name}: row {row}: source_id {ids[bad][0]} is not a Gaia source_id")
    return pixels


def _pixel_centres(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cdshealpix.nested

    lon, lat = cdshealpix.nested.healpix_to_lonlat(pixels, SOURCE_ID_ORDER)
    return lon.to_value("deg"), lat.to_value("deg")


def _spatial_index(chunk, ra: str, dec: str, name: str, offset: int,
                   from_source_id: bool = False) -> np.ndarray:
    from hats.pixel_math import compute_spatial_index

    if from_source_id:   # the pixel's first order-29 cell: every row in the right partition
        return _source_id_pixels(chunk, name, offset) << (2 * (29 - SOURCE_ID_ORDER))

    lon = np.asarray(chunk[ra], dtype=np.float64)
    lat = np.asarray(chunk[dec], dtype=np.float64)
    bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90))
    if bad.any():
        row = offset + int(np.flatnonzero(bad)[0])
        raise UserError(f"{name}: row {row}: no valid position ({ra}={lon[bad][0]!r}, "
                        f"{dec}={lat[bad][0]!r}); a catalogue places every row on the sky")
    return compute_spatial_index(lon, lat)


def _check_inputs(sources: list[InputTable], ra: str, dec: str, from_source_id: bool) -> None:
    first = sources[0]
    for column in (ra, dec):
        if from_source_id and column in first.schema:
            raise UserError(f"{first.name}: has a {column!r} column; --positions-from-source-id "
                            f"is for tables without positions")
        if not from_source_id and column not in first.schema:
            raise UserError(f"{first.name}: no column {column!r} (name the position columns "
                            f"with --ra and --dec, or place the rows by Gaia source_id with "
                            f"--positions-from-source-id)")
    if from_source_id and "source_id" not in first.schema:
        raise UserError(f"{first.name}: no source_id column for --positions-from-source-id")
    for src in sources[1:]:
        mine = [(n, first.schema[n].dtype.kind, first.schema[n].shape[1:])
                for n in first.schema.colnames]
        theirs = [(n, src.schema[n].dtype.kind, src.schema[n].shape[1:])
                  for n in src.schema.colnames]
        if mine != theirs:
            raise UserError(f"{src.name}: its columns differ from {first.name}'s; a catalogue "
                            f"has one schema")
    if INDEX in first.schema:
        raise UserError(f"{first.name}: already has a {INDEX} column (a catalogue's "
                        f"partition?)")


def run_import(inputs: list[str], output: str, *, ra: str = "ra", dec: str = "dec",
               max_rows: int = 1_000_000, order: int | None = None, highest_order: int = 10,
               from_source_id: bool = False, name: str | None = None,
               input_format: str | None = None, chunk_rows: int = 100_000,
               overwrite: bool = False, quiet: bool = False) -> dict:
    from hats.pixel_math import generate_alignment

    from xptools.scale.catalogue import check_replace

    check_replace(output, overwrite)   # only a catalogue is ever replaced
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise UserError(f"-o {output}: folder {parent} does not exist")
    if order is not None and not 0 <= order <= highest_order:
        raise UserError(f"--order {order}: choose 0..{highest_order} (--highest-order)")
    sources = [open_table(path, input_format) for path in inputs]
    tmp = None
    try:
        _check_inputs(sources, ra, dec, from_source_id)
        total = sum(s.nrows or 0 for s in sources) or None
        # 1. positions
        indices, histogram = [], np.zeros(12 * 4 ** highest_order, np.int64)
        with progress(total, "hats-import: positions", quiet) as bar:
            for src in sources:
                offset = 0
                for chunk in src.chunks(chunk_rows, columns=["source_id"] if from_source_id
                                        else [ra, dec]):
                    index = _spatial_index(chunk, ra, dec, src.name, offset, from_source_id)
                    histogram += np.bincount(index >> (2 * (29 - highest_order)),
                                             minlength=len(histogram))
                    indices.append(index)
                    offset += len(chunk)
                    bar.update(len(chunk))
        index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        if not len(index):
            raise UserError(f"{inputs[0]}: no rows; a catalogue needs at least one")
        # 2. partitions: the (order, pixel) of each occupied histogram cell, then of each row
        cells, row_cell = np.unique(index >> (2 * (29 - highest_order)), return_inverse=True)
        if order is None:
            alignment = generate_alignment(histogram, highest_order=highest_order,
                                           threshold=max_rows)
            targets = np.array([alignment[c][:2] for c in cells], np.int64).reshape(-1, 2)
        else:
            targets = np.stack([np.full(len(cells), order, np.int64),
                                cells >> (2 * (highest_order - order))], axis=1)
        # sorted by the order-29 index of each partition's first cell: the HEALPix order
        # partition_info lists them in
        first_cell = targets[:, 1] << (2 * (29 - targets[:, 0]))
        keys, cell_partition = np.unique(np.stack([first_cell, *targets.T], axis=1), axis=0,
                                         return_inverse=True)
        partitions = [tuple(int(v) for v in k) for k in keys]
        row_partition = cell_partition.reshape(-1)[row_cell.reshape(-1)]
        tmp = atomic.temporary_beside(output, folder=True)
        spill = os.path.join(tmp, "spill")
        os.makedirs(spill)
        run = Run.now()
        # 3. rows into partitions, OPEN_FILES partitions per pass
        with progress(len(partitions), "hats-import: partitions", quiet,
                      unit="partitions") as bar, running(run):   # one stamp for all
            for start in range(0, len(partitions), OPEN_FILES):
                group = range(start, min(start + OPEN_FILES, len(partitions)))
                _spill(sources, row_partition, index, group, spill, chunk_rows,
                       (ra, dec) if from_source_id else None)
                for i in group:
                    _, o, p = partitions[i]
                    _write_partition(os.path.join(spill, f"{i}.parquet"), tmp, o, p)
                    bar.update(1)
        shutil.rmtree(spill)
        rows = _write_metadata(tmp, [(o, p) for _, o, p in partitions], histogram,
                               highest_order, name or os.path.basename(os.path.abspath(output)),
                               ra, dec, max_rows if order is None else None, run)
        if os.path.isdir(output):   # an empty folder, or a catalogue --overwrite replaces
            shutil.rmtree(output)
        os.replace(tmp, output)
        atomic.done_with(tmp)
        tmp = None
        return {"rows": rows, "partitions": len(partitions)}
    finally:
        for src in sources:
            src.close()
        atomic.discard(tmp)


def _spill(sources, row_partition, index, group: range, folder: str, chunk_rows: int,
           centres: tuple[str, str] | None) -> None:
    """The rows of partitions ``group``, with their ``_healpix_29`` (and, with ``centres``,
    the source_id pixel's centre as those two columns), into one Parquet file each (in input
    order)."""
    writers: dict[int, TableWriter] = {}
    try:
        at = 0
        for src in sources:
            for chunk in src.chunks(chunk_rows, read_ahead=True):
                n = len(chunk)
                where = row_partition[at:at + n]
                if centres:
                    about = ("of the centre of the source's HEALPix level-12 pixel (from "
                             "source_id; within 0.9 arcmin of the source, not its position)")
                    ra, dec = _pixel_centres(index[at:at + n] >> (2 * (29 - SOURCE_ID_ORDER)))
                    chunk.add_column(centres[0], ra, unit="deg",
                                     description=f"right ascension {about}")
                    chunk.add_column(centres[1], dec, unit="deg",
                                     description=f"declination {about}")
                chunk.add_column(INDEX, index[at:at + n],
                                 description="HEALPix order 29 nested index (HATS spatial "
                                             "index)")
                for i in np.unique(where):
                    if i not in group:
                        continue
                    if i not in writers:
                        writers[i] = TableWriter(os.path.join(folder, f"{i}.parquet"),
                                                 "parquet")
                    writers[i].write(chunk.rows(np.flatnonzero(where == i)))
                at += n
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


def _write_partition(spilled: str, root: str, order: int, pixel: int) -> None:
    from hats.io import paths
    from hats.pixel_math import HealpixPixel

    with open_table(spilled, "parquet") as src:
        table = concat(list(src.chunks(1 << 62)))
    table = table.rows(np.argsort(table[INDEX], kind="stable"))
    target = str(paths.pixel_catalog_file(root, HealpixPixel(order, pixel)))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with TableWriter(target, "parquet") as out:
        out.write(stamp(table))
    os.remove(spilled)


def _write_metadata(root: str, partitions: list[tuple[int, int]], histogram: np.ndarray,
                    histogram_order: int, name: str, ra: str, dec: str,
                    max_rows: int | None, run: Run) -> int:
    from hats.catalog import CatalogType
    from hats.io import skymap

    from xptools.scale.catalogue import write_metadata

    skymap.write_skymap(histogram, root)
    extra = {"hats_max_rows": max_rows} if max_rows else {}
    return write_metadata(root, partitions, dict(
        catalog_name=name, catalog_type=CatalogType.OBJECT, ra_column=ra, dec_column=dec,
        healpix_column=INDEX, healpix_order=29, skymap_order=histogram_order, **extra), run)
