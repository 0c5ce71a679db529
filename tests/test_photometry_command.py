"""xptools photometry: GaiaXPy's generate run live on the same rows (every system, with and
without error correction and truncation, a missing band), bad input, options.

(tests/test_photometry.py is about xptools.photometry, the G/BP/RP flux excess.)
"""

import os

import numpy as np
import pytest

from conftest import run, synthetic_continuous
from xptools.io import read_table, write_table

FLUX_RTOL, ERROR_RTOL, MAG_ATOL = 1e-10, 1e-8, 1e-9   # the limits
FIVE = ["JKC_Std", "SDSS_Std", "PanSTARRS1_Std", "Gaia_DR3_Vega", "Stromgren_Std"]


def reference_input(shared, name):
    return os.path.join(shared, "gaiaxpy_reference", "xp_continuous", name)


def all_systems():
    from xptools.synthetic import load_systems

    return list(load_systems())


def generate(source, systems, **options):
    """gaiaxpy.generate, run here, its printing silenced."""
    import gaiaxpy

    from xptools.basis import silenced

    with silenced():
        return gaiaxpy.generate(source, [gaiaxpy.PhotometricSystem[s] for s in systems],
                                save_file=False, **options)


def assert_equals_gaiaxpy(ours, theirs, error_rtol=ERROR_RTOL):
    """Every GaiaXPy column is in our output, NaN in the same places, within the limits."""
    np.testing.assert_array_equal(np.asarray(ours["source_id"]),
                                  theirs["source_id"].to_numpy(np.int64))
    for column in theirs.columns[1:]:
        a = np.asarray(ours[column], np.float64)
        b = theirs[column].to_numpy(np.float64)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=column)
        ok = np.isfinite(b)
        if "_mag_" in column:
            np.testing.assert_allclose(a[ok], b[ok], rtol=0, atol=MAG_ATOL, err_msg=column)
        else:
            rtol = error_rtol if "_flux_error_" in column else FLUX_RTOL
            np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=0, err_msg=column)


def assert_clean_failure(result, output, *fragments):
    """One line on stderr, exit 1, no traceback, no output (test_bad_input.py's rule)."""
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("xptools photometry: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    assert not os.path.exists(output)
    assert not [f for f in os.listdir(os.path.dirname(output)) if f.endswith(".part")]


def photometry(tmp_path, src, *options, out="out.fits"):
    path = tmp_path / out
    r = run("photometry", src, "-o", path, *options)
    assert r.returncode == 0, r.stderr.decode()
    return read_table(str(path)), r


# -- against GaiaXPy, live ---------------------------------------------------------------------

@pytest.mark.parametrize("options", [[], ["--error-correction"], ["--truncate"],
                                     ["--error-correction", "--truncate"]])
def test_every_system_equals_gaiaxpy(shared, tmp_path, options):
    """Three real sources (one without BP) in all 28 systems. GaiaXPy reads CSV in float64,
    as xptools does, so the two agree to rounding."""
    src = reference_input(shared, "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    systems = all_systems()
    assert len(systems) == 28
    ours, r = photometry(tmp_path, src, "--system", ",".join(systems), *options)
    theirs = generate(src, systems, error_correction="--error-correction" in options,
                      truncation="--truncate" in options)
    assert_equals_gaiaxpy(ours, theirs)
    assert list(ours["photometry_flag"]) == [0, 1, 0]
    assert b"1 of 3 rows lack a usable BP or RP spectrum" in r.stderr


def test_fits_input_equals_gaiaxpy_given_the_same_numbers(shared, tmp_path):
    """From FITS, GaiaXPy divides the float32 coefficient errors by the standard deviation in
    float32: its flux errors round at ~3e-8. Given the numbers xptools reads (float64), it
    agrees to the limits."""
    from xptools.synthetic import gaiaxpy_input

    src = reference_input(shared, "XP_CONTINUOUS_RAW_with_missing_BP.fits")
    ours, _ = photometry(tmp_path, src, "-s", ",".join(FIVE), "--error-correction")
    same = gaiaxpy_input(read_table(src), src)
    assert_equals_gaiaxpy(ours, generate(same, FIVE, error_correction=True))
    assert_equals_gaiaxpy(ours, generate(src, FIVE, error_correction=True), error_rtol=1e-7)


def test_real_sources_with_missing_bands_equal_gaiaxpy(shared, tmp_path):
    """40 real sources (one column per coefficient, no correlations), BP removed from one and
    RP from another, five systems with error correction and truncation."""
    from xptools.synthetic import gaiaxpy_input

    t = read_table(os.path.join(shared, "xp_continuous", "xp_continuous_2000.fits"))
    t = t.rows(np.arange(40))
    for band, row in (("bp", 3), ("rp", 5)):
        for i in range(55):
            for name in (f"{band}_coeff_{i}", f"e_{band}_coeff_{i}"):
                t[name][row] = np.nan
    src = tmp_path / "real.fits"
    write_table(t, str(src))
    ours, r = photometry(tmp_path, src, "-s", ",".join(FIVE), "--error-correction",
                         "--truncate", "--drop-coefficients")
    assert b"no coefficient correlations" in r.stderr
    theirs = generate(gaiaxpy_input(t), FIVE, error_correction=True, truncation=True)
    assert_equals_gaiaxpy(ours, theirs)
    flags = np.asarray(ours["photometry_flag"])
    assert flags[3] & 1 and flags[5] & 2 and not (flags[[0, 1, 2, 4]] & 3).any()
    assert ours.meta["XPERRCOR"] == "diagonal"


# -- the systems -------------------------------------------------------------------------------

def test_list_prints_every_system_and_its_bands():
    import gaiaxpy

    r = run("photometry", "--list")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    for system in gaiaxpy.PhotometricSystem:
        line = next(line for line in text.splitlines() if line.split()[:1] == [system.name])
        assert line.endswith(" ".join(system.get_bands())), line
    assert "JkcStd_*" in text and "W m-2 Hz-1" in text and r.stderr == b""


def test_systems_are_cached_so_later_runs_do_not_import_gaiaxpy():
    import subprocess
    import sys

    code = ("import sys; from xptools.synthetic import load_systems; "
            "print(len(load_systems()), 'gaiaxpy' in sys.modules)")
    for _ in range(2):  # the first run may build the cache
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["28", "False"]
    names = [f for f in os.listdir(os.environ["XPTOOLS_CACHE"]) if f.startswith("photometry-")]
    assert len(names) == 1 and names[0].endswith(".npz")


def test_system_names_any_case_and_labels(tmp_path, continuous_fits):
    o, _ = photometry(tmp_path, continuous_fits, "--system", "jkc_std,SdssStd", "-s", "JKC_Std")
    assert o.meta["XPPHOTSY"] == "JKC_Std,SDSS_Std"
    assert "JkcStd_mag_U" in o and "SdssStd_flux_error_z" in o
    assert o.info["JkcStd_mag_U"].unit == "mag"
    assert o.info["JkcStd_flux_U"].unit == "W m-2 nm-1"
    assert o.info["SdssStd_flux_u"].unit == "W m-2 Hz-1"
    assert "xptools photometry --help" in o.info["photometry_flag"].description


def test_unknown_system_is_one_line_with_close_names(tmp_path, continuous_fits):
    out = tmp_path / "out.fits"
    assert_clean_failure(run("photometry", continuous_fits, "-s", "JKC_Std,Sdss_Sdt", "-o", out),
                         out, "'Sdss_Sdt': no such photometric system",
                         "did you mean SDSS_Std", "--list")


@pytest.mark.parametrize("args, message", [
    ([], "give a table of XP coefficients and --system"),
    (["IN"], "give a table of XP coefficients and --system"),
    (["IN", "--list"], "--list takes no input table"),
])
def test_missing_options(tmp_path, continuous_fits, args, message):
    out = tmp_path / "out.fits"
    args = [str(continuous_fits) if a == "IN" else a for a in args]
    assert_clean_failure(run("photometry", *args, "-o", out), out, message)


# -- the computation ---------------------------------------------------------------------------

def test_error_correction_factors_as_gaiaxpy_picks_them():
    """The bins of a toy table: first bin before it, last beyond it or for NaN G, the bin's
    own factors up to its centre, then linear to the next bin's factors at its edge."""
    from xptools.synthetic import ErrorCorrection

    table = ErrorCorrection(np.array([4.0, 5.0, 6.0]), np.array([5.0, 6.0, 7.0]),
                            np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]]))
    g = np.array([np.nan, 3.0, 4.2, 4.5, 4.75, 5.5, 5.8, 6.9, 7.0, 8.0])
    expected = np.array([4, 1, 1, 1, 1.5, 2, 2 + 2 * 0.3 / 0.5, 4, 4, 4.0])
    np.testing.assert_allclose(table.at(g), np.stack([expected, 10 * expected], 1),
                               rtol=1e-14)


def test_non_positive_flux_gives_nan_magnitude_and_bit_4(shared, tmp_path):
    t = read_table(reference_input(shared, "XP_CONTINUOUS_RAW_with_missing_BP.fits"))
    t["bp_coefficients"][2] *= -1  # BP flux negative: U and B below zero, not R and I
    src = tmp_path / "neg.fits"
    write_table(t, str(src))
    o, r = photometry(tmp_path, src, "-s", "JKC,JKC_Std")
    assert list(o["photometry_flag"]) == [0, 1, 4]
    assert np.isnan(o["Jkc_mag_U"][2]) and o["Jkc_flux_U"][2] < 0
    assert np.isfinite(o["Jkc_flux_error_U"][2]) and np.isfinite(o["Jkc_mag_I"][2])
    # JKC_Std's U needs B - V: without a B magnitude its colour equation leaves U all NaN
    assert np.isnan([o[f"JkcStd_{k}_U"][2] for k in ("mag", "flux", "flux_error")]).all()
    assert b"1 of 3 rows have a band with zero or negative flux" in r.stderr


def test_passthrough_provenance_and_chunks(tmp_path, continuous_fits):
    o, _ = photometry(tmp_path, continuous_fits, "-s", "JKC_Std")
    src = read_table(str(continuous_fits))
    for name in src.colnames:  # every input column, coefficients included
        np.testing.assert_array_equal(o[name], src[name])
    assert o.info["ra"].unit == "deg"
    assert o.colnames[-1] == "photometry_flag"
    assert o.colnames[len(src.colnames):len(src.colnames) + 5] == \
        [f"JkcStd_mag_{b}" for b in "UBVRI"]  # GaiaXPy's order: magnitudes, fluxes, errors
    assert [int(f) & 3 for f in o["photometry_flag"]] == [0, 0, 1, 0, 0]  # made-up spectra:
    # some of their bands have negative flux (bit 4)
    assert o.meta["XPTCMD"].startswith("xptools photometry") and o.meta["GAIAXPY"]
    assert o.meta["XPERRINF"] in (False, 0) and o.meta["XPTRUNC"] in (False, 0)
    small, _ = photometry(tmp_path, continuous_fits, "-s", "JKC_Std", "--chunk-rows", "2",
                          "--drop-coefficients", out="small.fits")
    assert "bp_coefficients" not in small and "bp_n_relevant_bases" in small
    np.testing.assert_allclose(small["JkcStd_flux_error_V"], o["JkcStd_flux_error_V"],
                               rtol=1e-13)
    np.testing.assert_array_equal(small["JkcStd_mag_U"], o["JkcStd_mag_U"])


def test_empty_table_gives_empty_output(tmp_path):
    src = tmp_path / "empty.fits"
    write_table(synthetic_continuous(n=3).rows(slice(0, 0)), str(src))
    o, _ = photometry(tmp_path, src, "-s", "JKC_Std", "--error-correction")
    assert len(o) == 0 and "JkcStd_mag_U" in o and "photometry_flag" in o


def test_pipeline_through_stdin_and_stdout(tmp_path, continuous_fits):
    first = run("photometry", continuous_fits, "-s", "Gaia_DR3_Vega")
    assert first.returncode == 0 and first.stdout.startswith(b"SIMPLE  =")
    second = run("photometry", "-", "-s", "SDSS_Std", "--format", "ecsv",
                 "--drop-coefficients", stdin=first.stdout)
    assert second.returncode == 0, second.stderr
    assert "XPPHOTSY: Gaia_DR3_Vega,SDSS_Std" in second.stdout.decode()
    lines = [line for line in second.stdout.decode().splitlines() if not line.startswith("#")]
    header = lines[0].split(",")
    assert "GaiaDr3Vega_mag_G" in header and "SdssStd_mag_u" in header
    # the second run adds its systems and combines its flag bits with the first's
    assert header.count("photometry_flag") == 1 and header[-1] == "photometry_flag"
    assert [int(line.split(",")[-1]) & 3 for line in lines[1:]] == [0, 0, 1, 0, 0]


# -- bad input: the cases and messages of `sample` ---------------------------------------------

def fails(tmp_path, table_or_path, *fragments, options=("-s", "JKC_Std")):
    src = table_or_path
    if not isinstance(table_or_path, (str, os.PathLike)):
        src = tmp_path / "in.fits"
        write_table(table_or_path, str(src), overwrite=True)
    out = tmp_path / "out.fits"
    assert_clean_failure(run("photometry", src, *options, "-o", out), out, *fragments)


def test_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    fails(tmp_path, empty, str(empty), "empty file")
    cut = tmp_path / "cut.fits"
    write_table(synthetic_continuous(n=50), str(cut))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    fails(tmp_path, cut, str(cut), "truncated FITS")


def test_missing_column_and_wrong_length(tmp_path):
    t = synthetic_continuous(n=3)
    t.remove_columns(["rp_coefficient_errors"])
    fails(tmp_path, t, "missing column 'rp_coefficient_errors'")
    t = synthetic_continuous(n=3, correlations=False)
    t.columns["bp_coefficients"] = t["bp_coefficients"][:, :50]
    fails(tmp_path, t, "'bp_coefficients' has 50 values per row, expected 55")


def test_a_table_without_a_band_is_an_error(tmp_path):
    t = synthetic_continuous(n=3)
    t.remove_columns(["bp_coefficients", "bp_coefficient_errors",
                      "bp_coefficient_correlations", "bp_standard_deviation",
                      "bp_n_relevant_bases"])
    fails(tmp_path, t, "no BP spectra: missing column 'bp_coefficients'",
          "synthetic photometry needs both BP and RP")


def test_nan_coefficients_are_flagged_or_fail_with_strict(tmp_path):
    t = synthetic_continuous(n=4)
    t["rp_coefficients"][2, 7] = np.nan
    src = tmp_path / "nan.fits"
    write_table(t, str(src))
    o, r = photometry(tmp_path, src, "-s", "SDSS_Std", out="flagged.fits")
    assert b"first at row 2" in r.stderr and b"NaN or infinite" in r.stderr
    assert [int(f) & 3 for f in o["photometry_flag"]] == [0, 0, 2, 0]
    assert np.isnan(o["SdssStd_mag_g"][2]) and np.isnan(o["SdssStd_flux_u"][2])
    fails(tmp_path, src, "row 2", "NaN or infinite values in the RP coefficients",
          options=("-s", "SDSS_Std", "--strict"))


def test_truncate_needs_n_relevant_bases(tmp_path):
    t = synthetic_continuous(n=3)
    t.remove_columns(["bp_n_relevant_bases", "rp_n_relevant_bases"])
    fails(tmp_path, t, "--truncate needs bp/rp_n_relevant_bases columns",
          options=("-s", "JKC", "--truncate"))


def test_output_limits_and_clashes(tmp_path, shared):
    per_coefficient = read_table(os.path.join(shared, "xp_continuous",
                                              "xp_continuous_2000.fits")).rows(slice(0, 3))
    fails(tmp_path, per_coefficient, "FITS holds at most 999", "--drop-coefficients",
          options=("-s", ",".join(all_systems())))
    t = synthetic_continuous(n=3)
    t.add_column("JkcStd_mag_V", np.zeros(3))
    fails(tmp_path, t, "already has a column 'JkcStd_mag_V'")
