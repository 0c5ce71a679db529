"""xptools sample against GaiaXPy's own reference outputs, and its options."""

import os

import numpy as np
import pytest

from conftest import run, synthetic_continuous
from xptools.io import read_table, write_table

REF = ("gaiaxpy_reference",)
INPUTS = ["XP_CONTINUOUS_RAW.csv", "XP_CONTINUOUS_RAW.ecsv", "XP_CONTINUOUS_RAW.fits",
          "XP_CONTINUOUS_RAW.xml", "XP_CONTINUOUS_RAW_plain.xml"]
MISSING = ["XP_CONTINUOUS_RAW_with_missing_BP.csv", "XP_CONTINUOUS_RAW_with_missing_BP.ecsv",
           "XP_CONTINUOUS_RAW_with_missing_BP.fits", "XP_CONTINUOUS_RAW_with_missing_BP.xml",
           "XP_CONTINUOUS_RAW_with_missing_BP_plain.xml"]
MISSING_ISOLATED = ["XP_CONTINUOUS_RAW_missing_BP_dr3int6.csv",
                    "XP_CONTINUOUS_RAW_missing_BP_dr3int6.ecsv",
                    "XP_CONTINUOUS_RAW_missing_BP_dr3int6.fits",
                    "XP_CONTINUOUS_RAW_missing_BP_dr3int6.xml"]
FLUX_RTOL = 1e-8    # the acceptance limits
ERROR_RTOL = 1e-6


def reference(shared, *path):
    """GaiaXPy's expected output: source_id, xp (if any), flux and flux_error arrays."""
    t = read_table(os.path.join(shared, "gaiaxpy_reference", *path))
    return t


def max_relative(actual, expected):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    ok = np.isfinite(expected)
    return float(np.max(np.abs(actual[ok] - expected[ok]) / np.abs(expected[ok])))


def sample(shared, tmp_path, name, *options):
    src = os.path.join(shared, "gaiaxpy_reference", "xp_continuous", name)
    out = tmp_path / "out.fits"
    r = run("sample", src, "-o", out, *options)
    assert r.returncode == 0, r.stderr.decode()
    return read_table(str(out))


@pytest.mark.parametrize("name", INPUTS)
def test_calibrate_default_equals_gaiaxpy(shared, tmp_path, name):
    out = sample(shared, tmp_path, name)
    ref = reference(shared, "calibrator_solution", "calibrator_solution_default.csv")
    np.testing.assert_array_equal(out["source_id"], ref["source_id"])
    assert max_relative(out["flux"], ref["flux"]) <= FLUX_RTOL
    assert max_relative(out["flux_error"], ref["flux_error"]) <= ERROR_RTOL
    assert list(out["sample_flag"]) == [0, 0]
    assert out.meta["WAVEMIN"] == 336.0 and out.meta["WAVEMAX"] == 1020.0
    assert out.meta["XPERRCOR"] == "full"


@pytest.mark.parametrize("name", INPUTS)
def test_calibrate_truncated_equals_gaiaxpy(shared, tmp_path, name):
    out = sample(shared, tmp_path, name, "--truncate")
    ref = reference(shared, "calibrator_solution", "calibrator_solution_truncation_default.csv")
    assert max_relative(out["flux"], ref["flux"]) <= FLUX_RTOL
    assert max_relative(out["flux_error"], ref["flux_error"]) <= ERROR_RTOL
    assert out.meta["XPTRUNC"] in (True, 1)


@pytest.mark.parametrize("name", MISSING)
def test_calibrate_missing_bp_equals_gaiaxpy(shared, tmp_path, name):
    out = sample(shared, tmp_path, name)
    ref = reference(shared, "calibrator_solution", "with_missing_calibrator_solution.csv")
    np.testing.assert_array_equal(out["source_id"], ref["source_id"])
    assert max_relative(out["flux"], ref["flux"]) <= FLUX_RTOL
    assert max_relative(out["flux_error"], ref["flux_error"]) <= ERROR_RTOL
    assert list(out["sample_flag"]) == [0, 1, 0]  # bit 1: no usable BP
    assert np.isnan(out["flux"][1][:150]).all() and np.isfinite(out["flux"][1][-50:]).all()


@pytest.mark.parametrize("name", MISSING_ISOLATED)
def test_calibrate_isolated_missing_bp(shared, tmp_path, name):
    out = sample(shared, tmp_path, name)
    ref = reference(shared, "calibrator_solution", "with_missing_calibrator_solution.csv")
    row = np.flatnonzero(ref["source_id"] == out["source_id"][0])[0]
    assert max_relative(out["flux"][0], ref["flux"][row]) <= FLUX_RTOL
    assert max_relative(out["flux_error"][0], ref["flux_error"][row]) <= ERROR_RTOL


def _internal_reference(ref, band):
    rows = np.char.strip(ref["xp"].astype(str)) == band.upper()
    return ref["source_id"][rows], ref["flux"][rows], ref["flux_error"][rows]


@pytest.mark.parametrize("name", INPUTS)
def test_convert_equals_gaiaxpy(shared, tmp_path, name):
    out = sample(shared, tmp_path, name, "--internal", "--grid", "0:60:0.125")
    ref = reference(shared, "converter_solution", "converter_solution_0_60_481.csv")
    for band in ("bp", "rp"):
        ids, flux, error = _internal_reference(ref, band)
        np.testing.assert_array_equal(out["source_id"], ids)
        assert max_relative(out[f"{band}_flux"], flux) <= FLUX_RTOL
        assert max_relative(out[f"{band}_flux_error"], error) <= ERROR_RTOL
    assert out.meta["PWLMIN"] == 0.0 and out.meta["PWLMAX"] == 60.0


@pytest.mark.parametrize("name", MISSING[:3])
def test_convert_missing_bp_equals_gaiaxpy(shared, tmp_path, name):
    out = sample(shared, tmp_path, name, "--internal")
    ref = reference(shared, "converter_solution", "with_missing_converter_solution.csv")
    for band in ("bp", "rp"):
        ids, flux, error = _internal_reference(ref, band)
        np.testing.assert_array_equal(out["source_id"], ids)
        assert max_relative(out[f"{band}_flux"], flux) <= FLUX_RTOL
        assert max_relative(out[f"{band}_flux_error"], error) <= ERROR_RTOL
    assert np.isnan(out["bp_flux"][1]).all() and list(out["sample_flag"]) == [0, 1, 0]


def test_archive_xp_sampled_product(shared, tmp_path):
    """The archive's own XP_SAMPLED product for the same two sources (its source_ids are
    replaced by 6 and 4 in GaiaXPy's test file; the rows are in the same order). DPAC made it
    in float32 with its own pipeline: it agrees with GaiaXPy to about 1e-4."""
    out = sample(shared, tmp_path, "XP_CONTINUOUS_RAW.fits")
    ref = read_table(os.path.join(shared, "gaiaxpy_reference", "xp_sampled_raw.fits"))
    assert max_relative(out["flux"], ref["flux"]) < 3e-4
    assert max_relative(out["flux_error"], ref["flux_error"]) < 1e-5


def test_overlap_stars_reproduce_library_flux(shared, tmp_path):
    """Coefficients in the one-column-per-coefficient layout -> the APOGEE library's flux."""
    d = np.load(os.path.join(shared, "xp_continuous", "overlap_with_apogee_xp.npz"))
    t = read_table(os.path.join(shared, "xp_continuous", "xp_continuous_2000.fits"))
    rows = [int(np.flatnonzero(t["source_id"] == s)[0]) for s in d["source_id"]]
    path = tmp_path / "two.fits"
    write_table(t.rows(rows), str(path))
    out = tmp_path / "out.fits"
    r = run("sample", path, "-o", out)
    assert r.returncode == 0
    assert b"no coefficient correlations" in r.stderr
    o = read_table(str(out))
    assert o.meta["XPERRCOR"] == "diagonal"
    assert max_relative(o["flux"], d["sampled_flux_Wm2nm"]) <= 1e-5
    np.testing.assert_array_equal(d["wavelength_nm"], np.arange(336, 1021, 2.0))


def test_custom_grid_equals_gaiaxpy(shared, tmp_path, capfd):
    import gaiaxpy

    src = os.path.join(shared, "gaiaxpy_reference", "xp_continuous", "XP_CONTINUOUS_RAW.fits")
    grid = np.arange(400.0, 1000.1, 5.0)
    ref, positions = gaiaxpy.calibrate(src, sampling=grid, save_file=False)
    out = sample(shared, tmp_path, "XP_CONTINUOUS_RAW.fits", "--grid", "400:1000:5")
    np.testing.assert_array_equal(positions, grid)
    assert max_relative(out["flux"], np.stack(ref["flux"])) <= FLUX_RTOL
    assert max_relative(out["flux_error"], np.stack(ref["flux_error"])) <= ERROR_RTOL
    assert out.meta["WAVESTEP"] == 5.0


def test_grid_file_irregular(tmp_path, continuous_fits):
    grid = tmp_path / "grid.txt"
    grid.write_text("# nm\n400\n410.5, 500\n750\n")
    out = tmp_path / "out.h5"
    assert run("sample", continuous_fits, "--grid-file", grid, "-o", out).returncode == 0
    o = read_table(str(out))
    assert o["flux"].shape == (5, 4)
    assert o.meta["WAVEGRID"] == "400.0,410.5,500.0,750.0"


def test_grid_out_of_range_is_a_clear_error(tmp_path, continuous_fits):
    r = run("sample", continuous_fits, "--grid", "100:2000:10", "-o", tmp_path / "o.fits")
    assert r.returncode == 1
    assert b"invalid sampling grid" in r.stderr and r.stderr.count(b"\n") == 1
    assert not (tmp_path / "o.fits").exists()


def test_covariance_diagonal_is_the_error_squared(tmp_path, continuous_fits):
    out = tmp_path / "out.fits"
    r = run("sample", continuous_fits, "--covariance", "--grid", "330:1050:10", "-o", out)
    assert r.returncode == 0, r.stderr
    o = read_table(str(out))
    cov = o["flux_covariance"]
    assert cov.shape == (5, 73, 73)
    diag = np.diagonal(cov, axis1=1, axis2=2)
    np.testing.assert_allclose(diag[[0, 1, 3, 4]], o["flux_error"][[0, 1, 3, 4]] ** 2,
                               rtol=1e-10)
    np.testing.assert_allclose(cov, np.transpose(cov, (0, 2, 1)), rtol=1e-12)
    # row 2 has no BP: its covariance is NaN exactly where its flux is
    np.testing.assert_array_equal(np.isnan(diag[2]), np.isnan(o["flux"][2]))


def test_covariance_matches_monte_carlo(tmp_path):
    """The propagated covariance agrees with samples drawn from the coefficient covariance."""
    from xptools.basis import load_basis
    from xptools.sampling import Sampler, correlation_matrices
    from xptools.xp import ContinuousLayout

    t = synthetic_continuous(n=1, seed=3)
    layout = ContinuousLayout(t, "synthetic")
    sampler = Sampler(load_basis(), covariance=True)
    out = sampler.sample({b: layout.band(t, b) for b in ("bp", "rp")})
    rng = np.random.default_rng(0)
    draws = []
    for band in ("bp", "rp"):
        b = layout.band(t, band)
        cov = correlation_matrices(b.correlations, 1)[0] * np.outer(b.errors[0], b.errors[0])
        draws.append(rng.multivariate_normal(b.coefficients[0], cov, size=20000))
    basis = sampler.basis
    flux = draws[0] @ basis.merged["bp"] + draws[1] @ basis.merged["rp"]
    np.testing.assert_allclose(flux.std(axis=0), out["flux_error"][0], rtol=0.03)


def test_band_option_and_dtype(tmp_path, continuous_fits):
    out = tmp_path / "out.fits"
    r = run("sample", continuous_fits, "--band", "rp", "--dtype", "float32", "-o", out)
    assert r.returncode == 0
    o = read_table(str(out))
    assert o["flux"].dtype == np.float32
    grid = np.arange(336, 1021, 2.0)
    assert np.isnan(o["flux"][0][grid < 600]).all() and np.isfinite(o["flux"][0][grid > 700]).all()


def test_passthrough_and_provenance(tmp_path, continuous_fits):
    out = tmp_path / "out.ecsv"
    assert run("sample", continuous_fits, "-o", out).returncode == 0
    o = read_table(str(out))
    src = read_table(str(continuous_fits))
    np.testing.assert_array_equal(o["source_id"], src["source_id"])
    np.testing.assert_array_equal(o["ra"], src["ra"])
    assert o.info["ra"].unit == "deg"
    assert "bp_coefficients" not in o and "bp_n_relevant_bases" in o
    assert o.meta["XPTVERS"] and o.meta["XPTCMD"].startswith("xptools sample")
    assert o.meta["XPTDATE"].endswith("Z") and o.history[-1].endswith(o.meta["XPTCMD"])
    out2 = tmp_path / "keep.fits"
    assert run("sample", continuous_fits, "--keep-coefficients", "-o", out2).returncode == 0
    assert "bp_coefficients" in read_table(str(out2))


def test_chunking_does_not_change_results(tmp_path, continuous_fits):
    a, b = tmp_path / "a.fits", tmp_path / "b.fits"
    assert run("sample", continuous_fits, "-o", a).returncode == 0
    assert run("sample", continuous_fits, "--chunk-rows", "2", "-o", b).returncode == 0
    # BLAS may sum in another order for other block sizes: equal to rounding
    np.testing.assert_allclose(read_table(str(a))["flux_error"],
                               read_table(str(b))["flux_error"], rtol=1e-13, atol=0)


def test_empty_table_gives_empty_output(tmp_path):
    t = synthetic_continuous(n=3).rows(slice(0, 0))
    src, out = tmp_path / "empty.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    r = run("sample", src, "-o", out)
    assert r.returncode == 0, r.stderr
    o = read_table(str(out))
    assert len(o) == 0 and o["flux"].shape == (0, 343)


def test_pipeline_through_stdin_and_stdout(tmp_path, continuous_fits):
    first = run("sample", continuous_fits)
    assert first.returncode == 0 and first.stdout.startswith(b"SIMPLE  =")
    info = run("info", "-", stdin=first.stdout)
    assert info.returncode == 0
    assert b"rows:     5" in info.stdout and b"XP sampled (343 samples" in info.stdout


def test_sampler_reports_progress_within_a_chunk():
    """The progress bar moves as blocks of a chunk are done; the steps add up to the rows."""
    from xptools.basis import load_basis
    from xptools.sampling import Sampler
    from xptools.xp import ContinuousLayout

    t = synthetic_continuous(n=700, missing_bp=(3, 4))
    layout = ContinuousLayout(t, "synthetic")
    steps = []
    Sampler(load_basis()).sample({b: layout.band(t, b) for b in ("bp", "rp")},
                                 advance=steps.append)
    assert len(steps) >= 3 and sum(steps) == 700
