"""`xptools plot`: images of spectra, reconstructions and Kiel diagrams; the --where filter."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run, synthetic_continuous, synthetic_sampled
from xptools.errors import UserError
from xptools.io import Table, write_table

PNG = b"\x89PNG\r\n\x1a\n"
PDF = b"%PDF-"
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "apogee_xp_200.fits")


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """Sampled spectra on the default grid with teff, logg and fe_h."""
    path = tmp_path_factory.mktemp("plot") / "sampled.fits"
    t = synthetic_sampled(n=40, seed=3)
    t.add_column("fe_h", np.linspace(-2.0, 0.4, 40).astype(np.float32))
    t["fe_h"][5] = np.nan
    write_table(t, str(path))
    return path


@pytest.fixture(scope="module")
def continuous(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "continuous.fits"
    write_table(synthetic_continuous(n=4, missing_bp=(2,)), str(path))
    return path


def made(result, path, magic=PNG):
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "Traceback" not in err
    data = open(path, "rb").read()
    assert data.startswith(magic), data[:16]
    assert len(data) > 5000
    folder = os.path.dirname(path)
    assert not [f for f in os.listdir(folder) if f.endswith(".part")]
    return err


def failed(result, output, *fragments):
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1, err
    assert err.startswith("xptools plot: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    if output is not None:
        assert not os.path.exists(output)
        folder = os.path.dirname(str(output))
        assert not [f for f in os.listdir(folder) if f.endswith(".part")]
    return err


# -- images --------------------------------------------------------------------------------

def test_spectra_png_and_pdf(sampled, tmp_path):
    made(run("plot", sampled, "-o", tmp_path / "spectra.png"), tmp_path / "spectra.png")
    made(run("plot", sampled, "-o", tmp_path / "spectra.pdf", "--linear"),
         tmp_path / "spectra.pdf", PDF)
    made(run("plot", sampled, "-o", tmp_path / "again.pdf", "--linear"),
         tmp_path / "again.pdf", PDF)   # no dates inside: the same bytes every time
    assert (tmp_path / "again.pdf").read_bytes() == (tmp_path / "spectra.pdf").read_bytes()


def test_format_option_and_stdout(sampled, tmp_path):
    """--format overrides the extension; '-o -' writes the image to stdout (a pipe here)."""
    out = tmp_path / "image.bin"
    made(run("plot", sampled, "-o", out, "--format", "pdf"), out, PDF)
    r = run("plot", "-", "-o", "-", "--rows", "1", stdin=open(sampled, "rb").read())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(PNG)
    r = run("plot", sampled, "-o", "-", "--format", "svg")
    assert r.returncode == 0, r.stderr.decode()
    assert b"<svg" in r.stdout[:1000]


def test_rows_and_where(sampled, tmp_path):
    made(run("plot", sampled, "--rows", "0,3,39", "-o", tmp_path / "rows.png"),
         tmp_path / "rows.png")
    made(run("plot", sampled, "--where", "teff < 5000 and (logg > 2 or fe_h < -1)",
             "-o", tmp_path / "where.png"), tmp_path / "where.png")


def test_where_caps_the_spectra_with_a_warning(sampled, tmp_path):
    err = made(run("plot", sampled, "--where", "teff > 0", "-o", tmp_path / "all.png"),
               tmp_path / "all.png")
    assert "drawing the first 20" in err
    assert run("plot", sampled, "--where", "teff > 0", "-q", "-o",
               tmp_path / "quiet.png").stderr == b""


def test_coefficients_are_sampled_first(continuous, tmp_path):
    err = made(run("plot", continuous, "-o", tmp_path / "coefficients.png"),
               tmp_path / "coefficients.png")
    assert "1 of 4 rows lack a usable BP or RP spectrum" in err


def test_kiel(sampled, tmp_path):
    made(run("plot", sampled, "--kiel", "-o", tmp_path / "kiel.png"), tmp_path / "kiel.png")
    made(run("plot", sampled, "--kiel", "--spectra", "--where", "logg > 3",
             "-o", tmp_path / "both.pdf"), tmp_path / "both.pdf", PDF)


def test_kiel_of_prefixed_labels_without_spectra(tmp_path):
    """A table of labels alone (no spectra); the one prefixed set is found, or named."""
    rng = np.random.default_rng(1)
    t = Table()
    t.add_column("source_id", np.arange(50, dtype=np.int64))
    for prefix in ("apogee", "msa"):
        t.add_column(f"{prefix}_teff", rng.uniform(3500, 7000, 50))
        t.add_column(f"{prefix}_logg", rng.uniform(0.5, 5, 50))
    t.add_column("msa_fe_h", rng.uniform(-2, 0.5, 50))
    path = tmp_path / "labels.csv"
    write_table(t, str(path))
    failed(run("plot", path, "--kiel", "-o", tmp_path / "k.png"), tmp_path / "k.png",
           "apogee_teff, msa_teff", "--prefix")
    made(run("plot", path, "--kiel", "--prefix", "msa", "-o", tmp_path / "k.png"),
         tmp_path / "k.png")
    made(run("plot", path, "--kiel", "--prefix", "apogee_", "--rows", "1,2",
             "-o", tmp_path / "apogee.png"), tmp_path / "apogee.png")
    failed(run("plot", path, "-o", tmp_path / "s.png"), tmp_path / "s.png",
           "no XP spectra to draw", "--kiel")


def test_reconstruct(sampled, continuous, tmp_path):
    made(run("plot", sampled, "--reconstruct", "--kiel", "--rows", "2,7",
             "-o", tmp_path / "rec.png"), tmp_path / "rec.png")
    made(run("plot", continuous, "--reconstruct", "-o", tmp_path / "rec.pdf"),
         tmp_path / "rec.pdf", PDF)


def test_overwrite(sampled, tmp_path):
    out = tmp_path / "spectra.png"
    out.write_bytes(b"old")
    failed(run("plot", sampled, "-o", out), None, "exists", "--overwrite")
    assert out.read_bytes() == b"old"
    odd = tmp_path / "stars $x^$.fits"       # the title shows a file name as it is, not as math
    odd.write_bytes(open(sampled, "rb").read())
    made(run("plot", odd, "-o", out, "--overwrite"), out)


# -- bad input: one line, exit 1, nothing written ------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["-o", "{out}.jpg"], ["cannot tell the image format", ".png, .pdf or .svg"]),
    (["--format", "gif"], ["--format 'gif'"]),
    (["--rows", "40"], ["no row 40", "40 rows"]),
    (["--rows", "1,x"], ["'x' is not a row number"]),
    (["--rows", "-1"], ["start at 0"]),
    (["--rows", "1", "--where", "teff<5000"], ["--rows or --where"]),
    (["--where", "tef < 5000"], ["no column 'tef'", "'teff'"]),
    (["--where", "teff <"], ["ends too early"]),
    (["--where", "teff < 5000 logg"], ["unexpected 'logg'"]),
    (["--where", "teff; import os"], ["cannot read"]),
    (["--where", "flux > 0"], ["'flux'", "array per row"]),
    (["--where", "teff < 10"], ["no row", "matches"]),
    (["--kiel", "--prefix", "nope"], ["no column 'nope_teff'"]),
    (["--prefix", "x"], ["--prefix", "--kiel"]),
    (["--model", "x"], ["--model is for --reconstruct"]),
    (["--spectra"], ["--spectra is for --kiel"]),
])
def test_bad_options(sampled, tmp_path, args, fragments):
    out = tmp_path / "out.png"
    args = [a.format(out=tmp_path / "out") for a in args]
    if "-o" not in args:
        args += ["-o", str(out)]
    failed(run("plot", sampled, *args), out, *fragments)


def test_bad_tables(continuous, tmp_path):
    out = tmp_path / "out.png"
    empty = tmp_path / "empty.fits"
    write_table(synthetic_sampled(n=3).rows(slice(0, 0)), str(empty))
    failed(run("plot", empty, "-o", out), out, "no rows")
    failed(run("plot", continuous, "--kiel", "-o", out), out, "no teff and logg")
    failed(run("plot", tmp_path / "missing.fits", "-o", out), out, "no such file")
    failed(run("plot", EXAMPLE, "-o", tmp_path / "nowhere" / "out.png"), None,
           "does not exist")
    t = synthetic_sampled(n=3)
    t.remove_columns(["flux_error"])
    path = tmp_path / "noerror.fits"
    write_table(t, str(path))
    made(run("plot", path, "-o", out), out)          # drawn without a band
    os.remove(out)
    failed(run("plot", path, "--reconstruct", "-o", out), out, "flux_error")


def test_plot_module_imports_no_matplotlib():
    """Importing xptools.plot (and the row filter other commands use) must stay cheap."""
    code = "import sys, xptools.plot, xptools.where; print('matplotlib' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# -- the pieces, in process ----------------------------------------------------------------

def filter_table():
    t = Table()
    t.add_column("teff", np.array([4000.0, 5000.0, np.nan, 6000.0]))
    t.add_column("logg", np.array([1.0, 4.5, 4.0, 4.2]))
    t.add_column("source_id", np.array([2**62 + 1, 2**62 + 2, 3, 4], dtype=np.int64))
    t.add_column("kind", np.array(["giant", "dwarf", "dwarf", "dwarf "]))
    t.add_column("n", np.array([1, -1, 0, 7], dtype=np.int32), null=-1)
    return t


@pytest.mark.parametrize("text, rows", [
    ("teff < 5000", [0]),
    ("teff<=5000", [0, 1]),
    ("teff != 5000", [0, 3]),                      # NaN never matches, != included
    ("not teff != 5000", [1, 2]),
    ("logg > 4 and teff > 4500 or teff < 4500", [0, 1, 3]),
    ("logg > 4 and (teff > 4500 or teff < 4500)", [1, 3]),
    ("4500 < teff < 5500", [1]),
    ("teff >= 4.5e3 AND logg = 4.5", [1]),
    ("source_id == 4611686018427387906", [1]),   # 2**62 + 2: exact, not via float64
    ("kind == 'dwarf'", [1, 2, 3]),
    ("kind != \"dwarf\"", [0]),
    ("n >= 0", [0, 2, 3]),                        # -1 is the null value
    ("`teff` > 5500", [3]),
    ("source_id < 99999999999999999999999", [0, 1, 2, 3]),   # beyond int64: as float
    ("logg > teff", []),
])
def test_row_filter(text, rows):
    from xptools.where import RowFilter

    where = RowFilter(text)
    table = filter_table()
    where.check(table, "t")
    assert np.flatnonzero(where(table)).tolist() == rows


@pytest.mark.parametrize("text, fragment", [
    ("", "empty filter"),
    ("teff", "not compared"),
    ("1 < 2", "needs a column"),
    ("(teff < 1", "not closed"),
    ("teff < 1)", "unexpected ')'"),
    ("kind < 'a'", "only be compared with == or !="),
    ("__import__('os')", "not compared"),
    ("teff < 1 or", "ends too early"),
])
def test_row_filter_syntax_errors(text, fragment):
    from xptools.where import RowFilter

    with pytest.raises(UserError, match="--where") as e:
        RowFilter(text)
    assert fragment in str(e.value)


def test_row_filter_type_errors():
    from xptools.where import RowFilter

    table = filter_table()
    with pytest.raises(UserError, match="holds text"):
        RowFilter("kind == 3")(table)
    with pytest.raises(UserError, match="holds numbers"):
        RowFilter("teff == 'hot'")(table)
    with pytest.raises(UserError, match="calibrate --where"):
        RowFilter("teff <", option="calibrate --where")


def test_reconstruction_residuals_match_chi2():
    """The residual panel's (x - x_hat) / sqrt(sigma^2 + s_hat^2) has chi2 as mean square:
    the numbers are `xptools generate --reconstruct`'s."""
    from xptools import models
    from xptools.io import open_table
    from xptools.plot import read_rows, reconstruct, sampled_spectra

    model = models.load(models.default_path("generate"))
    with open_table(EXAMPLE) as src:
        selection = read_rows(src, rows=[4, 1], extra=(model.features.reference,))
    assert selection.rows == [4, 1]
    spectra, table = sampled_spectra(selection.table, selection.rows, "example", print)
    rec = reconstruct(model, table, spectra, "example")
    assert np.isfinite(rec.chi2).all()
    np.testing.assert_allclose(np.mean(rec.residual ** 2, axis=1), rec.chi2, rtol=1e-3)
    assert spectra.flux.shape == (2, 343) and rec.flux.shape == (2, 115)


def test_read_rows_keeps_the_chosen_rows():
    from xptools.io import open_table
    from xptools.plot import read_rows
    from xptools.where import RowFilter

    with open_table(EXAMPLE) as src:
        ids = src.read(["source_id"])["source_id"]
    with open_table(EXAMPLE) as src:
        chosen = read_rows(src, rows=[150, 3, 77], chunk_rows=40)
    assert chosen.table["source_id"].tolist() == ids[[150, 3, 77]].tolist()
    with open_table(EXAMPLE) as src:
        first = read_rows(src, chunk_rows=3)
    assert first.rows == [0, 1, 2, 3, 4] and len(first.table) == 5
    with open_table(EXAMPLE) as src:
        where = read_rows(src, where=RowFilter("apogee_teff < 4000"), chunk_rows=30,
                          labels={"teff": "apogee_teff", "logg": "apogee_logg",
                                  "fe_h": "apogee_fe_h"})
    with open_table(EXAMPLE) as src:
        teff = src.read(["apogee_teff"])["apogee_teff"]
    assert where.rows == np.flatnonzero(teff < 4000)[:20].tolist()
    assert where.matched == int(np.sum(teff < 4000)) and where.complete
    assert len(where.labels.array("teff")) == 200
