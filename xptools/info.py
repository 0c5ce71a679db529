"""``xptools info``: what is in a table, or a HATS catalogue (its properties, and the columns
of its first partition), without reading more of it than needed."""

from __future__ import annotations

import itertools
import json

from xptools.errors import UserError
from xptools.io import open_table
from xptools.xp import CONTINUOUS, ContinuousLayout, detect_layout, sampled_grid

PROVENANCE = ("XPTVERS", "XPTCMD", "XPTDATE")


def _layout(first, name: str) -> str:
    """A one-line description of the XP content, from a table's first rows."""
    kind = detect_layout(first)
    if kind in CONTINUOUS:
        try:
            layout = ContinuousLayout(first, name, bands=None)
        except UserError as e:
            return f"XP continuous, incomplete: {e}"
        form = {"arrays": "array columns", "columns": "one column per coefficient",
                "packed": "coeff/coeff_error, BP then RP"}[kind]
        corr = "with" if layout.has_correlations else "without"
        return f"XP continuous ({form}, bands {'+'.join(layout.bands)}, {corr} correlations)"
    if kind == "sampled":
        try:
            grid = sampled_grid(first, name)
            return f"XP sampled ({len(grid)} samples, {grid[0]:g}..{grid[-1]:g} nm)"
        except UserError as e:
            return f"XP sampled, grid unknown: {e}"
    internal = [b for b in ("bp", "rp") if f"{b}_flux" in first]
    if internal:
        return f"XP sampled internal ({'+'.join(internal)}, pseudo-wavelength)"
    return "no XP spectra"


def _open(path: str, input_format: str | None):
    """(the table to describe, what it is, its rows or None): a table, or a catalogue's first
    partition with the catalogue's description and rows."""
    from xptools.scale.catalogue import is_catalogue, open_catalogue, open_partition

    if not is_catalogue(path):
        return open_table(path, input_format), None, None
    cat = open_catalogue(path)
    orders = sorted({order for order, _, _ in cat.partitions})
    what = (f"HATS catalogue, {len(cat.partitions)} partitions of HEALPix order "
            f"{orders[0]}..{orders[-1]}; columns of the first partition")
    return open_partition(cat.partitions[0][2]), what, cat.info.total_rows


def describe(path: str, input_format: str | None, as_json: bool) -> None:
    table, catalogue, catalogue_rows = _open(path, input_format)
    with table as src:
        schema = src.schema
        dtypes = {n: schema[n].dtype for n in schema.colnames}
        if src.nrows is not None:
            nrows, first = src.nrows, next(src.chunks(1))
        else:  # text formats: count the rows by reading them, and find the text widths
            pieces = src.chunks(100_000)
            first = next(pieces)
            nrows = 0
            for piece in itertools.chain([first], pieces):
                nrows += len(piece)
                for n in schema.colnames:
                    if piece[n].dtype.kind == "U":
                        dtypes[n] = max(dtypes[n], piece[n].dtype, key=lambda d: d.itemsize)
        layout = _layout(first, src.name)
        if catalogue is not None:
            nrows = catalogue_rows
        columns = [{"name": n, "dtype": str(dtypes[n]),
                    "shape": list(schema[n].shape[1:]), "unit": schema.info[n].unit,
                    "description": schema.info[n].description} for n in schema.colnames]
        report = {"file": path if catalogue else src.name, "format": catalogue or src.format,
                  "rows": nrows, "layout": layout,
                  "columns": columns,
                  "provenance": {k: schema.meta[k] for k in PROVENANCE if k in schema.meta},
                  "keywords": {k: v for k, v in schema.meta.items() if k not in PROVENANCE},
                  "history": schema.history}
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"file:     {report['file']} ({catalogue or report['format'].upper()})")
    print(f"rows:     {nrows}")
    print(f"layout:   {layout}")
    print(f"columns:  {len(columns)}")
    width = max((len(c["name"]) for c in columns), default=4)
    for c in columns:
        cell = f"[{'x'.join(map(str, c['shape']))}]" if c["shape"] else ""
        unit = f"  {c['unit']}" if c["unit"] else ""
        print(f"  {c['name']:<{width}}  {c['dtype'] + cell:<16}{unit}")
    if report["keywords"]:
        print("keywords:")
        for k, v in report["keywords"].items():
            print(f"  {k} = {v}")
    if report["provenance"]:
        print("provenance:")
        for k, v in report["provenance"].items():
            print(f"  {k} = {v}")
    if report["history"]:
        print("history:")
        for line in report["history"]:
            print(f"  {line}")
