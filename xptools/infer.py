"""`xptools infer`: stellar labels with uncertainties for every row of a table.

For each label the output gains ``<label>``, ``<label>_error``, ``<label>_q16`` and
``<label>_q84``, and one ``infer_flag`` bitmask per row:

| bit | value | meaning |
|---|---|---|
| 0 | 1  | no usable XP spectrum, missing or not positive as a whole (labels from photometry) |
| 1 | 2  | partial XP spectrum (e.g. BP or RP missing, non-positive flux) |
| 2 | 4  | no photometry |
| 3 | 8  | some photometry missing |
| 4 | 16 | no phot_g_mean_mag: G estimated from the XP spectrum |
| 5 | 32 | a prediction outside the training labels' 0.5..99.5 percentile range |
| 6 | 64 | nothing usable: labels are NaN |

All input columns pass through.
"""

from __future__ import annotations

import numpy as np

from xptools import models
from xptools.io import InputTable, TableWriter
from xptools.models.features import FLAG_UNUSABLE, XPSource
from xptools.progress import progress
from xptools.provenance import stamp

UNITS = {"teff": "K", "logg": "dex", "fe_h": "dex", "alpha_m": "dex", "m_h": "dex"}


def output_names(labels: list[str], prefix: str | None) -> tuple[dict[str, list[str]], str]:
    names = models.column_names(prefix, [f"{l}{s}" for l in labels
                                         for s in ("", "_error", "_q16", "_q84")]
                                + ["infer_flag"])
    columns = {l: [names[f"{l}{s}"] for s in ("", "_error", "_q16", "_q84")] for l in labels}
    return columns, names["infer_flag"]


def run_infer(src: InputTable, out: TableWriter, model, *, prefix: str | None = None,
              chunk_rows: int = 20_000, quiet: bool = False) -> dict:
    columns, flag_name = output_names(model.labels, prefix)
    models.check_clash(src.schema, [c for names in columns.values() for c in names]
                       + [flag_name], src.name)
    source = XPSource(src.schema, src.name, model.features)
    keywords = models.keywords(model)
    counts = {"rows": 0, "unusable": 0, "flagged": 0}
    with progress(src.nrows, "infer", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            xp, _ = source(chunk)
            values, _, observed, flags = model.features.raw(chunk, xp, None)
            pred = model.predict(model.features.scale(values), observed)
            flags = flags | pred["flag"]
            table = stamp(chunk.select(chunk.colnames), keywords)
            for label, names in columns.items():
                unit = UNITS.get(label)
                for name, data, what in zip(names, pred[label],
                                            ("median", "1-sigma error", "16% quantile",
                                             "84% quantile")):
                    table.add_column(name, data.astype(np.float32), unit=unit,
                                     description=f"{label} {what} ({model.kind})")
            table.add_column(flag_name, flags.astype(np.int16),
                             description="bitmask, see docs/infer.md")
            out.write(table)
            counts["rows"] += len(chunk)
            counts["unusable"] += int(np.count_nonzero(pred["flag"] & FLAG_UNUSABLE))
            counts["flagged"] += int(np.count_nonzero(flags))
            bar.update(len(chunk))
    return counts
