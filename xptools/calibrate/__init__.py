"""``xptools calibrate``: are a label model's error bars honest against reference labels, and
a model directory that `xptools infer` makes honest (Shen, Speagle & Ho 2026, Sec. IV.2).

    labeled table (infer output) --+-- id join (xptools.crossmatch) --> rows with predictions
    reference labels (REF) --------+                                    and reference labels
        -> per label and subset: PIT, label-only PIT, D_KS, coverage, z, reliability (diagnostics)
        -> --fit scale | linear: s, a, b with bootstrap errors (fit), diagnostics after
        -> stderr table, --report JSON, --plots PNGs (plots), -o calibrated model directory

The reference labels are ``<label>`` and ``<label>_err`` (or ``_error``) of REF, joined on
``--on`` by the crossmatch's own id join (its duplicate rules: an error, or ``--best COL``),
or columns of the labeled table itself (``--reference-columns``). Rows where a label's
prediction, error, reference or reference error is NaN are skipped for that label and counted.

A calibration always applies to the model's raw outputs: if the labeled table was made with a
calibrated model (header XPTCALIB), its calibration is undone first (from the model directory)
and the new fit replaces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from xptools.calibrate.calibration import RANGE_PERCENTILES, Calibration, LabelCalibration
from xptools.errors import UserError
from xptools.io import STDIO, InputTable, Table, concat
from xptools.io.atomic import check_folder, write_file

REF_SUFFIX = "_ref"        # a reference column whose name LABELED has gets this suffix
FIT_CHOICES = ("none", "scale", "linear")
PLOT_FILES = ("calibrate_pit.png", "calibrate_reliability.png", "calibrate_kiel.png",
              "calibrate_residuals.png")
CALIBRATION_FILE = "calibration.json"


@dataclass
class Options:
    """What to calibrate against what; the command line's options."""

    reference: str | None = None              # REF table; None: columns of LABELED
    reference_columns: str | None = None      # PREFIX or label=COL,...
    on: tuple[str, str] = ("source_id", "source_id")
    best: str | None = None
    labels: list[str] | None = None
    prefix: str | None = None                 # of the prediction columns (infer --prefix)
    where: list[str] = field(default_factory=list)
    fit_where: str | None = None
    fit: str = "none"
    scale_target: str = "mad"                 # fit.SCALE_TARGETS
    model: str | None = None
    seed: int = 0
    bootstrap: int = 200
    output: str | None = None                 # calibrated model directory

    def check(self) -> None:
        if self.fit not in FIT_CHOICES:
            raise UserError(f"--fit {self.fit!r}: choose none, scale or linear")
        if self.scale_target not in ("mad", "coverage"):
            raise UserError(f"--scale-target {self.scale_target!r}: choose mad or coverage")
        if self.output is not None and self.fit == "none":
            raise UserError("-o writes a calibrated model: give --fit scale or --fit linear")
        if self.fit_where is not None and self.fit == "none":
            raise UserError("--fit-where chooses the rows of --fit; there is no --fit")
        if self.best is not None and self.reference is None:
            raise UserError("--best chooses among duplicate ids of --reference REF; there is none")
        if self.bootstrap < 0:
            raise UserError(f"--bootstrap {self.bootstrap}: must be 0 or more")


# -- columns ---------------------------------------------------------------------------------

def _prefixed(prefix: str | None) -> str:
    return "" if not prefix else prefix if prefix.endswith("_") else prefix + "_"


def prediction_columns(label: str, prefix: str | None) -> list[str]:
    """The columns infer writes for a label: value, error, q16, q84."""
    p = _prefixed(prefix)
    return [f"{p}{label}{s}" for s in ("", "_error", "_q16", "_q84")]


def detect_labels(schema: Table, prefix: str | None) -> list[str]:
    """Labels for which the table has infer's four columns."""
    p = _prefixed(prefix)
    found = []
    for name in schema.colnames:
        if name.startswith(p) and name.endswith("_q16"):
            label = name[len(p):-len("_q16")]
            if all(c in schema for c in prediction_columns(label, prefix)):
                found.append(label)
    return found


def error_column(schema: Table, value: str) -> str | None:
    for suffix in ("_err", "_error"):
        if value + suffix in schema:
            return value + suffix
    return None


def reference_names(spec: str | None, labels: list[str], schema: Table,
                    name: str) -> dict[str, tuple[str, str]]:
    """label -> (reference value column, its error column) in ``schema``.

    ``spec``: None (the label names), a prefix (``apogee_`` gives apogee_teff,
    apogee_teff_err) or ``label=column`` pairs, comma-separated (other labels keep their
    names); the error column is the value column's name plus ``_err`` or ``_error``."""
    explicit: dict[str, str] = {}
    prefix = ""
    if spec is not None and "=" in spec:
        for part in spec.split(","):
            label, equals, column = (x.strip() for x in part.partition("="))
            if not label or not equals or not column:
                raise UserError(f"--reference-columns {spec!r}: expected PREFIX or "
                                f"LABEL=COLUMN,... (e.g. teff=apogee_teff)")
            explicit[label] = column
        unknown = sorted(set(explicit) - set(labels))
        if unknown:
            raise UserError(f"--reference-columns names {unknown[0]!r}, which is not one of the "
                            f"labels ({', '.join(labels)})")
    elif spec is not None:
        prefix = spec.strip()
    out = {}
    for label in labels:
        value = explicit.get(label, prefix + label)
        if value not in schema:
            raise UserError(f"{name}: no column {value!r} (the reference {label}); "
                            f"name it with --reference-columns, or choose --labels")
        data = schema[value]
        if data.ndim != 1 or data.dtype.kind not in "iuf":
            raise UserError(f"{name}: column {value!r} (the reference {label}) is not one "
                            f"number per row")
        err = error_column(schema, value)
        if err is None:
            raise UserError(f"{name}: no column {value + '_err'!r} or {value + '_error'!r} "
                            f"(the error of the reference {label})")
        out[label] = (value, err)
    return out


# -- reading and joining ---------------------------------------------------------------------

class _Columns:
    """An input table seen through some of its columns: what the crossmatch streams."""

    def __init__(self, src: InputTable, columns: list[str]):
        self._src, self.columns = src, list(dict.fromkeys(columns))
        self.name = src.name
        self.schema = src.schema.select(self.columns)

    @property
    def nrows(self):
        return self._src.nrows

    def chunks(self, rows: int, columns=None, read_ahead: bool = False):
        return self._src.chunks(rows, columns or self.columns, read_ahead)


class _Collected:
    """A table writer that keeps the tables in memory."""

    def __init__(self):
        self.tables: list[Table] = []

    def write(self, table: Table) -> None:
        self.tables.append(table)


def _join_warning(warn: Callable[[str], None]) -> Callable[[str], None]:
    """The crossmatch's warnings, without advice on options calibrate does not have."""
    return lambda message: warn(message.replace(" (--how left keeps them)", "")
                                .replace("left out of the inner join", "left out"))


def join_reference(src: InputTable, ref: InputTable, left_columns: list[str],
                   right_columns: list[str], opts: Options,
                   warn: Callable[[str], None]) -> tuple[Table, dict[str, str]]:
    """LABELED's ``left_columns`` with REF's ``right_columns`` for the ids in both (the
    crossmatch id join and its duplicate rules); returns the table and the names the right
    columns have in it."""
    from xptools.crossmatch import Match, plan, run_crossmatch
    from xptools.crossmatch.choose import BEST

    left = _Columns(src, left_columns + [opts.on[0]])
    match = Match(on=opts.on, how="inner", rule=BEST if opts.best else None, best=opts.best,
                  columns=list(dict.fromkeys(right_columns)), suffix=REF_SUFFIX)
    names = plan(match, left.schema, left.name, ref.schema, ref.name).right_names
    out = _Collected()
    try:
        run_crossmatch(left, ref, out, match, quiet=True, warn=_join_warning(warn))
    except UserError as e:
        raise UserError(str(e).replace(", or --all to keep every pair", "")) from e
    table = concat(out.tables)
    if len(table) == 0:
        raise UserError(f"{ref.name}: no {opts.on[1]!r} in common with {src.name}'s "
                        f"{opts.on[0]!r}: nothing to compare")
    # the crossmatch named the right columns against the columns read; name them against
    # all of LABELED's, so that a name does not depend on what was read
    final = {}
    for column, got in names.items():
        want = column + REF_SUFFIX if column in src.schema else column
        if want != got:
            if want in src.schema:
                raise UserError(f"{src.name}: has columns {column!r} and {want!r} both, so "
                                f"{ref.name}'s {column!r} has no name; rename one")
            table.columns[want] = table.columns.pop(got)
            table.info[want] = table.info.pop(got)
        final[column] = want
    return table, final


# -- the model -------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    path: str | None = None
    source: str = "none"
    checksum: str | None = None
    labels: list[str] | None = None
    calibration: Calibration | None = None


def resolve_model(option: str | None, header: dict, name: str, need: bool,
                  warn: Callable[[str], None]) -> ModelInfo:
    """The model that made LABELED: --model, else the shipped one the header names
    (XPTMODEL), else (when ``need``) the shipped default; its weights must match the
    header's XPTMSUM."""
    from xptools import models

    summed = str(header.get("XPTMSUM") or "").strip()
    named = str(header.get("XPTMODEL") or "").strip()
    if option is not None:
        path, source = option, "--model"
    elif named and os.path.isfile(os.path.join(models.DATA, named, models.CONFIG)):
        path, source = os.path.join(models.DATA, named), "shipped, named by the header"
    elif need:
        if named:
            raise UserError(f"{name}: made with model {named!r} (XPTMSUM {summed or '?'}), "
                            f"which is not shipped with xptools; give --model DIR")
        path, source = models.default_path("infer"), "the shipped default"
        warn(f"{name}: the header names no model (no XPTMODEL/XPTMSUM); taking the shipped "
             f"default, {path}")
    else:
        return ModelInfo()
    config = models.read_config(path)
    if not os.path.isfile(os.path.join(path, models.WEIGHTS)):
        raise UserError(f"{path}: no {models.WEIGHTS}")
    checksum = models.weights_checksum(path)
    if summed and not checksum.startswith(summed.lower()):
        raise UserError(f"{name}: made with model weights {summed} (XPTMSUM), but "
                        f"{os.path.join(path, models.WEIGHTS)} has {checksum[:16]}: not the "
                        f"model that labeled these stars")
    if not summed:
        warn(f"{name}: no XPTMSUM in the header: cannot check that {path} made these "
             f"predictions")
    labels = list(config.get("labels") or [])
    calibration = None
    if config.get("calibration") is not None:
        try:
            calibration = Calibration.from_dict(config["calibration"], labels)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{os.path.join(path, models.CONFIG)}: bad calibration "
                            f"({type(e).__name__}: {e})") from e
    return ModelInfo(path, source, checksum, labels, calibration)


# -- per label data --------------------------------------------------------------------------

@dataclass
class LabelData:
    label: str
    pred: np.ndarray
    error: np.ndarray
    q16: np.ndarray | None
    q84: np.ndarray | None
    ref: np.ndarray
    ref_error: np.ndarray
    ok: np.ndarray                 # rows with every value finite (and errors >= 0)

    def rows(self, mask: np.ndarray) -> tuple:
        """(pred, error, q16, q84, ref, ref_error) of the usable rows of ``mask``."""
        m = self.ok & mask
        pick = (lambda v: None if v is None else v[m])
        return (self.pred[m], self.error[m], pick(self.q16), pick(self.q84), self.ref[m],
                self.ref_error[m])

    def calibrated(self, calibration: Calibration) -> "LabelData":
        if self.label not in calibration.labels:
            return self
        (m, e, lo, hi), _ = calibration.apply(self.label, self.pred, self.error, self.q16,
                                              self.q84)
        return LabelData(self.label, m, e, lo, hi, self.ref, self.ref_error, self.ok)

    def raw(self, calibration: Calibration | None) -> "LabelData":
        if calibration is None or self.label not in calibration.labels:
            return self
        m, e, lo, hi = calibration.invert(self.label, self.pred, self.error, self.q16, self.q84)
        return LabelData(self.label, m, e, lo, hi, self.ref, self.ref_error, self.ok)


def _floats(table: Table, column: str) -> np.ndarray:
    data = np.asarray(table[column])
    if data.ndim != 1 or data.dtype.kind not in "iuf":
        raise UserError(f"column {column!r} is not one number per row")
    values = data.astype(np.float64)
    null = table.info[column].null if column in table.info else None
    if data.dtype.kind in "iu" and null is not None:
        values[data == null] = np.nan
    return values


def label_data(table: Table, label: str, pred_columns: list[str], ref_columns: tuple[str, str],
               names: dict[str, str]) -> LabelData:
    """The arrays of one label; a column that is NaN on every row is an error naming it.
    ``names``: column -> the file it comes from (for messages)."""
    value, error, q16, q84 = pred_columns
    arrays = {}
    for column in [value, error, *ref_columns] + [c for c in (q16, q84) if c in table]:
        arrays[column] = _floats(table, column)
        if not np.isfinite(arrays[column]).any():
            raise UserError(f"{names[column]}: column {column!r} is NaN (or null) in every "
                            f"row compared")
    quantiles = q16 in arrays and q84 in arrays
    ok = np.ones(len(table), bool)
    for column, data in arrays.items():
        if column in (q16, q84) and not quantiles:
            continue
        ok &= np.isfinite(data)
    with np.errstate(invalid="ignore"):
        ok &= (arrays[error] >= 0) & (arrays[ref_columns[1]] >= 0)
        ok &= (arrays[error] > 0) | (arrays[ref_columns[1]] > 0)
    if not ok.any():
        raise UserError(f"{names[value]}: no row has a finite {value!r}, {error!r}, "
                        f"{ref_columns[0]!r} and {ref_columns[1]!r} together (label {label})")
    return LabelData(label, arrays[value], arrays[error], arrays.get(q16) if quantiles else None,
                     arrays.get(q84) if quantiles else None, arrays[ref_columns[0]],
                     arrays[ref_columns[1]], ok)


# -- the run ---------------------------------------------------------------------------------

def sha256_of(path: str | None) -> str | None:
    if path is None or path == STDIO or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Result:
    """Everything a run found, for the table, the report, the plots and the model."""

    report: dict
    data: dict[str, LabelData]                  # as given
    raw: dict[str, LabelData]                   # calibration of the input undone
    subsets: dict[str, np.ndarray]
    fit_rows: np.ndarray
    kiel: tuple[np.ndarray, np.ndarray] | None  # teff, logg per row
    calibration: Calibration | None = None
    model: ModelInfo = field(default_factory=ModelInfo)


def run_calibrate(src: InputTable, ref: InputTable | None, opts: Options,
                  warn: Callable[[str], None] = lambda m: None) -> Result:
    """Read, join, diagnose and (with --fit) fit; writes nothing."""
    from xptools.calibrate import diagnostics
    from xptools.where import RowFilter

    opts.check()
    header = dict(src.schema.meta)
    input_calibrated = str(header.get("XPTCALIB") or "").strip() or None
    need_model = opts.output is not None or (input_calibrated is not None and opts.fit != "none")
    model = resolve_model(opts.model, header, src.name, need_model, warn)
    labels = opts.labels or model.labels or detect_labels(src.schema, opts.prefix)
    if not labels:
        raise UserError(f"{src.name}: no predicted labels found (columns LABEL, LABEL_error, "
                        f"LABEL_q16, LABEL_q84{', with --prefix' if opts.prefix else ''}); "
                        f"name them with --labels")
    if model.labels is not None and opts.output is not None:
        unknown = [l for l in labels if l not in model.labels]
        if unknown:
            raise UserError(f"--labels: {unknown[0]!r} is not a label of {model.path} "
                            f"({', '.join(model.labels)})")
    pred_columns = {l: prediction_columns(l, opts.prefix) for l in labels}
    for label, columns in pred_columns.items():
        for column in columns[:2]:
            if column not in src.schema:
                hint = " (give --prefix if infer had one)" if not opts.prefix else ""
                raise UserError(f"{src.name}: no column {column!r} (the predicted {label})"
                                f"{hint}")
    wheres = [RowFilter(w, "--where") for w in opts.where]
    fit_where = RowFilter(opts.fit_where, "--fit-where") if opts.fit_where else None
    filters = wheres + ([fit_where] if fit_where else [])
    left = [c for cs in pred_columns.values() for c in cs if c in src.schema]
    origin = {c: src.name for c in left}
    if ref is None:
        if opts.reference_columns is None and not opts.prefix:
            raise UserError("give --reference REF (reference labels to join), or "
                            "--reference-columns naming reference columns of "
                            f"{src.name} (its {labels[0]!r} is the prediction)")
        ref_names = reference_names(opts.reference_columns, labels, src.schema, src.name)
        clash = [l for l, (v, _) in ref_names.items() if v == pred_columns[l][0]]
        if clash:
            raise UserError(f"{src.name}: the reference {clash[0]} would be the prediction "
                            f"itself ({clash[0]!r}); name the reference with "
                            f"--reference-columns")
        extra = [c for f in filters for c in f.columns if c in src.schema]
        kiel_columns = [c for c in ("teff", "logg") if c in src.schema]
        needed = left + [c for pair in ref_names.values() for c in pair] + extra + kiel_columns
        table = src.read(list(dict.fromkeys(needed)))
        ref_columns = ref_names
        for pair in ref_names.values():
            origin.update({c: src.name for c in pair})
        ref_file = src.name
    else:
        ref_names = reference_names(opts.reference_columns, labels, ref.schema, ref.name)
        wanted = [c for f in filters for c in f.columns]
        left_extra = [c for c in wanted if c in src.schema]
        right_extra = [c for c in wanted if c not in src.schema and c in ref.schema]
        right_extra += [c[:-len(REF_SUFFIX)] for c in wanted if c.endswith(REF_SUFFIX)
                        and c[:-len(REF_SUFFIX)] in ref.schema]
        right = [c for pair in ref_names.values() for c in pair] + right_extra
        table, names = join_reference(src, ref, left + left_extra, right, opts, warn)
        ref_columns = {l: (names[v], names[e]) for l, (v, e) in ref_names.items()}
        for pair in ref_columns.values():
            origin.update({c: ref.name for c in pair})
        ref_file = ref.name
    for f in filters:
        f.check(table, f"{src.name}" + (f" joined with {ref.name}" if ref is not None else ""))
    n = len(table)
    data = {l: label_data(table, l, pred_columns[l], ref_columns[l], origin) for l in labels}
    if input_calibrated is not None and opts.fit != "none" and (
            model.calibration is None or model.calibration.id != input_calibrated):
        holds = ("no calibration" if model.calibration is None
                 else f"calibration {model.calibration.id}")
        raise UserError(f"{src.name}: made with a calibrated model (XPTCALIB "
                        f"{input_calibrated}), but {model.path} holds {holds}; give --model "
                        f"with the directory that labeled it, so that its calibration can be "
                        f"undone before fitting")
    raw = {l: d.raw(model.calibration if input_calibrated else None) for l, d in data.items()}
    everything = np.ones(n, bool)
    subsets = {"all": everything}
    for w in wheres:
        subsets[w.text] = w(table)
    fit_rows = fit_where(table) if fit_where else everything
    teff_logg = _kiel_columns(table, data, ref_columns)
    report = {
        "labeled": {"file": src.name, "rows": int(n) if ref is None else None,
                    "xptcalib": input_calibrated},
        "reference": {"file": ref_file, "columns": {l: list(p) for l, p in ref_columns.items()},
                      "on": list(opts.on) if ref is not None else None, "best": opts.best},
        "rows": int(n),
        "model": {"path": _shown_path(model.path), "source": model.source,
                  "checksum": model.checksum[:16] if model.checksum else None},
        "labels": labels,
        "skipped": {l: int((~d.ok).sum()) for l, d in data.items()},
        "where": {name: (None if name == "all" else name) for name in subsets},
        "before": _diagnose(data, subsets),
        "fit": None, "after": None,
    }
    if ref is not None:
        report["labeled"]["rows"] = src.nrows
        report["unmatched"] = (src.nrows - n) if src.nrows is not None else None
    result = Result(report, data, raw, subsets, fit_rows, teff_logg, model=model)
    if opts.fit != "none":
        result.calibration = fit_calibration(raw, fit_rows, opts, src, ref, ref_columns)
        after = {l: d.calibrated(result.calibration) for l, d in raw.items()}
        report["fit"] = {"method": opts.fit, "where": opts.fit_where, "seed": opts.seed,
                         "bootstrap": opts.bootstrap,
                         "labels": {l: vars(c) for l, c in result.calibration.labels.items()}}
        report["after"] = _diagnose(after, subsets)
    undone = input_calibrated is not None and opts.fit != "none"
    if undone:  # the raw model's own diagnostics: the baseline of the card and the figures
        report["raw"] = _diagnose(raw, subsets)
    if teff_logg is not None:
        report["kiel"] = {"before": diagnostics.kiel_map(
            *teff_logg, _pits(raw if undone else data, everything))}
        if result.calibration is not None:
            after = {l: d.calibrated(result.calibration) for l, d in raw.items()}
            report["kiel"]["after"] = diagnostics.kiel_map(*teff_logg, _pits(after, everything))
    return result


def _kiel_columns(table: Table, data: dict[str, LabelData], ref_columns) -> tuple | None:
    """Teff and log g per row for the Kiel map: the reference labels, else the table's
    own teff and logg columns."""
    if "teff" in data and "logg" in data:
        return data["teff"].ref, data["logg"].ref
    if "teff" in table and "logg" in table:
        return _floats(table, "teff"), _floats(table, "logg")
    return None


def _pits(data: dict[str, LabelData], rows: np.ndarray) -> dict[str, np.ndarray]:
    from xptools.calibrate.diagnostics import pit

    out = {}
    for label, d in data.items():
        p = np.full(len(d.ok), np.nan)
        m = d.ok & rows
        p[m] = pit(d.pred[m], d.ref[m], np.sqrt(d.error[m] ** 2 + d.ref_error[m] ** 2))
        out[label] = p
    return out


def _diagnose(data: dict[str, LabelData], subsets: dict[str, np.ndarray]) -> dict:
    from xptools.calibrate.diagnostics import label_diagnostics

    return {name: {label: label_diagnostics(*d.rows(mask)) for label, d in data.items()}
            for name, mask in subsets.items()}


def _shown_path(path: str | None) -> str | None:
    """A model directory as reports record it: a shipped one by its name (its place is this
    installation's), any other as given."""
    from xptools import models

    if path and os.path.dirname(os.path.abspath(path)) == os.path.abspath(models.DATA):
        return os.path.basename(os.path.normpath(path))
    return path


def _round(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}") if np.isfinite(value) else float(value)


def fit_calibration(raw: dict[str, LabelData], rows: np.ndarray, opts: Options,
                    src: InputTable, ref: InputTable | None, ref_columns) -> Calibration:
    """--fit scale or linear on the raw predictions of ``rows``, per label."""
    from xptools import __version__
    from xptools.calibrate import fit
    from xptools.provenance import command_line

    labels = {}
    for label, d in raw.items():
        pred, error, _, _, y, y_error = d.rows(rows)
        if len(pred) < 10:
            raise UserError(f"--fit: only {len(pred)} rows with a finite {label} prediction "
                            f"and reference{' match --fit-where' if opts.fit_where else ''}; "
                            f"at least 10 are needed")
        rng = np.random.default_rng([opts.seed, len(labels)])
        c = LabelCalibration(n=int(len(pred)))
        mapped = pred
        if opts.fit == "linear":
            line = fit.fit_linear(pred, y, error, y_error, rng, opts.bootstrap)
            if not np.isfinite(line["a"]) or line["a"] == 0:
                raise UserError(f"--fit linear: the {label} predictions do not vary; no line "
                                f"can be fitted")
            c.a, c.b = _round(line["a"], 6), _round(line["b"], 6)
            c.a_error, c.b_error = _round(line["a_error"], 3), _round(line["b_error"], 3)
            c.ab_correlation = _round(line["ab_correlation"], 3)
            mapped = c.a * pred + c.b
            if line["clipped"]:
                c.note = f"{line['clipped']} outliers left out of the line"
        scale = fit.fit_scale(mapped - y, error, y_error, rng, opts.bootstrap,
                              opts.scale_target)
        c.s, c.s_error = _round(scale["s"], 5), _round(scale["s_error"], 3)
        if scale["floor"]:
            note = ("label-only floor: the reference errors alone already meet the target, "
                    "so the errors cannot be fitted smaller against these labels; s = 1 kept")
            c.note = f"{c.note}; {note}" if c.note else note
        c.range = [_round(v, 6) for v in np.percentile(pred, RANGE_PERCENTILES)]
        labels[label] = c
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ref_path = ref.name if ref is not None else src.name
    return Calibration(
        opts.fit, labels, opts.scale_target,
        reference={"file": os.path.basename(ref_path), "sha256": sha256_of(ref_path),
                   "columns": {l: list(p) for l, p in ref_columns.items()},
                   **({"on": "=".join(opts.on), "best": opts.best} if ref is not None else {})},
        labeled={"file": os.path.basename(src.name), "sha256": sha256_of(src.name)},
        fit_where=opts.fit_where,
        made_by={"xptools": __version__, "command": command_line(), "date": now,
                 "seed": opts.seed, "bootstrap": opts.bootstrap})


# -- text ------------------------------------------------------------------------------------

def _num(value, spec: str) -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def diagnostics_table(section: dict, title: str = "") -> str:
    """A Markdown table of the diagnostics (subset -> label -> values)."""
    lines = ["| subset | label | N | bias | sigma_MAD | z sigma_MAD | 68% [q16,q84] | 68% +-1s "
             "| 95% +-2s | D_KS | KS p | PIT | label-only z sigma_MAD |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for subset, by_label in section.items():
        for label, m in by_label.items():
            if not m["n"]:
                lines.append(f"| {subset}{title} | {label} | 0 | | | | | | | | | | |")
                continue
            lo = m["label_only"]
            lines.append(
                f"| {subset}{title} | {label} | {m['n']} | {_num(m['bias'], '.3g')} | "
                f"{_num(m['sigma_mad'], '.4g')} | {_num(m['z_sigma_mad'], '.3f')} | "
                f"{_num(m['coverage_68_quantiles'], '.3f')} | {_num(m['coverage_68'], '.3f')} "
                f"| {_num(m['coverage_95'], '.3f')} | {_num(m['ks'], '.4f')} | "
                f"{_num(m['ks_p'], '.2g')} | {m['pit_shape']} | "
                f"{_num(lo['z_sigma_mad'], '.3f')}{' (floor)' if lo['floor'] else ''} |")
    return "\n".join(lines)


def fit_table(calibration: Calibration) -> str:
    lines = ["| label | N | s | a | b | calibrated range (raw values) | note |",
             "|---|---|---|---|---|---|---|"]
    for label, c in calibration.labels.items():
        linear = calibration.fit == "linear"
        a = f"{c.a:.5g} +- {c.a_error:.2g}" if linear else "1"
        b = f"{c.b:.5g} +- {c.b_error:.2g}" if linear else "0"
        s = f"{c.s:.4g}" + ("" if c.s_error == 0 else f" +- {c.s_error:.2g}")
        lines.append(f"| {label} | {c.n} | {s} | {a} | {b} | {c.range[0]:.5g} .. "
                     f"{c.range[1]:.5g} | {c.note} |")
    return "\n".join(lines)


def floor_notes(section: dict) -> list[str]:
    """What to say about labels whose label-only PIT is already flat or an inverted U."""
    notes = []
    for label, m in section.get("all", {}).items():
        if m["n"] and m["label_only"]["floor"]:
            notes.append(f"{label}: the reference errors alone hold "
                         f"{m['label_only']['coverage_68']:.1%} of the differences within +-1 "
                         f"sigma (label-only PIT: {m['label_only']['pit_shape']}): the model "
                         f"cannot be shown to be conservative against these labels, and its "
                         f"errors are not shrunk")
    return notes


def summary_text(result: Result) -> str:
    """What the command prints on stderr."""
    r = result.report
    skipped = ", ".join(f"{l} {n}" for l, n in r["skipped"].items())
    model = (f"model {r['model']['path']} ({r['model']['source']}, weights "
             f"{r['model']['checksum']})" if r["model"]["path"] else
             "model not checked (the header names none that is shipped; give --model DIR)")
    unmatched = r.get("unmatched")
    missing = f" ({unmatched} more without a reference row)" if unmatched else ""
    lines = [f"calibrate: {r['rows']} rows of {r['labeled']['file']} with reference labels "
             f"from {r['reference']['file']}{missing}; {model}",
             f"rows skipped for NaN values: {skipped}"]
    if r["labeled"]["xptcalib"]:
        lines.append(f"the predictions are calibrated (XPTCALIB {r['labeled']['xptcalib']}): "
                     "the table shows them as given"
                     + ("; the fit starts from the raw values" if r["fit"] else ""))
    lines += ["", diagnostics_table(r["before"])]
    lines += [""] + floor_notes(r["before"]) if floor_notes(r["before"]) else []
    if r.get("raw"):
        lines += ["", "the raw model's (its calibration undone):", "",
                  diagnostics_table(r["raw"], " (raw)")]
    if result.calibration is not None:
        where = f" on the rows with {r['fit']['where']}" if r["fit"]["where"] else ""
        lines += ["", f"--fit {r['fit']['method']}{where} (bootstrap errors, "
                      f"{r['fit']['bootstrap']} resamplings):", "",
                  fit_table(result.calibration), "",
                  "after the fit (in-sample for the rows it was fitted on"
                  + (", out-of-sample for the others" if r["fit"]["where"] else "") + "):", "",
                  diagnostics_table(r["after"], " (after)")]
    return "\n".join(lines)


def baseline(report: dict) -> tuple[str, dict]:
    """What a fit is compared with: the raw model's diagnostics when the labeled table's
    calibration was undone, else those of the table as given (name, section)."""
    if report.get("raw"):
        return "raw model", report["raw"]
    return "as given", report["before"]


def card_section(result: Result, plots: list[str]) -> str:
    """The card's calibration section."""
    c, r = result.calibration, result.report
    where = f", rows with `{c.fit_where}`" if c.fit_where else ""
    ref = c.reference
    lines = [
        "## Calibration", "",
        f"Made by `xptools calibrate --fit {c.fit} --scale-target {c.scale_target}` (xptools {c.made_by.get('xptools')}, "
        f"{c.made_by.get('date')}): the model's labels of {c.labeled.get('file')} against the "
        f"reference labels of {ref.get('file')} (sha256 {str(ref.get('sha256'))[:16]}...)"
        f"{where}; `{c.made_by.get('command')}`.", "",
        "`xptools infer` with this model applies it: errors and quantile half-widths are "
        "multiplied by s, values mapped to a x value + b; infer_flag 512 marks a prediction "
        "outside the calibrated range (the 0.5..99.5 percentiles of the raw predictions it "
        "was fitted on). Output headers carry XPTCALIB. Sections above this one that describe "
        "the training and its validation are about the model's raw outputs.", "",
        fit_table(c), "",
        "PIT (Shen, Speagle & Ho 2026, Eq. 3), D_KS, coverage and z (docs/calibrate.md), as "
        "the raw model gives them and after the fit, on the same rows (in-sample; "
        "`benchmarks/bench_calibrate.py` measures a fit on held-out stars):", "",
        diagnostics_table(baseline(r)[1]),
        *diagnostics_table(r["after"], " (after)").splitlines()[2:], ""]
    notes = floor_notes(baseline(r)[1])
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    if plots:
        lines += ["Figures: " + ", ".join(plots) + ".", ""]
    return "\n".join(lines)


def replace_section(card: str, section: str, heading: str = "## Calibration") -> str:
    """``card`` with its ``heading`` section (if any) replaced by ``section``, else appended."""
    lines = card.rstrip("\n").split("\n")
    start = next((i for i, l in enumerate(lines) if l.strip() == heading), None)
    if start is None:
        return "\n".join(lines) + "\n\n" + section.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    kept = lines[:start] + lines[end:]
    return "\n".join(kept).rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"


def report_json(result: Result) -> str:
    def clean(value):
        if isinstance(value, float):
            return float(f"{value:.6g}") if np.isfinite(value) else None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    report = dict(result.report)
    if result.calibration is not None:
        report["calibration"] = result.calibration.to_dict()
        report["calibration"]["id"] = result.calibration.id
    return json.dumps(clean(report), indent=1) + "\n"


def check_outputs(outputs: dict[str, str | None], overwrite: bool) -> None:
    """Refuse, before any work, outputs that exist (without --overwrite) or cannot be made:
    ``outputs``: plots (folder), report (file or '-'), output (model folder)."""
    plots, report, output = outputs.get("plots"), outputs.get("report"), outputs.get("output")
    for path, what in ((report, "--report"), (output, "-o")):
        if path in (None, STDIO):
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UserError(f"{path}: folder {folder} does not exist ({what})")
        if os.path.exists(path) and not overwrite:
            raise UserError(f"{path} exists; use --overwrite to replace it")
    if report is not None and report != STDIO and os.path.isdir(report):
        raise UserError(f"{report}: is a folder; --report writes a JSON file")
    if output is not None and os.path.isfile(output):
        raise UserError(f"{output}: is a file; -o writes a model folder")
    if output == STDIO:
        raise UserError("-o writes a model folder, not stdout")
    if plots is not None:
        check_folder(plots, PLOT_FILES, overwrite, "--plots")


def write_outputs(result: Result, outputs: dict[str, str | None], overwrite: bool,
                  quiet: bool) -> None:
    """The table on stderr, then the model directory, the report and the figures."""
    from xptools.calibrate import plots as drawing

    plots, report, output = outputs.get("plots"), outputs.get("report"), outputs.get("output")
    figures = {}
    if plots is not None or output is not None:
        r = result.report
        model = os.path.basename(os.path.normpath(r["model"]["path"])) if r["model"]["path"] \
            else "model?"
        figures = drawing.figures(result, f"{os.path.basename(r['labeled']['file'])} "
                                          f"({model}) against "
                                          f"{os.path.basename(r['reference']['file'])}")
    if not quiet:
        print(summary_text(result), file=sys.stderr)
    if output is not None:
        write_model(result, output, figures, overwrite)
    if report is not None:
        write_file(report, report_json(result), overwrite)
    if plots is not None:
        os.makedirs(plots, exist_ok=True)
        for name, data in figures.items():
            write_file(os.path.join(plots, name), data, overwrite)
    if not quiet:
        written = [f"{output} (model)" if output else None, report if report not in (None, STDIO)
                   else None, f"{len(figures)} figures in {plots}" if plots else None]
        written = [w for w in written if w]
        if written:
            print(f"\nwritten: {', '.join(written)}", file=sys.stderr)


def write_model(result: Result, path: str, figures: dict[str, bytes], overwrite: bool) -> None:
    """The calibrated model directory: the model (the same weights, checked by checksum),
    config.json with the calibration, calibration.json, the figures, the card with a
    calibration section, and the source directory's other files."""
    from xptools import models

    source = result.model.path
    model = models.load(source)
    if model.checksum != result.model.checksum:
        raise UserError(f"{source}: its weights changed while calibrate ran")
    model.calibration = result.calibration
    card_file = os.path.join(source, models.CARD)
    card = open(card_file).read() if os.path.isfile(card_file) else f"# {model.kind} model\n"
    card = replace_section(card, card_section(result, sorted(figures)))
    extra: dict[str, str | bytes] = dict(models.other_files(source,
                                                             {CALIBRATION_FILE, *PLOT_FILES}))
    extra[CALIBRATION_FILE] = report_json(result)
    extra.update(figures)
    models.save(model, path, card, overwrite=overwrite, extra_files=extra,
                checksum=result.model.checksum)
