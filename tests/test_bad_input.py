"""Bad input to `xptools sample`: one line on stderr naming the file and the problem, exit 1,
no traceback, and no output file left behind."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run, synthetic_continuous
from xptools.io import read_table, write_table


def assert_clean_failure(result, output, *fragments):
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1, err          # one line
    assert "Traceback" not in err
    assert err.startswith("xptools sample: error: ")
    for fragment in fragments:
        assert fragment in err, err
    assert not os.path.exists(output)
    assert not [f for f in os.listdir(os.path.dirname(output)) if f.endswith(".part")]


def test_empty_file(tmp_path):
    src, out = tmp_path / "empty.fits", tmp_path / "out.fits"
    src.write_bytes(b"")
    assert_clean_failure(run("sample", src, "-o", out), out, str(src), "empty file")


def test_truncated_fits(tmp_path):
    src, out = tmp_path / "cut.fits", tmp_path / "out.fits"
    write_table(synthetic_continuous(n=50), str(src))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert_clean_failure(run("sample", src, "-o", out), out, str(src), "truncated FITS")


def test_csv_with_malformed_array_cell(tmp_path):
    good = tmp_path / "good.csv"
    write_table(synthetic_continuous(n=3, correlations=False), str(good))
    lines = good.read_text().splitlines()
    lines[2] = lines[2].replace(", ", ", x", 1)  # a non-number inside an array, line 3
    src, out = tmp_path / "bad.csv", tmp_path / "out.fits"
    src.write_text("\n".join(lines) + "\n")
    assert_clean_failure(run("sample", src, "-o", out), out, str(src), "line 3",
                         "malformed array cell")


def test_csv_with_unclosed_array_cell(tmp_path):
    src, out = tmp_path / "bad.csv", tmp_path / "out.fits"
    src.write_text('source_id,bp_coefficients\n1,"(1.0, 2.0"\n')
    assert_clean_failure(run("sample", src, "-o", out), out, str(src), "line 2",
                         "malformed array cell")


def test_missing_coefficient_columns(tmp_path):
    t = synthetic_continuous(n=3)
    t.remove_columns(["rp_coefficient_errors"])
    src, out = tmp_path / "no_errors.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    assert_clean_failure(run("sample", src, "-o", out), out, str(src),
                         "missing column 'rp_coefficient_errors'")


@pytest.mark.parametrize("columns", [["bp_coefficients"], ["bp_coefficients",
                                     "bp_coefficient_errors", "bp_coefficient_correlations",
                                     "bp_standard_deviation", "bp_n_relevant_bases"]])
def test_a_table_without_a_band_is_an_error(tmp_path, columns):
    t = synthetic_continuous(n=3)
    t.remove_columns(columns)  # renamed away or never there: not the same as a missing band
    src, out = tmp_path / "no_bp.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    assert_clean_failure(run("sample", src, "-o", out), out, str(src),
                         "no BP spectra: missing column 'bp_coefficients'", "--band rp")
    r = run("sample", src, "-o", out, "--band", "rp")
    assert r.returncode == 0, r.stderr
    assert read_table(str(out)).meta["XPBANDS"] == "rp"


def test_models_refuse_a_table_without_a_band(tmp_path):
    t = synthetic_continuous(n=3)
    t.remove_columns(["rp_coefficients"])
    src = tmp_path / "no_rp.fits"
    write_table(t, str(src))
    for command in ("infer", "embed"):
        r = run(command, src, "-o", tmp_path / f"{command}.fits")
        assert r.returncode == 1 and b"no RP spectra: missing column 'rp_coefficients'" \
            in r.stderr, r.stderr


def test_null_n_relevant_bases_of_a_missing_band_warn_nothing(tmp_path):
    t = synthetic_continuous(n=3, missing_bp=(1,))
    n_relevant = t["bp_n_relevant_bases"].astype(float)
    n_relevant[1] = np.nan  # how a text file or astropy gives a null integer
    t.columns["bp_n_relevant_bases"] = n_relevant
    src, out = tmp_path / "null.csv", tmp_path / "out.fits"
    write_table(t, str(src))
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "xptools",
                        "sample", src, "-o", out, "--truncate"], capture_output=True)
    assert r.returncode == 0 and b"RuntimeWarning" not in r.stderr, r.stderr
    assert list(read_table(str(out))["sample_flag"]) == [0, 1, 0]


def test_no_xp_columns_at_all(tmp_path):
    src, out = tmp_path / "plain.csv", tmp_path / "out.fits"
    src.write_text("source_id,ra,dec\n1,10.0,20.0\n")
    assert_clean_failure(run("sample", src, "-o", out), out, str(src),
                         "no XP continuous spectra")


def test_wrong_array_length(tmp_path):
    t = synthetic_continuous(n=3, correlations=False)
    t.columns["bp_coefficients"] = t["bp_coefficients"][:, :50]
    src, out = tmp_path / "short.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    assert_clean_failure(run("sample", src, "-o", out), out, str(src),
                         "'bp_coefficients' has 50 values per row, expected 55")


def test_nan_coefficients_are_flagged_by_default(tmp_path):
    t = synthetic_continuous(n=4)
    t["rp_coefficients"][2, 7] = np.nan  # corrupt, not a missing band
    src, out = tmp_path / "nan.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    r = run("sample", src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert b"first at row 2" in r.stderr and b"NaN or infinite" in r.stderr
    o = read_table(str(out))
    assert list(o["sample_flag"]) == [0, 0, 2, 0]
    assert len(o) == 4 and np.isfinite(o["flux"][[0, 1, 3]]).all()
    assert np.isnan(o["flux"][2][-50:]).all()  # RP's range is NaN, BP's alone remains


def test_nan_coefficients_fail_with_strict(tmp_path):
    t = synthetic_continuous(n=4)
    t["bp_coefficients"][1, 0] = np.nan
    src, out = tmp_path / "nan.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    assert_clean_failure(run("sample", src, "--strict", "-o", out), out, str(src), "row 1",
                         "NaN or infinite values in the BP coefficients")


def test_unknown_format(tmp_path):
    src, out = tmp_path / "data.xyz", tmp_path / "out.fits"
    src.write_bytes(bytes(range(256)) * 4)
    assert_clean_failure(run("sample", src, "-o", out), out, str(src), "unknown table format")


@pytest.mark.parametrize("option", [["--format", "arrow"], ["--input-format", "xls"]])
def test_unknown_format_option(tmp_path, continuous_fits, option):
    out = tmp_path / "out.fits"
    assert_clean_failure(run("sample", continuous_fits, "-o", out, *option), out,
                         "unknown format")


def test_unknown_output_extension(tmp_path, continuous_fits):
    out = tmp_path / "out.dat"
    assert_clean_failure(run("sample", continuous_fits, "-o", out), out,
                         "cannot tell the output format")


def test_missing_input_file(tmp_path):
    out = tmp_path / "out.fits"
    assert_clean_failure(run("sample", tmp_path / "nope.fits", "-o", out), out, "no such file")


def test_verbose_adds_the_traceback(tmp_path):
    src = tmp_path / "empty.fits"
    src.write_bytes(b"")
    r = run("sample", src, "-o", tmp_path / "out.fits", "--verbose")
    assert r.returncode == 1 and b"Traceback" in r.stderr


def test_help_imports_no_heavy_package():
    """`xptools --help` stays instant: torch, astropy, gaiaxpy, h5py and fitsio are imported
    inside the commands that need them, never by the CLI module itself."""
    code = ("import sys; import xptools.cli; "
            "print(' '.join(m for m in ('torch', 'astropy', 'gaiaxpy', 'h5py', 'fitsio', "
            "'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == []


def test_every_command_applies_one_rule_for_a_usable_spectrum(tmp_path):
    """All-zero or all-negative flux is no spectrum: infer, embed and generate --reconstruct
    all flag it 'no usable XP' (bit 1), as sample does for all-zero coefficients."""
    from conftest import synthetic_sampled

    t = synthetic_sampled(4)
    t.remove_columns(["teff", "teff_err", "logg", "logg_err"])
    t["flux"][1] = 0.0
    t["flux"][2] = -np.abs(t["flux"][2])
    src = tmp_path / "odd.fits"
    write_table(t, str(src))
    for command, flag in (("infer", "infer_flag"), ("embed", "embed_flag"),
                          ("generate", "generate_flag")):
        args = ["--reconstruct"] if command == "generate" else []
        r = run(command, *args, src, "-o", tmp_path / f"{command}.fits")
        assert r.returncode == 0, r.stderr
        flags = read_table(str(tmp_path / f"{command}.fits"))[flag]
        assert [int(f) & 1 for f in flags] == [0, 1, 1, 0], (command, flags)
    z = read_table(str(tmp_path / "embed.fits"))["z"]
    assert np.isnan(z[1:3]).all() and np.isfinite(z[[0, 3]]).all()
    c = synthetic_continuous(n=3)
    c["bp_coefficients"][1] = 0.0
    write_table(c, str(tmp_path / "zero.fits"))
    r = run("sample", tmp_path / "zero.fits", "-o", tmp_path / "zero_sampled.fits")
    assert r.returncode == 0, r.stderr
    assert list(read_table(str(tmp_path / "zero_sampled.fits"))["sample_flag"]) == [0, 1, 0]
