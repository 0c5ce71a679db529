"""The ``xptools`` command: one thin function per subcommand.

Heavy modules (numpy, astropy, torch, gaiaxpy) are imported inside the commands, so that
``xptools --help`` answers at once. Every command reports a user error as one line on stderr
and exits 1 (``--verbose`` adds the traceback); a subcommand that is not built yet exits 2.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Optional

import typer

from xptools import __version__, flags
from xptools.errors import NotImplementedYet, UserError
from xptools.threads import cpu_threads, torch_with

app = typer.Typer(
    name="xptools",
    help="Gaia DR3 BP/RP (XP) spectra from the command line. Each command reads a table "
         "(FITS, HDF5, Parquet, CSV, ECSV, VOTable; '-' for stdin), adds columns, and writes "
         "a table (-o FILE, or stdout), so commands chain with pipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by the table-in, table-out commands.
OUTPUT = typer.Option("-", "-o", "--output", help="Output file; '-' (default) is stdout.")
FORMAT = typer.Option(None, "--format", help="Output format: fits, hdf5, parquet, csv, ecsv, "
                      "votable (default: from the extension; FITS on stdout).")
INPUT_FORMAT = typer.Option(None, "--input-format",
                            help="Input format, when the extension or content does not tell.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output file.")
QUIET = typer.Option(False, "-q", "--quiet", help="No progress bar or warnings.")
VERBOSE = typer.Option(False, "-v", "--verbose", help="Show the traceback of an error.")
# ... and by the commands that run a model over a table
CHUNK_ROWS = typer.Option(20_000, "--chunk-rows", min=1, help="Rows per chunk.")
# ... and by the commands that read XP coefficients (sample, photometry)
TRUNCATE = typer.Option(False, "--truncate", help="Use only the first bp/rp_n_relevant_bases "
                        "coefficients (GaiaXPy truncation).")
STRICT = typer.Option(False, "--strict", help="Fail on NaN or infinite coefficients instead "
                      "of flagging the row.")
COEFFICIENT_CHUNK_ROWS = typer.Option(None, "--chunk-rows", min=1,
                                      help="Rows per chunk (memory vs speed).")
# ... and by the row-wise commands, which also run over HATS catalogues (docs/scale.md)
ROWS_OUTPUT = typer.Option("-", "-o", "--output", help="Output file; '-' (default) is stdout. "
                           "With a HATS catalogue as input, a folder: the output catalogue.")
WORKERS = typer.Option(None, "--workers", min=1, help="With a HATS catalogue: run its "
                       "partitions on a local Dask cluster of N worker processes.")
SCHEDULER = typer.Option(None, "--scheduler", metavar="ADDRESS", help="With a HATS "
                         "catalogue: run its partitions on the Dask cluster whose scheduler "
                         "is at ADDRESS (e.g. tcp://10.0.0.1:8786).")
CATALOGUE = " or a HATS catalogue (folder or URL)"


def _where(path: Optional[str]) -> Optional[str]:
    """A model folder as workers elsewhere find it: absolute (a URL as it is); a shipped
    model's name (e.g. forward-apogee) where no such folder is here."""
    if path is None or "://" in path:
        return path
    from xptools.models import shipped

    return os.path.abspath(shipped(path))


def run_rows(command: str, prepare: str, options: dict, input: str, output: str, *,
             format, input_format, overwrite, quiet, workers, scheduler, torch=False) -> dict:
    """A row-wise command over a table or a HATS catalogue (xptools.scale decides which)."""
    from xptools import scale
    from xptools.progress import print_warning

    counts = scale.run(scale.Job(command, prepare, options, torch), input, output,
                       format=format, input_format=input_format, overwrite=overwrite,
                       quiet=quiet, workers=workers, scheduler=scheduler)
    if counts.get("resumed") and not quiet:
        print_warning(f"{counts['resumed']} partitions were written by an earlier run: what "
                      f"follows counts this run's {counts['rows']} rows")
    return counts


def token_options(what: str) -> dict:
    """--request, --given, --hide and --draws of a transformer model (infer, generate)."""
    return {
        "request": typer.Option(None, "--request", metavar="SPEC", help=f"Transformer models: "
                                f"what to predict, {what}."),
        "given": typer.Option(None, "--given", metavar="SPEC", help="Transformer models: the "
                              "tokens to give (groups xp, bp, rp, phot, labels or token names "
                              "such as teff, j_g, flux_600; default: every observed token but "
                              "the requested ones)."),
        "hide": typer.Option(None, "--hide", metavar="SPEC", help="Transformer models: tokens "
                             "not to give (same SPEC)."),
        "draws": typer.Option(None, "--draws", min=1, help="Transformer models: a row with "
                              "more tokens than the context is answered from N random subsets "
                              "(default 8; mean of the means; variance: mean variance + "
                              "variance of the means)."),
    }


INFER_TOKENS = token_options("comma-separated labels, colours or groups (default: the labels)")
GENERATE_TOKENS = token_options("xp (default), bp, rp or flux_ tokens")


def model_option(shipped: str) -> typer.models.OptionInfo:
    return typer.Option(None, "--model", help=f"Model directory, or a shipped model's name "
                        f"(msa-apogee, svae-apogee, forward-apogee, transformer-apogee; "
                        f"default: {shipped}).")


def prefix_option(example: str) -> typer.models.OptionInfo:
    return typer.Option(None, "--prefix", help=f"Prefix for the new columns ({example}).")


def _report(command: str, message: str) -> None:
    print(f"xptools {command}: error: {message}", file=sys.stderr)


def handles_errors(command: str):
    """Turn exceptions into one-line messages and exit codes (1 error, 2 not implemented,
    128 + N for signal N)."""

    def wrap(func):
        @functools.wraps(func)
        def run(*args, **kwargs):
            verbose = kwargs.get("verbose", False)
            try:
                result = func(*args, **kwargs)
                sys.stdout.flush()  # here, where a reader that went away is handled
                return result
            except typer.Exit:
                raise
            except BrokenPipeError:  # the reader went away ('| head'): not an error
                _stdout_gone()
                raise typer.Exit(0)
            except UserError as e:
                if verbose:
                    import traceback
                    traceback.print_exc()
                _report(command, str(e))
                raise typer.Exit(1)
            except NotImplementedYet as e:
                _report(command, str(e))
                raise typer.Exit(2)
            except KeyboardInterrupt as e:  # Ctrl-C, or a signal turned into `Interrupted`
                _report(command, f"interrupted; {getattr(e, 'left', 'no output written')}")
                raise typer.Exit(128 + getattr(e, "signum", signal.SIGINT))
            except MemoryError:
                _report(command, "out of memory (try a smaller --chunk-rows)")
                raise typer.Exit(1)
            except Exception as e:  # a bug: still one line unless --verbose
                if verbose:
                    import traceback
                    traceback.print_exc()
                _report(command, f"internal error: {type(e).__name__}: {e} "
                                 f"(rerun with --verbose for the traceback)")
                raise typer.Exit(1)
        return run

    return wrap


def _stdout_gone() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing more."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _version(value: bool) -> None:
    if value:
        print(f"xptools {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Gaia DR3 BP/RP (XP) spectra from the command line."""


@app.command(epilog=flags.help_text("sample"))
@handles_errors("sample")
def sample(
    input: str = typer.Argument(..., help="Table of XP continuous spectra ('-' for stdin)"
                                + CATALOGUE + "."),
    output: str = ROWS_OUTPUT,
    grid: Optional[str] = typer.Option(
        None, "--grid", help="Sampling grid START:STOP:STEP, STOP included (nm; with "
        "--internal pseudo-wavelength). Default: GaiaXPy's, 336:1020:2 nm or 600 samples "
        "over 0..60 pseudo-wavelength."),
    grid_file: Optional[str] = typer.Option(None, "--grid-file",
                                            help="Sampling grid from a text file of numbers."),
    internal: bool = typer.Option(False, "--internal", help="Internally calibrated BP and RP "
                                  "spectra on pseudo-wavelengths (GaiaXPy convert)."),
    truncate: bool = TRUNCATE,
    covariance: bool = typer.Option(
        False, "--covariance", help="Add the full flux covariance per source (N x N per row: "
        "about 0.9 MB per source on the default grid, slow; FITS, HDF5 or Parquet output)."),
    band: str = typer.Option("both", "--band", help="bp, rp or both."),
    dtype: str = typer.Option("float64", "--dtype", help="Output float type: float64 (exact, "
                              "default) or float32 (half the size)."),
    keep_coefficients: bool = typer.Option(False, "--keep-coefficients",
                                           help="Keep the input coefficient columns."),
    strict: bool = STRICT,
    chunk_rows: Optional[int] = COEFFICIENT_CHUNK_ROWS,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """XP coefficients -> sampled spectra with errors (GaiaXPy calibrate/convert, exact).

    Adds flux, flux_error (W m-2 nm-1) and sample_flag; with --internal bp_flux, bp_flux_error,
    rp_flux, rp_flux_error (e-/s). Other input columns pass through.
    """
    from xptools.sampling import parse_grid, read_grid_file

    bands = {"both": ("bp", "rp"), "bp": ("bp",), "rp": ("rp",)}.get(band.lower())
    if bands is None:
        raise UserError(f"--band {band!r}: choose bp, rp or both")
    if dtype not in ("float64", "float32"):
        raise UserError(f"--dtype {dtype!r}: choose float64 or float32")
    if grid and grid_file:
        raise UserError("give --grid or --grid-file, not both")
    values = parse_grid(grid) if grid else read_grid_file(grid_file) if grid_file else None
    run_rows("sample", "xptools.sampling:prepare",
             dict(grid=None if values is None else values.tolist(), internal=internal,
                  truncate=truncate, covariance=covariance, bands=bands, dtype=dtype,
                  keep_coefficients=keep_coefficients, strict=strict, chunk_rows=chunk_rows),
             input, output, format=format, input_format=input_format, overwrite=overwrite,
             quiet=quiet, workers=workers, scheduler=scheduler)


@app.command()
@handles_errors("info")
def info(
    input: str = typer.Argument(..., help="A table ('-' for stdin)" + CATALOGUE + "."),
    input_format: Optional[str] = INPUT_FORMAT,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verbose: bool = VERBOSE,
) -> None:
    """Rows, columns (shape, type, unit), XP layout and provenance of a table or catalogue."""
    from xptools.info import describe

    describe(input, input_format, as_json)


@app.command()
@handles_errors("fetch")
def fetch(
    ids: Optional[str] = typer.Option(
        None, "--ids", help="Source_ids to fetch: a text file (one id per line, '#' comments) "
        "or a table (see --id-column); '-' for stdin. Other columns of a table pass through."),
    id_column: str = typer.Option("source_id", "--id-column",
                                  help="The table column (or text header) holding the ids."),
    query: Optional[str] = typer.Option(
        None, "--query", help="ADQL query whose source_id column gives the ids, run as a TAP "
        "job (e.g. \"SELECT source_id FROM gaiadr3.gaia_source WHERE ...\"); its other "
        "columns pass through."),
    healpix_range: Optional[str] = typer.Option(
        None, "--healpix-range", help="With --bulk: every source in level-8 HEALPix pixels "
        "A-B (source_id >> 43), both included."),
    bulk: Optional[str] = typer.Option(
        None, "--bulk", help="Read the Gaia DR3 bulk files of this folder (URL or local path), "
        "e.g. https://cdn.gea.esac.esa.int/Gaia/gdr3/Spectroscopy/xp_continuous_mean_spectrum/, "
        "instead of asking DataLink."),
    sampled: bool = typer.Option(False, "--sampled", help="XP_SAMPLED spectra (flux on "
                                 "336..1020 nm) instead of XP_CONTINUOUS coefficients."),
    columns: Optional[str] = typer.Option(
        None, "--columns", help="gaiadr3.gaia_source columns to add, comma-separated "
        "(e.g. phot_g_mean_mag,parallax), through TAP joined on the uploaded ids."),
    missing: Optional[str] = typer.Option(
        None, "--missing", help="Write the ids that were not found to this table (CSV unless "
        "the extension names another format): source_id, and what is missing."),
    retry_missing: bool = typer.Option(
        False, "--retry-missing", help="Ask again for ids an earlier run asked without an "
        "answer (otherwise the cache remembers them as missing)."),
    cache: Optional[str] = typer.Option(
        None, "--cache", help="Folder for downloads and finished requests, reused by later "
        "runs (default: $XPTOOLS_CACHE/fetch, else ~/.cache/xptools/fetch)."),
    datalink_url: str = typer.Option(
        "https://gea.esac.esa.int/data-server/data", "--datalink-url",
        envvar="XPTOOLS_DATALINK_URL", help="DataLink data endpoint (a mirror or a test "
        "server can stand in)."),
    tap_url: str = typer.Option("https://gea.esac.esa.int/tap-server/tap", "--tap-url",
                                envvar="XPTOOLS_TAP_URL", help="TAP endpoint."),
    batch_size: int = typer.Option(5000, "--batch-size", min=1, max=5000,
                                   help="Ids per DataLink request (the archive allows 5,000)."),
    retries: int = typer.Option(8, "--retries", min=0, help="Consecutive failures allowed per "
                                "request before giving up."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.01, help="Seconds to wait for a "
                                  "connection or for the next byte."),
    backoff: float = typer.Option(1.0, "--backoff", min=0.0, help="Seconds before the first "
                                  "retry; doubles each time (at most 60), with jitter."),
    output: str = OUTPUT,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """XP spectra (and gaia_source columns) for a list of stars, from the Gaia archive or its
    bulk files.

    Every id asked for appears once, in the order asked; ids that were not found get NaN and
    fetch_flag, are counted on stderr and listed by --missing. Finished requests are kept in
    the cache: rerunning an interrupted command continues where it stopped. See docs/fetch.md.
    """
    from xptools.fetch import Sources, run_fetch
    from xptools.fetch.http import Http, RetryPolicy, warn_retries
    from xptools.fetch.ids import parse_healpix_range
    from xptools.fetch.store import default_cache
    from xptools.fetch.tap import parse_columns
    from xptools.io import TableWriter, format_from_name
    from xptools.progress import print_warning

    chosen = [name for name, value in (("--ids", ids), ("--query", query),
                                       ("--healpix-range", healpix_range)) if value is not None]
    if len(chosen) != 1:
        raise UserError("give the stars with one of --ids FILE, --query ADQL or --healpix-range "
                        "A-B" + (f" (not {' and '.join(chosen)})" if chosen else ""))
    if healpix_range is not None and not bulk:
        raise UserError("--healpix-range reads the bulk files: give --bulk URL_OR_DIR too")
    if input_format and ids is None:
        raise UserError("--input-format describes the --ids table; there is none")
    warn = (lambda message: None) if quiet else print_warning
    sources = Sources(
        ids=ids, id_column=id_column, input_format=input_format, query=query,
        healpix_range=parse_healpix_range(healpix_range) if healpix_range else None,
        bulk=bulk, product="XP_SAMPLED" if sampled else "XP_CONTINUOUS",
        columns=parse_columns(columns) if columns else None, datalink_url=datalink_url,
        tap_url=tap_url, cache=os.path.abspath(cache or default_cache()),
        batch_size=batch_size, retry_missing=retry_missing)
    http = Http(RetryPolicy(retries=retries, backoff=backoff, timeout=timeout), warn)
    writers = [TableWriter(output, format, overwrite)]
    if missing:
        writers.append(TableWriter(missing, None if format_from_name(missing) else "csv",
                                   overwrite))
    try:
        run_fetch(sources, writers[0], writers[1] if missing else None, http, quiet, warn)
        for writer in writers:  # the table first, then the report
            writer.commit()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    warn_retries(http, quiet)


@app.command()
@handles_errors("train")
def train(
    train_file: str = typer.Argument(..., metavar="TRAIN",
                                     help="Table of XP spectra (sampled or coefficients), with "
                                          "label columns for msa."),
    output: str = typer.Option(..., "-o", "--output", help="Model directory to write."),
    model: Optional[str] = typer.Option(None, "--model", help="Model kind: msa (default; needs labels), "
                                         "svae (spectra alone), forward (labels, 2MASS and "
                                         "an extinction prior; ZGR23) or transformer (any "
                                         "tokens; Leung & Bovy 2024)."),
    labels: Optional[str] = typer.Option(None, "--labels",
                                         help="Label columns, e.g. teff,logg,fe_h,alpha_m."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="JSON file of settings "
                                         "(features, hyperparameters, labels, seed)."),
    valid: Optional[str] = typer.Option(None, "--valid", help="Table with labels for the "
                                        "final validation report."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from "
                                "its checkpoints (in OUTPUT.partial/)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=0,
                                         help="Checkpoint every N steps (and every epoch)."),
    ext_prior: Optional[str] = typer.Option(None, "--ext-prior", metavar="COLUMN",
                                            help="forward: the column of each star's "
                                            "extinction prior (default ak_targ)."),
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Train a model (msa from a table with labels, svae from spectra alone, forward from
    labels, 2MASS and an extinction prior); prints the validation report."""
    torch_with(cpu_threads())
    from xptools.train import run_train

    run_train(model, train_file, output,
              labels=[l.strip() for l in labels.split(",") if l.strip()] if labels else None,
              recipe_path=recipe, valid_path=valid, seed=seed, resume=resume,
              overwrite=overwrite, checkpoint_every=checkpoint_every,
              input_format=input_format, quiet=quiet, ext_prior=ext_prior)


@app.command(epilog=flags.help_text("infer"))
@handles_errors("infer")
def infer(
    input: str = typer.Argument(..., help="Table of XP spectra, sampled or coefficients "
                                "('-' for stdin)" + CATALOGUE + "."),
    output: str = ROWS_OUTPUT,
    model: Optional[str] = model_option("msa-apogee"),
    prefix: Optional[str] = prefix_option("e.g. msa gives msa_teff, ..."),
    covariance: bool = typer.Option(False, "--covariance", help="Forward models: add each "
                                    "fit's covariance (labels, ext[, parallax])."),
    request: Optional[str] = INFER_TOKENS["request"],
    given: Optional[str] = INFER_TOKENS["given"],
    hide: Optional[str] = INFER_TOKENS["hide"],
    draws: Optional[int] = INFER_TOKENS["draws"],
    chunk_rows: int = CHUNK_ROWS,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Stellar labels with uncertainties (and infer_flag) for every row; columns pass through.
    A forward model fits each star: labels, ext, ebv, chi2 (docs/forward.md); a transformer
    answers any --request from any --given tokens (docs/transformer.md)."""
    torch_with(cpu_threads())
    from xptools.progress import print_warning

    counts = run_rows("infer", "xptools.infer:prepare",
                      dict(model=_where(model), prefix=prefix, chunk_rows=chunk_rows,
                           covariance=covariance, request=request, given=given, hide=hide,
                           draws=draws),
                      input, output,
                      format=format, input_format=input_format, overwrite=overwrite,
                      quiet=quiet, workers=workers, scheduler=scheduler, torch=True)
    if counts.get("unusable") and not quiet:
        print_warning(f"{counts['unusable']} of {counts['rows']} rows had nothing to predict "
                      f"from: NaN labels, see infer_flag")


def _pair(text: str, option: str) -> tuple[str, str]:
    """'COL' or 'COL=RIGHTCOL' -> (left column, right column)."""
    left, equals, right = text.partition("=")
    if not left.strip() or (equals and not right.strip()):
        raise UserError(f"{option} {text!r}: expected COL or COL=RIGHTCOL")
    return left.strip(), (right or left).strip()


@app.command()
@handles_errors("crossmatch")
def crossmatch(
    left: str = typer.Argument(..., help="Table to add columns to ('-' for stdin); streamed "
                               "chunk by chunk."),
    right: str = typer.Argument(..., help="Table whose columns are attached (APOGEE, GALAH, "
                                "2MASS, ...); read whole into memory."),
    output: str = OUTPUT,
    on: Optional[str] = typer.Option(None, "--on", help="Id join on COL, or COL=RIGHTCOL when "
                                     "the names differ (e.g. source_id=gaia_dr3_id)."),
    sky: Optional[float] = typer.Option(None, "--sky", metavar="RADIUS_ARCSEC",
                                        help="Sky match: right sources within this radius "
                                        "(arcsec); adds match_separation."),
    how: str = typer.Option("inner", "--how", help="inner: matched left rows only; left: "
                            "every left row, unmatched ones with blanks and match_count 0."),
    best: Optional[str] = typer.Option(None, "--best", metavar="COL", help="Of several "
                                       "matches keep the right row with the highest COL "
                                       "(e.g. snr)."),
    nearest: bool = typer.Option(False, "--nearest", help="Of several matches keep the "
                                 "nearest (the default of --sky)."),
    all_pairs: bool = typer.Option(False, "--all", help="Keep every matching pair (a left "
                                   "row may repeat)."),
    columns: Optional[str] = typer.Option(None, "--columns", metavar="C1,C2,...",
                                          help="Right columns to bring (default: all but "
                                          "the --on key)."),
    suffix: str = typer.Option("_r", "--suffix", help="Added to a right column whose name "
                               "the left table already has."),
    ra: str = typer.Option("ra", "--ra", metavar="COL[=RIGHTCOL]", help="RA columns (deg, "
                           "or the column's unit)."),
    dec: str = typer.Option("dec", "--dec", metavar="COL[=RIGHTCOL]", help="Dec columns."),
    pm: bool = typer.Option(False, "--pm", help="Move the left positions by their proper "
                            "motions (pmra, pmdec, mas/yr) from --epoch-left to --epoch-right "
                            "before matching."),
    epoch_left: float = typer.Option(2016.0, "--epoch-left", help="Epoch of the left "
                                     "positions, Julian years (Gaia DR3: 2016.0)."),
    epoch_right: Optional[float] = typer.Option(None, "--epoch-right", help="Epoch of the "
                                                "right positions, Julian years (with --pm)."),
    chunk_rows: Optional[int] = typer.Option(None, "--chunk-rows", min=1,
                                             help="Left rows per chunk (memory vs speed)."),
    engine: str = typer.Option("local", "--engine", help="local: this machine (the right "
                               "table in memory); lsdb: LSDB/HATS on Dask, for catalogues "
                               "beyond one machine (the 'scale' extra)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="ADDRESS",
                                            help="With --engine lsdb: the Dask scheduler to "
                                            "run on (e.g. tcp://host:8786); default: threads "
                                            "here."),
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = typer.Option(None, "--input-format", help="Format of LEFT, "
                                               "when the extension or content does not tell."),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Attach another catalogue's columns, by id (--on) or by sky position (--sky).

    Adds match_count (0 = no match), match_flag (1 = no key, 2 = bad position,
    4 = no proper motion) and, with --sky, match_separation (arcsec).
    Left columns pass through. See docs/crossmatch.md.
    """
    import math

    from xptools.crossmatch import Match, run_crossmatch
    from xptools.crossmatch.choose import ALL, BEST, NEAREST
    from xptools.io import STDIO, TableWriter, open_table
    from xptools.progress import print_warning

    rules = [r for r, given in ((BEST, best is not None), (NEAREST, nearest), (ALL, all_pairs))
             if given]
    if len(rules) > 1:
        raise UserError("give at most one of --best COL, --nearest and --all")
    if left == STDIO and right == STDIO:
        raise UserError("LEFT and RIGHT cannot both be '-' (stdin)")
    if pm and epoch_right is None:
        raise UserError("--pm needs --epoch-right (the epoch of the right positions)")
    if not pm and epoch_right is not None:
        raise UserError("--epoch-right is used with --pm only")
    if sky is not None and not math.isfinite(sky):
        raise UserError(f"--sky {sky}: the radius must be a finite number of arcsec")
    match = Match(on=_pair(on, "--on") if on is not None else None, radius=sky,
                  how=how.lower(), rule=rules[0] if rules else None, best=best,
                  columns=[c.strip() for c in columns.split(",") if c.strip()]
                  if columns is not None else None, suffix=suffix,
                  ra=_pair(ra, "--ra"), dec=_pair(dec, "--dec"),
                  pm=("pmra", "pmdec") if pm else None,
                  epochs=(epoch_left, epoch_right if pm else epoch_left),
                  chunk_rows=chunk_rows)
    match.check()
    warn = (lambda m: None) if quiet else print_warning
    if engine not in ("local", "lsdb"):
        raise UserError(f"--engine {engine!r}: choose local or lsdb")
    if scheduler is not None and engine != "lsdb":
        raise UserError("--scheduler is for --engine lsdb")
    if engine == "lsdb":
        from xptools.crossmatch.lsdb_engine import run_lsdb

        if chunk_rows is not None:
            raise UserError("--chunk-rows is for --engine local (lsdb works by partitions)")
        with TableWriter(output, format, overwrite) as out:
            run_lsdb(left, right, out, match, input_format=input_format, scheduler=scheduler,
                     quiet=quiet, warn=warn)
        return
    with TableWriter(output, format, overwrite, write_behind=True) as out, \
            open_table(left, input_format) as src, open_table(right) as right_src:
        run_crossmatch(src, right_src, out, match, quiet=quiet, warn=warn)


@app.command(epilog=flags.help_text("embed"))
@handles_errors("embed")
def embed(
    input: str = typer.Argument(..., help="Table of XP spectra, sampled or coefficients "
                                "('-' for stdin)" + CATALOGUE + "."),
    output: str = ROWS_OUTPUT,
    model: Optional[str] = model_option("svae-apogee"),
    prefix: Optional[str] = prefix_option("e.g. svae gives svae_z, ..."),
    chunk_rows: int = CHUNK_ROWS,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Latent coordinates z, z_error (and embed_flag) of every spectrum; columns pass through."""
    from xptools.progress import print_warning

    counts = run_rows("embed", "xptools.embed:prepare",
                      dict(model=_where(model), prefix=prefix, chunk_rows=chunk_rows),
                      input, output,
                      format=format, input_format=input_format, overwrite=overwrite,
                      quiet=quiet, workers=workers, scheduler=scheduler)
    if counts.get("unusable") and not quiet:
        print_warning(f"{counts['unusable']} of {counts['rows']} rows had no complete spectrum: "
                      f"NaN z, see embed_flag")


@app.command(epilog=flags.help_text("generate"))
@handles_errors("generate")
def generate(
    input: Optional[str] = typer.Argument(None, metavar="[LATENTS | IN]",
                                          help="Table with a z column ('-' for stdin); with "
                                               "--reconstruct, a table of XP spectra; either"
                                               + CATALOGUE + "."),
    output: str = ROWS_OUTPUT,
    model: Optional[str] = model_option("svae-apogee"),
    z: Optional[str] = typer.Option(None, "--z", help="A grid of latents instead of a table: "
                                    "one comma-separated entry per dimension, a number or "
                                    "START:STOP:STEP, e.g. '-2:2:0.5,0,0,0,0,0'."),
    reconstruct: bool = typer.Option(False, "--reconstruct", help="Encode and decode the "
                                     "spectra of IN; add z, chi2 and outlier_percentile."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Forward and transformer models: a "
                                       "grid of labels instead of a table, NAME=VALUE or "
                                       "NAME=START:STOP:STEP, e.g. "
                                       "'teff=4000:7000:250,logg=4.6,fe_h=0,ext=0:1:0.25'."),
    extinction_curve: bool = typer.Option(False, "--extinction-curve", help="Forward models: "
                                          "write the learned extinction curve R(lambda), "
                                          "normalised and beside CCM R_V=3.1."),
    z_column: str = typer.Option("z", "--z-column", help="Column of LATENTS holding z."),
    inpaint: Optional[str] = typer.Option(None, "--inpaint", metavar="IN", help="Transformer "
                                          "models: fill the --request part of the spectra of "
                                          "IN from the --given tokens (e.g. --given rp "
                                          "--request bp)."),
    request: Optional[str] = GENERATE_TOKENS["request"],
    given: Optional[str] = GENERATE_TOKENS["given"],
    hide: Optional[str] = GENERATE_TOKENS["hide"],
    draws: Optional[int] = GENERATE_TOKENS["draws"],
    prefix: Optional[str] = prefix_option("other than flux and flux_scatter"),
    chunk_rows: int = CHUNK_ROWS,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Spectra (flux, flux_scatter) decoded from latents, or reconstructions with chi2 and an
    outlier percentile (--reconstruct); with a forward model, spectra and 2MASS magnitudes
    from labels and extinction (a table, or --grid), or its extinction curve; with a
    transformer, spectra from labels (a table, or --grid) or from part of a spectrum
    (--inpaint)."""
    from xptools.progress import print_warning

    tokens = dict(request=request, given=given, hide=hide, draws=draws)
    if inpaint is not None:
        if input is not None or z is not None or reconstruct or grid is not None:
            raise UserError("--inpaint IN stands alone: no other table, --z, --reconstruct "
                            "or --grid")
        input = inpaint
    if grid is not None or extinction_curve:
        from xptools import models
        from xptools.generate import (extinction_curve as curve, label_grid, run_forward,
                                      run_transformer)
        from xptools.io import TableWriter

        if input is not None or z is not None or reconstruct or grid and extinction_curve:
            raise UserError("--grid and --extinction-curve stand alone: no table, --z, "
                            "--reconstruct or each other")
        if workers or scheduler:
            raise UserError("--workers and --scheduler run over a HATS catalogue")
        loaded = models.load(_where(model) or models.default_path("generate"))
        if extinction_curve and loaded.kind != "forward":
            raise UserError(f"--extinction-curve needs a forward model, not {loaded.kind} "
                            f"(give --model DIR)")
        if loaded.kind not in ("forward", "transformer"):
            raise UserError(f"--grid needs a forward or transformer model, not {loaded.kind} "
                            f"(give --model DIR)")
        if loaded.kind == "forward" and any(v is not None for v in tokens.values()):
            raise UserError("--request, --given, --hide and --draws are for transformer "
                            "models")
        rows = label_grid(grid, loaded) if grid is not None else None
        with TableWriter(output, format, overwrite, write_behind=True) as out:
            if extinction_curve:
                out.write(curve(loaded))
            elif loaded.kind == "transformer":
                run_transformer(None, out, loaded, grid=rows, prefix=prefix, quiet=quiet,
                                **tokens)
            else:
                run_forward(None, out, loaded, grid=rows, prefix=prefix, quiet=quiet)
        return
    if (input is None) == (z is None):
        raise UserError("give a table of latents (or spectra, with --reconstruct) or --z, "
                        "one of them")
    if reconstruct and input is None:
        raise UserError("--reconstruct needs a table of XP spectra")
    if z is not None:
        from xptools import models
        from xptools.generate import latent_grid, run_generate
        from xptools.io import TableWriter

        if workers or scheduler:
            raise UserError("--workers and --scheduler run over a HATS catalogue, not --z")
        with TableWriter(output, format, overwrite, write_behind=True) as out:
            loaded = models.load_latent(_where(model), "generate")
            run_generate(None, out, loaded, grid=latent_grid(z, loaded.latent), quiet=quiet)
        return
    counts = run_rows("generate", "xptools.generate:prepare",
                      dict(model=_where(model), reconstruct=reconstruct, z_column=z_column,
                           prefix=prefix, chunk_rows=chunk_rows, inpaint=inpaint is not None,
                           **tokens), input, output,
                      format=format, input_format=input_format, overwrite=overwrite,
                      quiet=quiet, workers=workers, scheduler=scheduler)
    if counts.get("unusable") and not quiet:
        print_warning(f"{counts['unusable']} of {counts['rows']} rows had "
                      f"{'no complete spectrum' if reconstruct else 'no finite z'}: NaN "
                      f"output, see generate_flag")
    if counts.get("nothing_given") and not quiet:   # a transformer model's rows
        print_warning(f"{counts['nothing_given']} of {counts['rows']} rows had no token to "
                      f"give: NaN output, see generate_flag")
    if counts.get("no_g") and not quiet:   # --inpaint
        print_warning(f"{counts['no_g']} of {counts['rows']} rows had no G (phot_g_mean_mag, "
                      f"or from the spectrum) to scale the prediction by: NaN output, see "
                      f"generate_flag")
    if counts.get("no_labels") and not quiet:   # a forward model's rows
        print_warning(f"{counts['no_labels']} of {counts['rows']} rows had a missing label, "
                      f"ext or parallax: NaN output, see generate_flag")


@app.command()
@handles_errors("plot")
def plot(
    input: str = typer.Argument(..., help="Table of XP spectra, sampled or coefficients, "
                                "and/or labels ('-' for stdin)."),
    output: str = typer.Option(..., "-o", "--output", help="Image file: .png, .pdf or .svg; "
                               "'-' writes PNG (or --format) to stdout when it is piped."),
    rows: Optional[str] = typer.Option(None, "--rows", metavar="I,J,...",
                                       help="Rows to draw, 0-based (e.g. 0,5,9; at most 20 "
                                       "spectra). Default: the first 5."),
    where: Optional[str] = typer.Option(None, "--where", metavar="EXPR",
                                        help="Rows to draw: a filter such as 'teff<5000' or "
                                        "'logg>4 and fe_h<-1' (and, or, not, parentheses; the "
                                        "first 20 matches are drawn)."),
    reconstruct: bool = typer.Option(False, "--reconstruct", help="Overlay svae "
                                     "reconstructions and their scatter, with chi2, and the "
                                     "residuals."),
    kiel: bool = typer.Option(False, "--kiel", help="A Kiel diagram (log g against Teff, "
                              "coloured by [Fe/H]) instead of the spectra; with --spectra or "
                              "--reconstruct, beside them."),
    spectra: bool = typer.Option(False, "--spectra", help="With --kiel: draw the spectra "
                                 "too."),
    prefix: Optional[str] = typer.Option(None, "--prefix", help="Label columns of --kiel: "
                                         "P_teff, P_logg, P_fe_h (default: teff, logg, fe_h, "
                                         "else the one prefixed set in the table)."),
    linear: bool = typer.Option(False, "--linear", help="Linear flux axis (default: "
                                "logarithmic)."),
    model: Optional[str] = model_option("svae-apogee"),
    format: Optional[str] = typer.Option(None, "--format", help="Image format: png, pdf or "
                                         "svg (default: from the extension; PNG on stdout)."),
    dpi: int = typer.Option(120, "--dpi", min=30, max=1200, help="Resolution of PNG images "
                            "(dots per inch)."),
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """A quick look: spectra with their error bands, svae reconstructions (--reconstruct) or a
    Kiel diagram (--kiel), as PNG, PDF or SVG. See docs/plot.md."""
    from xptools.io import open_table
    from xptools.plot import ImageTarget, parse_rows, run_plot
    from xptools.where import RowFilter
    from xptools.progress import print_warning

    if rows is not None and where is not None:
        raise UserError("give --rows or --where, not both")
    if model is not None and not reconstruct:
        raise UserError("--model is for --reconstruct")
    if prefix is not None and not kiel:
        raise UserError("--prefix names the label columns of --kiel")
    if spectra and not kiel:
        raise UserError("--spectra is for --kiel (spectra are drawn by default)")
    chosen = parse_rows(rows) if rows is not None else None
    row_filter = RowFilter(where) if where is not None else None
    target = ImageTarget(output, format, overwrite)
    if reconstruct:
        from xptools import models

        loaded = models.load_latent(_where(model), "generate")
    else:
        loaded = None
    with open_table(input, input_format) as src:
        run_plot(src, target, rows=chosen, where=row_filter,
                 spectra=not kiel or spectra or reconstruct, kiel=kiel, prefix=prefix,
                 model=loaded, log=not linear, dpi=dpi,
                 warn=(lambda m: None) if quiet else print_warning)


@app.command(epilog=flags.help_text("photometry"))
@handles_errors("photometry")
def photometry(
    input: Optional[str] = typer.Argument(None, metavar="IN", help="Table of XP continuous "
                                          "spectra ('-' for stdin)" + CATALOGUE + "."),
    system: Optional[list[str]] = typer.Option(
        None, "--system", "-s", help="Photometric systems, GaiaXPy's names, comma-separated "
        "or repeated (e.g. JKC_Std,SDSS_Std; any case). --list shows them."),
    list_systems: bool = typer.Option(False, "--list", help="Print the systems and their "
                                      "bands, and exit."),
    error_correction: bool = typer.Option(
        False, "--error-correction", help="Inflate the flux errors by the Montegriffo et al. "
        "(2022) tables (GaiaXPy error_correction=True)."),
    truncate: bool = TRUNCATE,
    drop_coefficients: bool = typer.Option(False, "--drop-coefficients", help="Leave the "
                                           "coefficient, error and correlation columns out."),
    strict: bool = STRICT,
    chunk_rows: Optional[int] = COEFFICIENT_CHUNK_ROWS,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    output: str = ROWS_OUTPUT,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """XP coefficients -> synthetic photometry in GaiaXPy's systems (GaiaXPy generate, exact).

    Adds <label>_mag_<band> (mag), <label>_flux_<band> and <label>_flux_error_<band> (W m-2
    nm-1, or W m-2 Hz-1 for AB systems) per system, and photometry_flag. All input columns
    pass through. See docs/photometry.md.
    """
    from xptools.synthetic import describe_systems, find_systems

    if list_systems:
        if input is not None or system:
            raise UserError("--list takes no input table or --system")
        sys.stdout.write(describe_systems())
        return
    if input is None or not system:
        raise UserError("give a table of XP coefficients and --system NAME[,NAME...] "
                        "(or --list to see the systems)")
    names = [s.name for s in find_systems([n for value in system for n in value.split(",")
                                           if n.strip()])]
    run_rows("photometry", "xptools.synthetic:prepare",
             dict(systems=names, error_correction=error_correction, truncate=truncate,
                  strict=strict, drop_coefficients=drop_coefficients, chunk_rows=chunk_rows),
             input, output, format=format, input_format=input_format, overwrite=overwrite,
             quiet=quiet, workers=workers, scheduler=scheduler)


@app.command(epilog=flags.help_text("flag"))
@handles_errors("flag")
def flag(
    input: str = typer.Argument(..., metavar="IN", help="Table of XP spectra, sampled or "
                                "coefficients, with or without infer's labels ('-' for stdin)"
                                + CATALOGUE + "."),
    output: str = ROWS_OUTPUT,
    model: Optional[str] = typer.Option(None, "--model", help="Model directory whose "
                                        "out-of-distribution detectors score the rows "
                                        "(default: the shipped msa-apogee)."),
    svae: Optional[str] = typer.Option(None, "--svae", help="svae model directory for the "
                                       "reconstruction chi2 (default: the shipped svae-apogee)."),
    cuts: Optional[str] = typer.Option(None, "--cuts", metavar="NAME=PCT,...", help="Percentile "
                                       "cuts: mahalanobis=99.5 (above), iforest=2.5 (below), "
                                       "gmm=0.5 (below), recon=99 (above), phot=99.5 (above)."),
    sigma_max: Optional[str] = typer.Option(None, "--sigma-max", metavar="LABEL=ERR,...",
                                            help="Largest acceptable label errors (default "
                                            "teff=150,logg=0.2,fe_h=0.1, for the labels the "
                                            "table has)."),
    quality: Optional[str] = typer.Option(None, "--quality", metavar="EXPR", help="A condition "
                                          "rows must meet, e.g. 'ruwe < 1.4' (comparisons "
                                          "joined by and, or, not); a row that fails it gets "
                                          "bit 2048."),
    prefix: Optional[str] = prefix_option("e.g. msa gives msa_xp_flag, ..."),
    infer_prefix: Optional[str] = typer.Option(None, "--infer-prefix", help="The prefix "
                                               "infer's label columns have (infer --prefix)."),
    plots: Optional[str] = typer.Option(None, "--plots", metavar="DIR", help="Write PNG "
                                        "figures there: percentile distributions, and the "
                                        "Kiel diagram when the table has infer's labels."),
    chunk_rows: int = CHUNK_ROWS,
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    format: Optional[str] = FORMAT,
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Quality and out-of-distribution flags for every row: the ood_* and recon_chi2
    scores with their percentiles, and one bitmask xp_flag. Keep xp_flag < 64 for basic
    reliability, xp_flag == 0 for the strict sample. Columns pass through. See docs/flag.md."""
    torch_with(cpu_threads())
    from xptools.flag import FlagOptions, write_plots
    from xptools.flag.plots import FILES
    from xptools.io.atomic import check_folder
    from xptools.progress import print_warning

    FlagOptions.parse(cuts, sigma_max, quality)   # a bad option fails before any work
    if plots is not None:
        check_folder(plots, FILES, overwrite, "--plots")
    counts = run_rows("flag", "xptools.flag:prepare",
                      dict(model=_where(model), svae=_where(svae), cuts=cuts, sigma_max=sigma_max,
                           quality=quality, prefix=prefix, infer_prefix=infer_prefix,
                           chunk_rows=chunk_rows), input, output, format=format,
                      input_format=input_format, overwrite=overwrite, quiet=quiet,
                      workers=workers, scheduler=scheduler, torch=True)
    if plots is not None and "summary" not in counts:
        print_warning("no partition was left to flag: no figures (use --overwrite to run "
                      "them all)")
    elif plots is not None:
        write_plots(plots, counts["summary"],
                    "stdin" if input == "-" else os.path.basename(input), overwrite)
    if not quiet and "basic" in counts:
        rows = max(counts["rows"], 1)
        labels = (f"; labels checked: {', '.join(counts['labels'])}" if counts["labels"]
                  else "; no infer labels in the table")
        print(f"xptools flag: {counts['rows']} rows: {counts['basic']} "
              f"({100 * counts['basic'] / rows:.1f}%) pass xp_flag < 64, {counts['strict']} "
              f"({100 * counts['strict'] / rows:.1f}%) have xp_flag == 0, "
              f"{counts['unscored']} could not be scored{labels}", file=sys.stderr)


@app.command("hats-import")
@handles_errors("hats-import")
def hats_import(
    inputs: list[str] = typer.Argument(..., metavar="IN...", help="Tables with one schema "
                                       "(e.g. fetch outputs or bulk files)."),
    output: str = typer.Option(..., "-o", "--output", help="The catalogue folder to make."),
    ra: str = typer.Option("ra", "--ra", help="Right ascension column (deg)."),
    dec: str = typer.Option("dec", "--dec", help="Declination column (deg)."),
    max_rows: int = typer.Option(1_000_000, "--max-rows", min=1, help="At most this many rows "
                                 "per partition (partitions are merged up to it)."),
    order: Optional[int] = typer.Option(None, "--order", min=0, help="Every partition at this "
                                        "HEALPix order instead of --max-rows."),
    highest_order: int = typer.Option(10, "--highest-order", min=0, max=13, help="The "
                                      "smallest partitions' HEALPix order."),
    from_source_id: bool = typer.Option(False, "--positions-from-source-id", help="Tables "
                                        "without positions (Gaia bulk XP files): place rows "
                                        "by the HEALPix level-12 pixel in their Gaia "
                                        "source_id, and add ra, dec at its centre."),
    name: Optional[str] = typer.Option(None, "--name", help="Catalogue name (default: the "
                                       "folder's)."),
    chunk_rows: int = typer.Option(100_000, "--chunk-rows", min=1, help="Rows per chunk."),
    input_format: Optional[str] = INPUT_FORMAT,
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Tables -> a HATS catalogue (HEALPix-partitioned Parquet), for sample, infer, embed,
    generate, flag and photometry on Dask, and for LSDB. See docs/scale.md."""
    from xptools.scale.hats_import import run_import

    counts = run_import(inputs, output, ra=ra, dec=dec, max_rows=max_rows, order=order,
                        highest_order=highest_order, from_source_id=from_source_id, name=name,
                        input_format=input_format,
                        chunk_rows=chunk_rows, overwrite=overwrite, quiet=quiet)
    if not quiet:
        print(f"xptools hats-import: {output}: {counts['rows']} rows in "
              f"{counts['partitions']} partitions", file=sys.stderr)


@app.command(epilog="See docs/calibrate.md: what each diagnostic means, with pictures.")
@handles_errors("calibrate")
def calibrate(
    labeled: str = typer.Argument(..., metavar="LABELED", help="An `xptools infer` output "
                                  "('-' for stdin)."),
    reference: Optional[str] = typer.Option(
        None, "--reference", metavar="REF", help="Table of reference labels (<label> and "
        "<label>_err or _error), joined on --on. Default: columns of LABELED, named by "
        "--reference-columns."),
    reference_columns: Optional[str] = typer.Option(
        None, "--reference-columns", metavar="PREFIX|LABEL=COL,...", help="Names of the "
        "reference columns: a prefix (apogee_ gives apogee_teff, apogee_teff_err) or "
        "label=column pairs. Default: the label names."),
    on: str = typer.Option("source_id", "--on", metavar="COL[=REFCOL]",
                           help="Id column of the join with REF."),
    best: Optional[str] = typer.Option(None, "--best", metavar="COL", help="Of REF rows with "
                                       "the same id, keep the one with the highest COL "
                                       "(e.g. snr); without it duplicate ids are an error."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Labels to check, e.g. "
                                         "teff,logg (default: the model's)."),
    prefix: Optional[str] = typer.Option(None, "--prefix", help="Prefix of the predicted "
                                         "columns (infer --prefix)."),
    where: Optional[list[str]] = typer.Option(
        None, "--where", metavar="EXPR", help="A subset to report besides all rows, e.g. "
        "'teff_ref < 7000' (repeatable; the columns of LABELED and REF, REF's with _ref "
        "where LABELED has the name)."),
    fit_where: Optional[str] = typer.Option(None, "--fit-where", metavar="EXPR",
                                            help="The rows --fit uses (default: all)."),
    fit: str = typer.Option("none", "--fit", help="none (diagnose only), scale (one factor "
                            "per label for the errors) or linear (value -> a x value + b, "
                            "then scale)."),
    scale_target: str = typer.Option("mad", "--scale-target", help="What s makes true: mad "
                                     "(sigma_MAD of z is 1) or coverage (+-1 sigma holds "
                                     "68.27% of the differences)."),
    plots: Optional[str] = typer.Option(None, "--plots", metavar="DIR", help="Write the "
                                        "figures (PNG) into this folder."),
    report: Optional[str] = typer.Option(None, "--report", metavar="FILE.json",
                                         help="Write every diagnostic as JSON ('-': stdout)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", metavar="DIR",
                                         help="Write the model with the fitted calibration "
                                              "(needs --fit); infer --model DIR applies it."),
    model: Optional[str] = typer.Option(None, "--model", metavar="DIR", help="The model "
                                        "directory that made LABELED (default: the shipped "
                                        "one its header names)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    bootstrap: int = typer.Option(200, "--bootstrap", min=0, help="Bootstrap resamplings "
                                  "for the errors of the fit."),
    input_format: Optional[str] = typer.Option(None, "--input-format", help="Format of "
                                               "LABELED, when the name does not tell."),
    overwrite: bool = OVERWRITE,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Are a label model's error bars honest against reference labels? PIT, D_KS, coverage,
    z-scores; --fit scale|linear corrects them, -o DIR stores the correction for infer."""
    from xptools.calibrate import Options, check_outputs, run_calibrate, write_outputs
    from xptools.io import STDIO, open_table
    from xptools.progress import print_warning

    opts = Options(reference=reference, reference_columns=reference_columns,
                   on=_pair(on, "--on"), best=best,
                   labels=[l.strip() for l in labels.split(",") if l.strip()] if labels
                   else None, prefix=prefix, where=list(where or []), fit_where=fit_where,
                   fit=fit.lower(), scale_target=scale_target.lower(), model=model,
                   seed=seed, bootstrap=bootstrap,
                   output=output)
    opts.check()
    if labeled == STDIO and reference == STDIO:
        raise UserError("LABELED and --reference cannot both be '-' (stdin)")
    warn = (lambda m: None) if quiet else print_warning
    outputs = {"plots": plots, "report": report, "output": output}
    check_outputs(outputs, overwrite)
    if output is not None:
        torch_with(1)
    with open_table(labeled, input_format) as src:
        if reference is None:
            result = run_calibrate(src, None, opts, warn)
        else:
            with open_table(reference) as ref:
                result = run_calibrate(src, ref, opts, warn)
    write_outputs(result, outputs, overwrite, quiet)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread: it unwinds through the readers and
    writers, which stop their threads and remove their temporary files."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signal(signum, frame):
    for each in _STOP_SIGNALS:  # a second signal while we unwind: leave at once
        signal.signal(each, _leave_now)
    raise Interrupted(signum)


def _leave_now(signum, frame):
    from xptools.io.atomic import remove_temporaries

    remove_temporaries()
    os.write(2, b"xptools: interrupted again; leaving now\n")
    os._exit(128 + signum)


def main() -> None:
    for each in _STOP_SIGNALS:
        if signal.getsignal(each) is not signal.SIG_IGN:  # nohup: keep ignoring SIGHUP
            signal.signal(each, _on_signal)
    try:
        app()
    except BrokenPipeError:  # the reader went away, e.g. 'xptools info big.fits | head'
        _stdout_gone()
        sys.exit(0)
    except KeyboardInterrupt as e:  # before or after a command ran (e.g. while importing)
        print("xptools: interrupted", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


if __name__ == "__main__":
    main()
