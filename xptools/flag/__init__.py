"""`xptools flag`: for every star, whether its XP spectrum is usable and whether the models
have seen stars like it (see docs/flag.md).

Per chunk:

1. the out-of-distribution detectors of the model directory (`xptools.ood`) on the model's
   embedding of the row: ``ood_mahalanobis`` and the percentiles ``ood_mahalanobis_pct``,
   ``ood_iforest_pct``, ``ood_gmm_pct`` against the model's held-out reference stars;
2. the svae reconstruction of `xptools generate --reconstruct` (`xptools.generate.reconstruction`,
   called, not copied): ``recon_chi2`` and ``recon_chi2_pct``, the outlier percentile of
   generate's ``outlier_percentile`` among the svae's training stars;
3. the input's quality: usable, partial or missing XP, whether the spectrum holds the light
   of the BP and RP magnitudes (``xp_phot_z``, ``xp_phot_pct``:
   `xptools.ood.PhotometricConsistency`), the BP/RP flux excess (the models' own input
   flags), and the archive's quality columns when present (ruwe,
   bp/rp_n_relevant_bases, bp/rp_n_transits, phot_g_n_obs), and ``--quality EXPR``;
4. the labels `xptools infer` added, when present: outside the training labels' 1st..99th
   percentile, or an error above ``--sigma-max``.

They make one int32 bitmask ``xp_flag`` (`xptools.flags`, listed by ``xptools flag --help``),
its bits ordered by severity: ``xp_flag < 64`` keeps the stars of basic reliability and
``xp_flag == 0`` the strict sample. Input columns pass through; rows are never dropped or
reordered; a row that cannot be scored gets NaN scores and a bit, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from xptools import flags as bits
from xptools import models
from xptools.errors import UserError
from xptools.flags import FLAG_FLUX_EXCESS, FLAG_G_FROM_XP, description
from xptools.io import InputTable, TableWriter
from xptools.models.features import XPSource, float_column
from xptools.progress import progress
from xptools.provenance import stamp
from xptools.where import RowFilter
from xptools.xp import usable_flux

DEFAULT_CUTS = {"mahalanobis": 99.5, "iforest": 2.5, "gmm": 0.5, "recon": 99.0, "phot": 99.5}
# the percentile columns on which a low value is unusual (the rest: a high value)
LOW_IS_UNUSUAL = ("iforest", "gmm")
DEFAULT_SIGMA_MAX = {"teff": 150.0, "logg": 0.2, "fe_h": 0.1}
COLUMNS = ("ood_mahalanobis", "ood_mahalanobis_pct", "ood_iforest_pct", "ood_gmm_pct",
           "recon_chi2", "recon_chi2_pct", "xp_phot_z", "xp_phot_pct", "xp_flag")
OOD_BIT = {"mahalanobis": bits.XP_OOD_MAHALANOBIS, "iforest": bits.XP_OOD_IFOREST,
           "gmm": bits.XP_OOD_GMM}


def parse_assignments(text: str | None, option: str, known: tuple[str, ...] | None,
                      defaults: dict[str, float]) -> dict[str, float]:
    """'a=1,b=2' over ``defaults`` (names limited to ``known`` when given)."""
    out = dict(defaults)
    if text is None:
        return out
    for part in (p.strip() for p in text.split(",")):
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UserError(f"{option} {text!r}: expected NAME=VALUE pairs separated by commas")
        if known is not None and name not in known:
            raise UserError(f"{option} {text!r}: unknown name {name!r} (known: "
                            f"{', '.join(known)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"{option} {text!r}: {value.strip()!r} is not a number") from None
    return out


@dataclass
class FlagOptions:
    cuts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CUTS))
    sigma_max: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SIGMA_MAX))
    sigma_named: tuple[str, ...] = ()         # labels --sigma-max named: they must exist
    quality: RowFilter | None = None
    prefix: str | None = None                # of the new columns
    infer_prefix: str | None = None          # of the label columns infer added

    @classmethod
    def parse(cls, cuts: str | None, sigma_max: str | None, quality: str | None,
              **rest) -> "FlagOptions":
        parsed = parse_assignments(cuts, "--cuts", tuple(DEFAULT_CUTS), DEFAULT_CUTS)
        for name, value in parsed.items():
            if not 0 <= value <= 100:
                raise UserError(f"--cuts {cuts!r}: {name}={value:g} is not a percentile "
                                f"(0..100)")
        sigma = parse_assignments(sigma_max, "--sigma-max", None, DEFAULT_SIGMA_MAX)
        named = tuple(parse_assignments(sigma_max, "--sigma-max", None, {}))
        return cls(parsed, sigma, named,
                   RowFilter(quality, "--quality") if quality else None, **rest)


class Labels:
    """The label columns of `xptools infer` in the input (with --infer-prefix), and what is
    checked of them."""

    def __init__(self, schema, name: str, detectors, options: FlagOptions):
        p = models.column_names(options.infer_prefix, [""])[""]
        # infer's columns, known by its infer_flag beside them (a table's own teff is not)
        ours = p + "infer_flag" in schema
        self.value = {l: p + l for l in detectors.label_range if ours and p + l in schema}
        self.error = {l: p + l + "_error" for l in options.sigma_max
                      if ours and p + l + "_error" in schema}
        self.range = detectors.label_range
        self.sigma_max = options.sigma_max
        if options.sigma_named:
            missing = [l for l in options.sigma_named if l not in self.error]
            if missing:
                raise UserError(f"{name}: no column {p + missing[0] + '_error'!r} (with "
                                f"{p + 'infer_flag'!r}) for --sigma-max (give --infer-prefix if "
                                f"infer's columns have one)")
        self.kiel = (p + "teff", p + "logg") \
            if ours and {p + "teff", p + "logg"} <= set(schema.colnames) else None

    def flags(self, chunk) -> np.ndarray:
        n = len(chunk)
        out = np.zeros(n, np.int32)
        with np.errstate(invalid="ignore"):
            for label, column in self.value.items():
                lo, hi = self.range[label]
                v = float_column(chunk, column, n)
                out |= np.where((v < lo) | (v > hi), bits.XP_LABEL_EDGE, 0).astype(np.int32)
            for label, column in self.error.items():
                e = float_column(chunk, column, n)
                out |= np.where(e > self.sigma_max[label], bits.XP_LABEL_ERROR, 0).astype(np.int32)
        return out


def archive_flags(chunk) -> np.ndarray:
    """The bits from the Gaia archive's quality columns the chunk has (an unknown value
    sets none)."""
    n = len(chunk)
    out = np.zeros(n, np.int32)

    def below(column, limit, inclusive=False):
        v = float_column(chunk, column, n)
        with np.errstate(invalid="ignore"):
            return (v <= limit) if inclusive else (v < limit)

    with np.errstate(invalid="ignore"):
        out |= np.where(float_column(chunk, "ruwe", n) > bits.RUWE_LIMIT, bits.XP_RUWE, 0) \
            .astype(np.int32)
    few = (below("bp_n_transits", bits.TRANSITS_LIMIT, True)
           | below("rp_n_transits", bits.TRANSITS_LIMIT, True)
           | below("phot_g_n_obs", bits.G_OBS_LIMIT))
    out |= np.where(few, bits.XP_FEW_OBSERVATIONS, 0).astype(np.int32)
    bases = (below("bp_n_relevant_bases", bits.BASES_LIMIT)
             | below("rp_n_relevant_bases", bits.BASES_LIMIT))
    out |= np.where(bases, bits.XP_FEW_BASES, 0).astype(np.int32)
    return out


def input_flags(xp: np.ndarray, sampled: bool, model_flags: np.ndarray) -> np.ndarray:
    """xp_flag's bits of the spectrum itself (``xp``: the model's flux samples, or
    coefficients when not ``sampled``): missing (no finite value, or no usable flux by
    `xptools.xp.usable_flux`) or partial (some values missing: a band, NaN samples), and the
    BP/RP flux excess of the model features' input flags. A negative sample is not missing:
    noise in the faint ends of BP and RP."""
    finite = np.isfinite(xp)
    seen = finite.any(axis=1)
    missing = ~seen | (~usable_flux(xp) if sampled else False)
    partial = ~missing & ~finite.all(axis=1)
    out = np.where(missing, bits.XP_NO_XP, 0) | np.where(partial, bits.XP_PARTIAL, 0)
    out |= np.where(model_flags & FLAG_FLUX_EXCESS, bits.XP_FLUX_EXCESS, 0)
    return out.astype(np.int32)


def score_flags(scores: dict[str, np.ndarray], cuts: dict[str, float], reconstructs: bool,
                g_from_xp: np.ndarray) -> np.ndarray:
    """The detector, reconstruction and photometric bits, and 'not scored' where a detector
    or (when the table ``reconstructs``) the reconstruction percentile is NaN. A row whose G
    came from its own spectrum (no phot_g_mean_mag) gets no reconstruction bit: the svae
    normalises by G, and that estimate alone inflates the chi2 of bright stars."""
    n = len(scores["recon_pct"])
    out = np.zeros(n, np.int32)
    with np.errstate(invalid="ignore"):
        for name, bit in OOD_BIT.items():
            pct = scores[name + "_pct"]
            unusual = pct < cuts[name] if name in LOW_IS_UNUSUAL else pct > cuts[name]
            out |= np.where(unusual, bit, 0).astype(np.int32)
        out |= np.where((scores["recon_pct"] > cuts["recon"]) & ~g_from_xp,
                        bits.XP_RECONSTRUCTION, 0).astype(np.int32)
        out |= np.where(scores["phot_pct"] > cuts["phot"], bits.XP_PHOTOMETRY, 0) \
            .astype(np.int32)
    unscored = np.zeros(n, bool)
    for name in ("mahalanobis_pct", "iforest_pct", "gmm_pct") + (("recon_pct",) if reconstructs
                                                                  else ()):
        unscored |= np.isnan(scores[name])
    return out | np.where(unscored, bits.XP_NOT_SCORED, 0).astype(np.int32)


def load_models(model_path: str | None, svae_path: str | None):
    """The model whose detectors score the rows and the svae that reconstructs them."""
    model = models.load(model_path or models.default_path("flag"))
    if not hasattr(model, "EMBEDDINGS"):
        raise UserError(f"{model.path}: a {model.kind} model has no embedding for the "
                        f"detectors (use an msa model; a forward model's own chi2 and prior "
                        f"flags come with xptools infer)")
    if getattr(model, "detectors", None) is None:
        raise UserError(f"{model.path}: the model has no out-of-distribution detectors (models "
                        f"trained by xptools train carry them; recipes/fit_detectors.py adds "
                        f"them to an older model)")
    if svae_path is None and model.kind == "svae":
        return model, model
    svae = models.load(svae_path or models.default_path("generate"))
    if svae.kind != "svae":
        raise UserError(f"{svae.path}: --svae needs an svae model, not {svae.kind}")
    return model, svae


class Flagger:
    """The flag columns of one chunk after another of a table with schema ``schema``."""

    def __init__(self, schema, name: str, model, svae, options: FlagOptions):
        self.model, self.svae, self.options = model, svae, options
        self.detectors = model.detectors
        self.names = models.column_names(options.prefix, list(COLUMNS))
        models.check_clash(schema, self.names.values(), name)
        if options.quality is not None:
            options.quality.check(schema, name)
        self.source = XPSource(schema, name, model.features)
        self.recon_source = XPSource(schema, name, svae.features, with_errors=True)
        # a sampled table without flux_error has no chi2: the reconstruction is left out
        # (NaN, no bits), not counted as a failure of every row
        self.reconstructs = not (self.recon_source.kind == "sampled"
                                 and "flux_error" not in schema)
        # both models on one grid (the shipped ones): the spectrum is read, or coefficients
        # sampled, once for both
        self.one_grid = (self.reconstructs
                         and model.features.xp == svae.features.xp == "sampled"
                         and list(model.features.wavelengths) == list(svae.features.wavelengths))
        self.labels = Labels(schema, name, self.detectors, options)
        # the models flag used, under keywords of their own (infer's XPTMODEL stays)
        self.keywords = {"XPTFMOD": models.keywords(model)["XPTMODEL"],
                         "XPTFSUM": models.keywords(model)["XPTMSUM"],
                         "XPTSVAE": models.keywords(svae)["XPTMODEL"]}

    def scores(self, chunk) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every score of the chunk's rows (the detectors' raw scores and percentiles,
        recon_chi2 and recon_pct, phot_z and phot_pct) and xp_flag."""
        from xptools.generate import reconstruction

        n = len(chunk)
        if self.reconstructs:
            recon_xp, recon_error = self.recon_source(chunk)
        xp = recon_xp if self.one_grid else self.source(chunk)[0]
        e, model_flags = self.model.embedding(chunk, xp, self.detectors.embedding)
        sampled = self.model.features.xp == "sampled"
        flag = (input_flags(xp, sampled, model_flags) | archive_flags(chunk)
                | self.labels.flags(chunk))
        e[flag & bits.XP_NO_XP != 0] = np.nan      # scores of photometry alone are no scores
        scores = self.detectors.scores(e, xp if sampled else None, chunk)
        scores["phot_z"] = scores.pop("photometry", np.full(n, np.nan))
        scores["phot_pct"] = scores.pop("photometry_pct", np.full(n, np.nan))
        scores["recon_chi2"], scores["recon_pct"] = np.full(n, np.nan), np.full(n, np.nan)
        g_from_xp = np.zeros(n, bool)
        if self.reconstructs:
            rec = reconstruction(self.svae, chunk, recon_xp, recon_error)
            scores["recon_chi2"], scores["recon_pct"] = rec["chi2"], rec["outlier_percentile"]
            g_from_xp = rec["flags"] & FLAG_G_FROM_XP != 0
        flag |= score_flags(scores, self.options.cuts, self.reconstructs, g_from_xp)
        if self.options.quality is not None:
            flag |= np.where(self.options.quality(chunk), 0, bits.XP_QUALITY).astype(np.int32)
        return scores, flag

    def table(self, chunk, scores: dict[str, np.ndarray], flag: np.ndarray):
        """The chunk with the flag columns added."""
        table = stamp(chunk.select(chunk.colnames), self.keywords)
        embedding = f"{self.model.kind} {self.detectors.embedding} embedding"
        for column, score, text in (
                ("ood_mahalanobis", "mahalanobis", f"Mahalanobis distance of the {embedding} "
                 f"from the training stars' mean"),
                ("ood_mahalanobis_pct", "mahalanobis_pct", "percentage of reference stars with "
                 "a smaller Mahalanobis distance (high = unusual)"),
                ("ood_iforest_pct", "iforest_pct", "percentage of reference stars with a lower "
                 "Isolation Forest normality score (low = unusual)"),
                ("ood_gmm_pct", "gmm_pct", "percentage of reference stars with a lower "
                 "Gaussian-mixture log-likelihood (low = unusual)"),
                ("recon_chi2", "recon_chi2", "svae reconstruction: mean over samples of "
                 "(x - x_hat)^2 / (sigma^2 + s_hat^2)"),
                ("recon_chi2_pct", "recon_pct", "svae outlier score's percentile among its "
                 "training stars (high = unusual; xptools generate --help)"),
                ("xp_phot_z", "phot_z", "the larger |z| of the XP flux against the BP and RP "
                 "magnitudes, in the training stars' robust spread (NaN without them)"),
                ("xp_phot_pct", "phot_pct", "percentage of reference stars with a smaller "
                 "xp_phot_z (high = unusual)")):
            table.add_column(self.names[column], np.asarray(scores[score], np.float32),
                             description=text)
        table.add_column(self.names["xp_flag"], flag.astype(np.int32),
                         description=description("flag"))
        return table


def prepare(model: str | None = None, svae: str | None = None, cuts: str | None = None,
            sigma_max: str | None = None, quality: str | None = None, prefix: str | None = None,
            infer_prefix: str | None = None, chunk_rows: int = 20_000):
    """`xptools flag` as a job (`xptools.scale`): options parsed and models loaded once, then
    ``run(src, out, quiet, warn)`` per table."""
    options = FlagOptions.parse(cuts, sigma_max, quality, prefix=prefix,
                                infer_prefix=infer_prefix)
    loaded, recon = load_models(model, svae)

    def run(src, out, quiet, warn) -> dict:
        return run_flag(src, out, loaded, recon, options, chunk_rows=chunk_rows, quiet=quiet,
                        warn=warn)
    run.models = [models.identity(m) for m in (loaded, recon)]   # the same, to resume
    return run


def run_flag(src: InputTable, out: TableWriter, model, svae, options: FlagOptions, *,
             chunk_rows: int = 20_000, quiet: bool = False, warn=None) -> dict:
    from xptools.flag.plots import Accumulator
    from xptools.progress import print_warning

    warn = warn or ((lambda m: None) if quiet else print_warning)
    flagger = Flagger(src.schema, src.name, model, svae, options)
    if not flagger.reconstructs:
        warn(f"{src.name}: no flux_error column: no svae reconstruction (recon_chi2 "
                      f"and recon_chi2_pct are NaN, bit 256 is never set)")
    kiel = flagger.labels.kiel
    summary = Accumulator(kiel is not None, options.cuts)
    counts = {"rows": 0, "unscored": 0, "basic": 0, "strict": 0,
              "labels": sorted(flagger.labels.value), "summary": summary}
    with progress(src.nrows, "flag", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            scores, flag = flagger.scores(chunk)
            out.write(flagger.table(chunk, scores, flag))
            summary.add(scores, flag, *(float_column(chunk, c, len(chunk)) for c in kiel or ()))
            counts["rows"] += len(chunk)
            counts["unscored"] += int(np.count_nonzero(flag & bits.XP_NOT_SCORED))
            counts["basic"] += int(np.count_nonzero(flag < bits.XP_BASIC_CUT))
            counts["strict"] += int(np.count_nonzero(flag == 0))
            bar.update(len(chunk))
    return counts


def write_plots(folder: str, summary, title: str, overwrite: bool) -> list[str]:
    """The --plots PNGs; returns their names."""
    from xptools.flag import plots as drawing
    from xptools.io.atomic import write_file

    figures = drawing.figures(summary, title)
    os.makedirs(folder, exist_ok=True)
    for name, data in figures.items():
        write_file(os.path.join(folder, name), data, overwrite)
    for name in set(drawing.FILES) - set(figures):   # an earlier run's, not this one's
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    return sorted(figures)
