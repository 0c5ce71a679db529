"""`xptools generate`: XP spectra decoded from scatter-VAE latents, and reconstructions of
observed spectra with a per-star outlier score.

Output is the sampled layout on the model's wavelength grid (header WAVEMIN, WAVEMAX,
WAVESTEP): ``flux``, the decoded spectrum, and ``flux_scatter``, the decoded intrinsic scatter,
both in W m-2 nm-1. The model works on flux / G-band flux, so the decoded spectrum is that of a
star of G = phot_g_mean_mag where the input has that column (with --reconstruct, the G the
spectrum was normalised with), else of a star of G = 0.

- From latents: a table with a ``z`` column (e.g. from `xptools embed`), or a grid given with
  ``--z``.
- ``--reconstruct``: each spectrum is encoded (z = mu) and decoded; the output adds ``z``,
  ``z_error``, ``chi2`` (the mean over features of (x - x_hat)^2 / (sigma^2 + s_hat^2)) and
  ``outlier_percentile`` (how atypical the star is among the model's training stars, from
  its excess chi2~ and its worst sample: `ScatterVAE.outlier_percentile`).

The input's sampled spectra (``flux``, ``flux_error``, ``wavelength``) are replaced, since a
table holds spectra on one grid, and so are its ``z`` and ``z_error`` with --reconstruct (what
`xptools embed` adds: the reconstruction encodes the spectrum again); every other input column
passes through. ``generate_flag`` has the bits of `xptools embed`, plus 128 with --reconstruct:
flux errors missing or not positive, so chi2 and outlier_percentile are NaN (`xptools.flags`,
listed by ``xptools generate --help``).
"""

from __future__ import annotations

import itertools

import numpy as np

from xptools import models
from xptools.errors import UserError
from xptools.io import InputTable, Table, TableWriter
from xptools.flags import FLAG_NO_ERRORS, FLAG_UNUSABLE, description
from xptools.models.features import XPSource
from xptools.progress import progress
from xptools.provenance import stamp
from xptools.sampling import parse_grid
from xptools.xp import detect_layout, grid_keywords

REPLACED = ("flux", "flux_error", "flux_covariance", "wavelength")
GRID_KEYWORDS = ("WAVEMIN", "WAVEMAX", "WAVESTEP", "WAVEGRID")
MAX_GRID_ROWS = 1_000_000
UNIT = "W m-2 nm-1"


def latent_grid(text: str, latent: int) -> np.ndarray:
    """Rows of z from '--z': one comma-separated entry per latent dimension, each a number
    or START:STOP:STEP (STOP included); the rows are every combination."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != latent:
        raise UserError(f"--z {text!r}: give {latent} comma-separated entries, one per latent "
                        f"dimension (a number or START:STOP:STEP)")
    axes = []
    for part in parts:
        if ":" in part:
            axes.append(parse_grid(part))
            continue
        try:
            axes.append(np.array([float(part)]))
        except ValueError:
            raise UserError(f"--z {text!r}: {part!r} is not a number or START:STOP:STEP") from None
    rows = int(np.prod([len(a) for a in axes]))
    if rows > MAX_GRID_ROWS:
        raise UserError(f"--z {text!r} makes {rows:,} spectra (at most {MAX_GRID_ROWS:,}); use "
                        f"coarser steps or a table of z")
    return np.array(list(itertools.product(*axes)), dtype=np.float32)


def _spectra(model, chunk: Table, z: np.ndarray, g: np.ndarray | None = None):
    """Decoded flux and scatter (n, F) in W m-2 nm-1 for rows with finite z (NaN elsewhere)."""
    n, n_xp = len(z), model.features.n_xp
    flux = np.full((n, n_xp), np.nan)
    scatter = np.full((n, n_xp), np.nan)
    ok = np.isfinite(z).all(axis=1)
    if ok.any():
        x_hat, s_hat = model.decode(z[ok])
        values, spread = model.features.unscale(x_hat, s_hat)
        if g is None:  # the table's G; there is no spectrum to estimate it from
            g, _ = model.features.g_magnitude(chunk, np.full((n, n_xp), np.nan))
        g = np.where(np.isfinite(g), g, 0.0)[ok, None]
        flux[ok] = values * 10.0 ** (-0.4 * g)        # undo the G-band normalisation
        scatter[ok] = spread * 10.0 ** (-0.4 * g)
    return flux, scatter


def _layout(wavelengths, chunk: Table, keywords: dict,
            replaced: tuple[str, ...] = ()) -> Table:
    """The chunk without its sampled spectra (and the ``replaced`` columns), stamped with the
    keywords of the model's grid ``wavelengths``."""
    table = chunk.select([c for c in chunk.colnames if c not in REPLACED + replaced])
    for key in GRID_KEYWORDS:
        table.meta.pop(key, None)
    return stamp(table, {"XPKIND": "sampled", **grid_keywords(np.asarray(wavelengths)),
                         **keywords})


def _add_spectra(table: Table, flux: np.ndarray, scatter: np.ndarray, what: str) -> None:
    table.add_column("flux", flux.astype(np.float32), unit=UNIT,
                     description=f"{what} spectrum (scatter VAE)")
    table.add_column("flux_scatter", scatter.astype(np.float32), unit=UNIT,
                     description=f"{what} intrinsic scatter (scatter VAE)")


def _check_latents(model, name: str, z_column: str, schema: Table) -> None:
    if z_column not in schema:
        raise UserError(f"{name}: no column {z_column!r} of latents (give --z-column, or --z "
                        f"for a grid, or --reconstruct for spectra)")
    shape = schema[z_column].shape[1:]
    if shape != (model.latent,):
        raise UserError(f"{name}: column {z_column!r} has {'x'.join(map(str, shape)) or 1} "
                        f"values per row, the model's latent space {model.latent}")


def run_generate(src: InputTable | None, out: TableWriter, model, *, grid: np.ndarray | None,
                 z_column: str = "z", prefix: str | None = None, chunk_rows: int = 20_000,
                 quiet: bool = False) -> dict:
    """Spectra from the latents of a table (column ``z_column``) or of ``grid`` rows."""
    names = models.column_names(prefix, ["generate_flag"])
    keywords = models.keywords(model)
    if src is None:
        table = Table()
        table.add_column("z", grid, description="latent coordinates")
        chunks, total = [table], len(grid)
    else:
        _check_latents(model, src.name, z_column, src.schema)
        models.check_clash(src.schema, [names["generate_flag"], "flux_scatter"], src.name)
        chunks, total = src.chunks(chunk_rows, read_ahead=True), src.nrows
    counts = {"rows": 0, "unusable": 0}
    with progress(total, "generate", quiet) as bar:
        for chunk in chunks:
            z = np.asarray(chunk[z_column if src is not None else "z"], np.float32)
            flux, scatter = _spectra(model, chunk, z)
            flags = np.where(np.isfinite(z).all(axis=1), 0, FLAG_UNUSABLE)
            table = _layout(model.wavelengths, chunk, keywords)
            _add_spectra(table, flux, scatter, "decoded")
            table.add_column(names["generate_flag"], flags.astype(np.int16),
                             description=description("generate"))
            out.write(table)
            counts["rows"] += len(chunk)
            counts["unusable"] += int(np.count_nonzero(flags))
            bar.update(len(chunk))
    return counts


def prepare(model: str | None = None, reconstruct: bool = False, z_column: str = "z",
            prefix: str | None = None, chunk_rows: int = 20_000, request: str | None = None,
            given: str | None = None, hide: str | None = None, draws: int | None = None,
            inpaint: bool = False):
    """`xptools generate` over a table (of latents, or of spectra with ``reconstruct``; of
    labels for a forward model; of any tokens for a transformer model, which ``request``,
    ``given``, ``hide``, ``draws`` and ``inpaint`` are for) as a job (`xptools.scale`): the
    model loaded once, then ``run(src, out, quiet, warn)``."""
    if model is not None and models.read_config(model)["kind"] == "transformer":
        if reconstruct:
            raise UserError("--reconstruct is for svae models; a transformer model fills "
                            "spectra with --inpaint --given ... --request ...")
        loaded = models.load(model)
        transformer_requests(loaded, request, inpaint)

        def run(src, out, quiet, warn) -> dict:
            return run_transformer(src, out, loaded, request=request, given=given, hide=hide,
                                   draws=draws, inpaint=inpaint, prefix=prefix,
                                   chunk_rows=chunk_rows, quiet=quiet)
        run.models = [models.identity(loaded)]
        return run
    if request or given or hide or draws is not None or inpaint:
        raise UserError("--request, --given, --hide, --draws and --inpaint are for transformer "
                        "models")
    if model is not None and models.read_config(model)["kind"] == "forward":
        if reconstruct:
            raise UserError("--reconstruct is for svae models; a forward model fits spectra "
                            "with xptools infer")
        loaded = models.load(model)

        def run(src, out, quiet, warn) -> dict:
            return run_forward(src, out, loaded, prefix=prefix, chunk_rows=chunk_rows,
                               quiet=quiet)
        run.models = [models.identity(loaded)]
        return run
    loaded = models.load_latent(model, "generate")

    def run(src, out, quiet, warn) -> dict:
        if reconstruct:
            return run_reconstruct(src, out, loaded, prefix=prefix, chunk_rows=chunk_rows,
                                   quiet=quiet)
        return run_generate(src, out, loaded, grid=None, z_column=z_column, prefix=prefix,
                            chunk_rows=chunk_rows, quiet=quiet)
    run.models = [models.identity(loaded)]   # a resumed catalogue needs the same model
    return run


def run_reconstruct(src: InputTable, out: TableWriter, model, *, prefix: str | None = None,
                    chunk_rows: int = 20_000, quiet: bool = False) -> dict:
    """Encode and decode every spectrum; per-star chi2 and outlier percentile."""
    names = models.column_names(prefix, ["z", "z_error", "chi2", "outlier_percentile",
                                  "generate_flag"])
    encoded = (names["z"], names["z_error"])  # what `embed` adds: replaced, not a clash
    models.check_clash(src.schema, [n for n in names.values() if n not in encoded]
                       + ["flux_scatter"], src.name)
    source = XPSource(src.schema, src.name, model.features, with_errors=True)
    if source.kind == "sampled" and "flux_error" not in src.schema:
        raise UserError(f"{src.name}: no flux_error column (chi2 weighs each sample by its "
                        f"error)")
    keywords = models.keywords(model)
    counts = {"rows": 0, "unusable": 0, "above_p99": 0}
    with progress(src.nrows, "generate", quiet) as bar:
        for chunk in src.chunks(chunk_rows, read_ahead=True):
            n = len(chunk)
            rec = reconstruction(model, chunk, *source(chunk))
            z, z_error, flags = rec["z"], rec["z_error"], rec["flags"]
            chi2, percentile = rec["chi2"], rec["outlier_percentile"]
            flux, scatter = _spectra(model, chunk, z, rec["g"])
            table = _layout(model.wavelengths, chunk, keywords, replaced=encoded)
            _add_spectra(table, flux, scatter, "reconstructed")
            table.add_column(names["z"], z, description="latent coordinates (encoder mean)")
            table.add_column(names["z_error"], z_error, description="latent standard "
                             "deviations (encoder sigma)")
            table.add_column(names["chi2"], chi2.astype(np.float32),
                             description="mean over samples of (x - x_hat)^2 / (sigma^2 + "
                                         "s_hat^2)")
            table.add_column(names["outlier_percentile"], percentile.astype(np.float32),
                             description="outlier score's percentile among the training "
                                         "stars (xptools generate --help)")
            table.add_column(names["generate_flag"], flags.astype(np.int16),
                             description=description("generate"))
            out.write(table)
            counts["rows"] += n
            counts["unusable"] += int(np.count_nonzero(flags & FLAG_UNUSABLE))
            counts["above_p99"] += int(np.count_nonzero(percentile > 99))
            bar.update(n)
    return counts


def reconstruction(model, chunk: Table, xp: np.ndarray,
                   xp_error: np.ndarray | None) -> dict[str, np.ndarray]:
    """Encode and decode one chunk's spectra (``xp``, ``xp_error``: what an XPSource with
    errors gives for the chunk): per row z, z_error, chi2, outlier_percentile (NaN where the
    spectrum is incomplete or has no usable errors), the G magnitude it was normalised with,
    and generate_flag's bits."""
    n = len(chunk)
    x, sigma, usable, flags = model.prepare(chunk, xp, xp_error)
    if sigma is None:  # no flux_error column: a latent, but no chi2
        flags = flags | np.where(usable, FLAG_NO_ERRORS, 0)
    g, _ = model.features.g_magnitude(chunk, xp)
    z = np.full((n, model.latent), np.nan, np.float32)
    z_error = np.full_like(z, np.nan)
    statistics = {name: np.full(n, np.nan) for name in ("chi2", "excess", "worst")}
    if usable.any():
        rec = model.reconstruct(x[usable], None if sigma is None else sigma[usable])
        z[usable], z_error[usable] = rec["z"], rec["z_error"]
        for name, values in statistics.items():
            if name in rec:
                values[usable] = rec[name]
    return {"z": z, "z_error": z_error, "chi2": statistics["chi2"],
            "outlier_percentile": model.outlier_percentile(statistics), "g": g,
            "flags": flags}


# -- forward models (`xptools.models.forward`): spectra from labels and extinction -----------

FORWARD_OUTPUTS = ("j_m", "h_m", "ks_m", "generate_flag")


def label_grid(text: str, model) -> Table:
    """Rows of labels from '--grid': NAME=VALUE or NAME=START:STOP:STEP, comma-separated; the
    rows are every combination. A forward model needs its labels, and takes ext (default 0)
    and, when absolute, parallax (mas, default 1); a transformer model takes any of its labels
    (those not named are not given)."""
    forward = model.kind == "forward"
    names = model.labels + (["ext"] + (["parallax"] if model.absolute else []) if forward
                            else [])
    axes = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals or name not in names:
            raise UserError(f"--grid {text!r}: {part!r} is not NAME=VALUE or "
                            f"NAME=START:STOP:STEP with NAME one of {', '.join(names)}")
        try:
            axes[name] = parse_grid(value) if ":" in value else np.array([float(value)])
        except ValueError:
            raise UserError(f"--grid {text!r}: {value!r} is not a number") from None
    if forward:
        missing = [l for l in model.labels if l not in axes]
    else:   # any of a transformer's labels, at least one
        missing = [] if axes else names
    if missing:
        raise UserError(f"--grid {text!r}: give {missing[0]} (the model's labels: "
                        f"{', '.join(model.labels)})")
    if forward:
        axes.setdefault("ext", np.array([0.0]))
    rows = int(np.prod([len(a) for a in axes.values()]))
    if rows > MAX_GRID_ROWS:
        raise UserError(f"--grid {text!r} makes {rows:,} spectra (at most {MAX_GRID_ROWS:,})")
    values = np.array(list(itertools.product(*axes.values())), dtype=np.float64)
    table = Table()
    for j, name in enumerate(axes):
        table.add_column(name, values[:, j])
    return table


def run_forward(src: InputTable | None, out: TableWriter, model, *, grid: Table | None = None,
                prefix: str | None = None, chunk_rows: int = 20_000,
                quiet: bool = False) -> dict:
    """Spectra of a forward model for the labels (and ext, parallax) of each row: ``flux`` on
    the model's grid and 2MASS J, H, Ks magnitudes. A relative model's spectrum is scaled to
    the row's phot_g_mean_mag (a star of G = 0 without one); an absolute model's is the flux
    at the row's parallax (1 mas without one)."""
    from xptools.models.features import float_column, label_array
    from xptools.models.forward import TWO_MASS, XP_WAVELENGTHS

    names = models.column_names(prefix, list(FORWARD_OUTPUTS))
    keywords = {**models.keywords(model), "XPKIND": "sampled", **grid_keywords(XP_WAVELENGTHS)}
    if src is None:
        chunks, total, name = [grid], len(grid), "--grid"
    else:
        label_array(src.schema, model.labels, src.name)   # the labels are there
        models.check_clash(src.schema, list(names.values()), src.name)
        chunks, total, name = src.chunks(chunk_rows, read_ahead=True), src.nrows, src.name
    n_xp = len(XP_WAVELENGTHS)
    counts = {"rows": 0, "no_labels": 0}
    with progress(total, "generate", quiet) as bar:
        for chunk in chunks:
            n = len(chunk)
            labels = label_array(chunk, model.labels, name)
            ext = float_column(chunk, "ext", n) if "ext" in chunk else np.zeros(n)
            parallax = float_column(chunk, "parallax", n) if "parallax" in chunk else np.ones(n)
            ok = np.isfinite(labels).all(axis=1) & np.isfinite(ext) & (ext >= 0)
            if model.absolute:
                ok &= np.isfinite(parallax) & (parallax > 0)
            spectra = np.full((n, model.n_points), np.nan)
            if ok.any():
                spectra[ok] = model.spectra(labels[ok], ext[ok], parallax[ok])
            if not model.absolute:   # to the row's G (G = 0 without one)
                g = float_column(chunk, "phot_g_mean_mag", n)
                g = np.where(np.isfinite(g), g, 0.0)
                own = model.features.g_from_xp(spectra[:, :n_xp])
                spectra *= 10.0 ** (-0.4 * (g - own))[:, None]
            # the input's spectra are replaced: a table holds spectra on one grid
            table = chunk.select([c for c in chunk.colnames if c not in REPLACED])
            for key in GRID_KEYWORDS:
                table.meta.pop(key, None)
            table = stamp(table, keywords)
            table.add_column("flux", spectra[:, :n_xp].astype(np.float32), unit=UNIT,
                             description="model spectrum (forward model)")
            for j, (band, (_, zero)) in enumerate(TWO_MASS.items()):   # ZGR23 Eq. 5
                with np.errstate(invalid="ignore", divide="ignore"):
                    mag = -2.5 * np.log10(spectra[:, n_xp + j] / zero)
                table.add_column(names[band], mag.astype(np.float32), unit="mag",
                                 description=f"2MASS {band[:-2].upper()} (forward model)")
            flags = np.where(ok, 0, FLAG_UNUSABLE)
            table.add_column(names["generate_flag"], flags.astype(np.int16),
                             description=description("generate"))
            out.write(table)
            counts["rows"] += n
            counts["no_labels"] += int(np.count_nonzero(~ok))
            bar.update(n)
    return counts


def extinction_curve(model) -> Table:
    """The learned extinction curve of a forward model as a table (`forward.curve_table`)."""
    from xptools.models.forward import curve_table

    curve = curve_table(model)
    table = Table()
    table.add_column("wavelength", curve["wavelength"], unit="nm",
                     description="data point wavelength (XP samples, then 2MASS J, H, Ks)")
    table.add_column("r", curve["r"], description="learned R(lambda): f = f_abs exp(-E R)"
                     + ("" if model.absolute else "; its grey part is not identified "
                        "(relative model): only R - R(Ks) means anything"))
    table.add_column("r_normalised", curve["r_normalised"],
                     description="(R - R(Ks)) / (R(442 nm) - R(552 nm))")
    table.add_column("ccm_normalised", curve["ccm_normalised"],
                     description="Cardelli, Clayton & Mathis (1989) R_V = 3.1: "
                                 "(A - A(Ks)) / E(B-V)")
    return stamp(table, models.keywords(model))


# -- transformer models (`xptools.models.transformer`): spectra from any tokens -------------

def transformer_requests(model, request: str | None, inpaint: bool):
    """The flux types a transformer is asked for (--request: xp, bp, rp or flux_ tokens;
    default xp; required with --inpaint)."""
    if inpaint and not request:
        raise UserError("--inpaint needs --request: the part of the spectrum to fill (bp or "
                        "rp, e.g. --given rp --request bp)")
    requests = model.request_types(request or "xp")
    n_flux = len(model.vocabulary.flux)
    if (requests >= n_flux).any():
        raise UserError(f"--request {request!r}: generate makes spectra (xp, bp, rp or flux_ "
                        f"tokens); labels and colours come from xptools infer --request")
    return requests


def run_transformer(src: InputTable | None, out: TableWriter, model, *,
                    grid: Table | None = None, request: str | None = None,
                    given: str | None = None, hide: str | None = None,
                    draws: int | None = None, inpaint: bool = False, prefix: str | None = None,
                    chunk_rows: int = 20_000, quiet: bool = False) -> dict:
    """Spectra a transformer model answers for each row (`TransformerModel.spectra`): flux and
    flux_scatter (sigma_pred) on the model's grid at the requested samples, from the row's
    given tokens (default: all it has but the requested ones: labels and colours of a table
    of labels), for the row's G (G = 0 without one). With ``inpaint``, the row's own spectrum
    fills the samples not requested, and flux_error holds its errors there (0 at the
    predicted samples, whose flux_scatter is their sigma); a row without a G (phot_g_mean_mag
    or from its spectrum) is NaN and flagged, its two parts having no common scale."""
    from xptools.models.transformer import DRAWS

    draws = DRAWS if draws is None else draws
    requests = transformer_requests(model, request, inpaint)
    model.given_mask(np.zeros((0, len(model.vocabulary)), bool), requests, given, hide)
    names = models.column_names(prefix, ["generate_flag"])
    keywords = models.keywords(model)
    source = None
    if src is None:
        chunks, total = [grid], len(grid)
    else:
        models.check_clash(src.schema, [names["generate_flag"], "flux_scatter"], src.name)
        if detect_layout(src.schema) is not None:
            source = XPSource(src.schema, src.name, model.features, with_errors=inpaint)
        elif inpaint:
            raise UserError(f"{src.name}: no XP spectra to inpaint (a flux column, or "
                            f"coefficients)")
        chunks, total = src.chunks(chunk_rows, read_ahead=True), src.nrows
    counts = {"rows": 0, "nothing_given": 0, "no_g": 0}
    with progress(total, "generate", quiet) as bar:
        for chunk in chunks:
            answer = model.spectra(chunk, source, requests, given, hide, draws,
                                   advance=bar.update)
            flux, scatter, flags = answer["flux"], answer["scatter"], answer["flags"]
            nothing = (flags & FLAG_UNUSABLE) != 0
            counts["nothing_given"] += int(np.count_nonzero(nothing))
            table = _layout(model.features.wavelengths, chunk, keywords)
            if inpaint:   # the row's own samples where none was requested, on its own scale
                kept = np.ones(flux.shape[1], bool)
                kept[requests] = False
                flux[:, kept] = answer["xp"][:, kept]
                scatter[:, kept] = 0.0
                error = np.zeros_like(flux)
                own_error = answer["xp_error"]
                error[:, kept] = own_error[:, kept] if own_error is not None else np.nan
                no_g = ~np.isfinite(answer["g"])   # no G to put the prediction on its scale
                flux[no_g] = scatter[no_g] = error[no_g] = np.nan
                flags = flags | np.where(no_g, FLAG_UNUSABLE, 0)
                counts["no_g"] += int(np.count_nonzero(no_g & ~nothing))
            what = "inpainted" if inpaint else "predicted"
            table.add_column("flux", flux.astype(np.float32), unit=UNIT,
                             description=f"{what} spectrum (transformer)")
            if inpaint:
                table.add_column("flux_error", error.astype(np.float32), unit=UNIT,
                                 description="the input's flux error at its own samples, 0 "
                                             "at the predicted ones")
            table.add_column("flux_scatter", scatter.astype(np.float32), unit=UNIT,
                             description="predictive sigma at the predicted samples "
                                         "(transformer)")
            table.add_column(names["generate_flag"], flags.astype(np.int16),
                             description=description("generate"))
            out.write(table)
            counts["rows"] += len(chunk)
    return counts
