"""`xptools infer`: stellar labels with uncertainties for every row of a table.

For each label the output gains ``<label>``, ``<label>_error``, ``<label>_q16`` and
``<label>_q84``, and one ``infer_flag`` bitmask per row (its bits: `xptools.flags`, listed by
``xptools infer --help``). A model directory with a calibration (`xptools calibrate -o`) has
it applied to the model's outputs (`xptools.calibrate.calibration`), recorded in the header
(XPTCALIB, XPTCFIT).

All input columns pass through.
"""

from __future__ import annotations

import numpy as np

from xptools import models
from xptools.io import InputTable, TableWriter
from xptools.flags import FLAG_UNUSABLE, description
from xptools.models.features import XPSource
from xptools.progress import progress
from xptools.provenance import stamp
from xptools.xp import detect_layout

# Units of the labels. Logarithmic labels are in dex, which FITS and VOUnit have no unit for
# (astropy warns on reading "dex" from FITS and VOTable), so their unit is left empty and their
# description says "in dex".
UNITS = {"teff": "K"}
IN_DEX = ("logg", "fe_h", "alpha_m", "m_h")
# the four columns of a label: quantiles (msa), a Gaussian predictive distribution (transformer)
WHAT = {False: ("median", "1-sigma error", "16% quantile", "84% quantile"),
        True: ("predicted mean", "predictive sigma", "mean - sigma", "mean + sigma")}


def output_names(labels: list[str], prefix: str | None) -> tuple[dict[str, list[str]], str]:
    names = models.column_names(prefix, [f"{l}{s}" for l in labels
                                         for s in ("", "_error", "_q16", "_q84")]
                                + ["infer_flag"])
    columns = {l: [names[f"{l}{s}"] for s in ("", "_error", "_q16", "_q84")] for l in labels}
    return columns, names["infer_flag"]


def prepare(model: str | None = None, prefix: str | None = None, chunk_rows: int = 20_000,
            covariance: bool = False, request: str | None = None, given: str | None = None,
            hide: str | None = None, draws: int | None = None):
    """`xptools infer` as a job (`xptools.scale`): the model loaded once, then
    ``run(src, out, quiet, warn)`` per table. ``request``, ``given``, ``hide`` and ``draws``
    are a transformer model's (`TransformerModel.predict_chunk`)."""
    from xptools.errors import UserError
    from xptools.models.transformer import DRAWS

    loaded = models.load(model or models.default_path("infer"))
    fits = hasattr(loaded, "fit_stars")
    tokens = hasattr(loaded, "predict_chunk")
    if not (hasattr(loaded, "predict") or fits or tokens):
        raise UserError(f"{model}: a {loaded.kind} model does not predict labels")
    if covariance and not fits:
        raise UserError(f"--covariance is for forward models (per-star fits), not "
                        f"{loaded.kind}")
    ask = None
    if tokens:
        requests = loaded.request_types(request)
        loaded.given_mask(np.zeros((0, len(loaded.vocabulary)), bool), requests, given, hide)
        draws = DRAWS if draws is None else draws
        if draws < 1:
            raise UserError(f"--draws {draws}: give at least 1")
        ask = {"requests": requests, "given": given, "hide": hide, "draws": draws}
    elif request or given or hide or draws is not None:
        raise UserError(f"--request, --given, --hide and --draws are for transformer models, "
                        f"not {loaded.kind}")

    def run(src, out, quiet, warn) -> dict:
        if fits:
            return run_fits(src, out, loaded, prefix=prefix, chunk_rows=chunk_rows,
                            covariance=covariance, quiet=quiet)
        return run_infer(src, out, loaded, prefix=prefix, chunk_rows=chunk_rows, quiet=quiet,
                         ask=ask)
    run.models = [models.identity(loaded)]   # a resumed catalogue needs the same model
    return run


def run_infer(src: InputTable, out: TableWriter, model, *, prefix: str | None = None,
              chunk_rows: int = 20_000, quiet: bool = False, ask: dict | None = None) -> dict:
    """Labels of a model that predicts them (msa), or, with ``ask``, the requested tokens of a
    transformer model (`TransformerModel.predict_chunk`'s options)."""
    names = (model.labels if ask is None
             else [model.vocabulary.names[t] for t in ask["requests"]])
    columns, flag_name = output_names(names, prefix)
    models.check_clash(src.schema, [c for names in columns.values() for c in names]
                       + [flag_name], src.name)
    # a transformer answers from any tokens: a table of labels alone will do
    source = (None if ask is not None and detect_layout(src.schema) is None
              else XPSource(src.schema, src.name, model.features))
    keywords = models.keywords(model)
    calibration = getattr(model, "calibration", None)
    if ask is not None and (ask["given"] or ask["hide"]):
        calibration = None   # fitted on the default inputs' answers, not on other inputs'
    how = f"{model.kind}, calibrated" if calibration is not None else model.kind
    counts = {"rows": 0, "unusable": 0, "flagged": 0}
    with progress(src.nrows, "infer", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            if ask is None:
                xp, _ = source(chunk)
                values, _, observed, flags = model.features.raw(chunk, xp, None)
                pred = model.predict(model.features.scale(values), observed,
                                     advance=bar.update)
                flags = flags | pred["flag"]
            else:
                pred = model.predict_chunk(chunk, source, **ask, advance=bar.update)
                flags = pred["flag"]
            if calibration is not None:
                flags = flags | calibration.apply_predictions(pred)
            table = stamp(chunk.select(chunk.colnames), keywords)
            for label, names in columns.items():
                unit = UNITS.get(label)
                if ask is not None and label in model.vocabulary.colours:
                    unit = "mag"   # a colour: magnitude - G
                dex = ", in dex" if label in IN_DEX else ""
                for name, data, what in zip(names, pred[label], WHAT[ask is not None]):
                    table.add_column(name, data.astype(np.float32), unit=unit,
                                     description=f"{label} {what}{dex} ({how})")
            table.add_column(flag_name, flags.astype(np.int16),
                             description=description("infer"))
            out.write(table)
            counts["rows"] += len(chunk)
            counts["unusable"] += int(np.count_nonzero(pred["flag"] & FLAG_UNUSABLE))
            counts["flagged"] += int(np.count_nonzero(flags))
    return counts


FIT_UNITS = {"teff": "K", "parallax": "mas", "ext": "mag", "ebv": "mag"}
FIT_WHAT = {"ext": "E, extinction on the scale of the model's prior", "ebv": "E(B-V) = ext x "
            "1.0857 (R(442 nm) - R(552 nm)) with the learned curve", "parallax": "parallax"}


def run_fits(src: InputTable, out: TableWriter, model, *, prefix: str | None = None,
             chunk_rows: int = 20_000, covariance: bool = False, quiet: bool = False) -> dict:
    """Per-star fits of a forward model (`xptools.models.forward`): labels, ext, ebv (and
    parallax) with Fisher errors, chi2, dof, ln_prior (and the covariance), and infer_flag."""
    fitted = model.labels + ["ext", "ebv"] + (["parallax"] if model.absolute else [])
    columns, flag_name = output_names(fitted, prefix)
    extra = models.column_names(prefix, ["chi2", "dof", "ln_prior", "covariance"])
    if not covariance:
        extra.pop("covariance")
    models.check_clash(src.schema, [c for names in columns.values() for c in names]
                       + list(extra.values()) + [flag_name], src.name)
    source = XPSource(src.schema, src.name, model.features, with_errors=True)
    keywords = models.keywords(model)
    counts = {"rows": 0, "unusable": 0, "flagged": 0}
    with progress(src.nrows, "infer", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            fit = model.fit_stars(chunk, src.name, source, advance=bar.update)
            table = stamp(chunk.select(chunk.colnames), keywords)
            for label, names in columns.items():
                value, error = fit["values"][label], fit["errors"][label]
                what = FIT_WHAT.get(label, label) + (", in dex" if label in IN_DEX else "")
                for name, data, kind in zip(names, (value, error, value - error,
                                                    value + error),
                                            ("best fit", "1-sigma error (Fisher)",
                                             "best fit - error", "best fit + error")):
                    table.add_column(name, data.astype(np.float32), unit=FIT_UNITS.get(label),
                                     description=f"{what} {kind} (forward model)")
            table.add_column(extra["chi2"], fit["chi2"].astype(np.float32),
                             description="chi2 of the best fit (full covariance)")
            table.add_column(extra["dof"], fit["dof"].astype(np.int16),
                             description="degrees of freedom: data points - parameters")
            table.add_column(extra["ln_prior"], fit["ln_prior"].astype(np.float32),
                             description="ln of the label prior (GMM) at the best fit, "
                                         "labels in K, dex, dex")
            if covariance:
                table.add_column(extra["covariance"], fit["covariance"].astype(np.float32),
                                 description="covariance of " + ", ".join(
                                     model.labels + ["ext"] + fitted[5:]) + " (Fisher)")
            table.add_column(flag_name, fit["flags"].astype(np.int16),
                             description=description("infer"))
            out.write(table)
            counts["rows"] += len(chunk)
            counts["unusable"] += int(np.count_nonzero(fit["flags"] & FLAG_UNUSABLE))
            counts["flagged"] += int(np.count_nonzero(fit["flags"]))
    return counts
