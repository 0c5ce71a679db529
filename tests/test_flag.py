"""`xptools flag` and its out-of-distribution detectors (xptools.ood): the detectors on
synthetic Gaussian data with planted outliers (and equal to scikit-learn's), percentiles
against a known distribution, detectors through a model directory, the command on tiny
models trained here, and bad input."""

import json
import os

import numpy as np
import pytest

from conftest import run, synthetic_sampled
from xptools import flags
from xptools.io import read_table, write_table
from xptools.ood import (GaussianMixture, IsolationForest, Mahalanobis, Reference,
                         average_path_length)

TINY_MSA = {"labels": ["teff", "logg"],
            "hyperparameters": {"members": 1, "pretrain_epochs": 2, "finetune_epochs": 2,
                                "widths": [32], "latent": 8, "head_width": 16,
                                "frequencies": 3, "batch_size": 64, "patience": 50,
                                "monitor_fraction": 0.25}}
TINY_SVAE = {"model": "svae",
             "hyperparameters": {"widths": [24, 12], "epochs": 3, "batch_size": 64,
                                 "lr": 3e-3, "restart_epochs": 2}}
NEW = ["ood_mahalanobis", "ood_mahalanobis_pct", "ood_iforest_pct", "ood_gmm_pct",
       "recon_chi2", "recon_chi2_pct", "xp_phot_z", "xp_phot_pct", "xp_flag"]


# -- the detectors --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(3)
    covariance = np.diag(np.linspace(0.5, 3.0, 6)) + 0.3
    train = rng.multivariate_normal(np.arange(6.0), covariance, 4000)
    held = rng.multivariate_normal(np.arange(6.0), covariance, 4000)
    planted = np.arange(6.0) + 12.0 * rng.choice([-1, 1], (40, 6))   # far from everything
    return train, held, planted


def test_detectors_find_planted_outliers(gaussian):
    train, held, planted = gaussian
    for detector, low_is_unusual in ((Mahalanobis.fit(train), False),
                                     (IsolationForest.fit(train, 0), True),
                                     (GaussianMixture.fit(train, 0), True)):
        reference = Reference(detector.score(held))
        pct = reference.percentile(detector.score(planted))
        if low_is_unusual:
            assert np.all(pct < 0.5), (type(detector).__name__, pct)
        else:
            assert np.all(pct > 99.5), (type(detector).__name__, pct)


def test_mahalanobis_is_the_distance(gaussian):
    train, held, _ = gaussian
    d = Mahalanobis.fit(train).score(held[:50])
    inverse = np.linalg.inv(np.cov(train, rowvar=False))
    diff = held[:50] - train.mean(axis=0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", diff, inverse, diff))   # not its square
    np.testing.assert_allclose(d, expected, rtol=1e-6)
    # chi2 with 6 degrees of freedom: the median squared distance is 5.35
    assert abs(np.median(Mahalanobis.fit(train).score(held)) ** 2 - 5.35) < 0.4


def test_forest_and_mixture_equal_scikit_learn(gaussian):
    from sklearn.ensemble import IsolationForest as Forest
    from sklearn.mixture import GaussianMixture as Mixture

    train, held, planted = gaussian
    query = np.vstack([held[:200], planted])
    forest = Forest(n_estimators=100, max_samples=256, random_state=5).fit(train)
    np.testing.assert_allclose(IsolationForest.fit(train, 5).score(query),
                               forest.score_samples(query), rtol=1e-12)
    mixture = Mixture(10, covariance_type="full", random_state=5, max_iter=500,
                      reg_covar=1e-6).fit(train)
    np.testing.assert_allclose(GaussianMixture.fit(train, 5).score(query),
                               mixture.score_samples(query), rtol=1e-10)


def test_average_path_length():
    # c(n) = 2 H(n-1) - 2 (n-1)/n with H(i) ~ ln i + 0.5772 (Liu, Ting & Zhou 2008, Eq. 1)
    assert average_path_length(np.array([1, 2]))[0] == 0 and average_path_length([2])[0] == 1
    harmonic = np.sum(1.0 / np.arange(1, 256))
    assert abs(average_path_length([256])[0] - (2 * harmonic - 2 * 255 / 256)) < 0.01


def test_percentiles_against_a_known_distribution():
    rng = np.random.default_rng(0)
    reference = Reference(rng.normal(size=200_000))
    pct = reference.percentile(np.array([-1.6449, 0.0, 1.6449, 2.5758, np.nan, -99, 99]))
    np.testing.assert_allclose(pct[:4], [5.0, 50.0, 95.0, 99.5], atol=0.15)
    assert np.isnan(pct[4]) and pct[5] == 0 and pct[6] == 100
    # held-out draws from the same distribution fall beyond the 99.5th percentile 0.5% of
    # the time, within binomial error
    beyond = np.mean(reference.percentile(rng.normal(size=100_000)) > 99.5)
    assert abs(beyond - 0.005) < 4 * np.sqrt(0.005 * 0.995 / 100_000)


# -- the command, on tiny models --------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("flag")
    write_table(synthetic_sampled(500, seed=1), str(d / "train.fits"))
    write_table(synthetic_sampled(60, seed=2), str(d / "stars.fits"))
    (d / "msa.json").write_text(json.dumps(TINY_MSA))
    (d / "svae.json").write_text(json.dumps(TINY_SVAE))
    for kind in ("msa", "svae"):
        r = run("train", d / "train.fits", "--recipe", d / f"{kind}.json", "-o", d / kind,
                "--quiet")
        assert r.returncode == 0, r.stderr.decode()
    return d


def flag(setup, *args, src="stars.fits"):
    return run("flag", setup / src if isinstance(src, str) else src, "--model", setup / "msa",
               "--svae", setup / "svae", "-q", *args)


def test_train_fits_the_detectors(setup):
    config = json.loads((setup / "msa" / "config.json").read_text())
    detectors = config["detectors"]
    assert detectors["embedding"] == "head" and detectors["gmm_components"] == 10
    assert detectors["reference_rows"] > 80 and detectors["fitted_rows"] > 300
    assert set(detectors["label_range"]) == {"teff", "logg"}
    assert os.path.exists(setup / "msa" / "detectors.safetensors")
    svae = json.loads((setup / "svae" / "config.json").read_text())["detectors"]
    assert svae["embedding"] == "z" and svae["label_range"] == {}


def test_detector_arrays_round_trip_through_the_model_directory(setup, tmp_path):
    from xptools import models
    from xptools.models.features import XPSource

    model = models.load(str(setup / "msa"))
    models.save(model, str(tmp_path / "copy"), "# copy\n", checksum=model.checksum)
    again = models.load(str(tmp_path / "copy"))
    table = read_table(str(setup / "stars.fits"))
    xp, _ = XPSource(table, "stars", model.features)(table)
    e, _ = model.embedding(table, xp, model.detectors.embedding)
    first, second = model.detectors.scores(e), again.detectors.scores(e)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert (tmp_path / "copy" / "detectors.safetensors").read_bytes() == \
        (setup / "msa" / "detectors.safetensors").read_bytes()


def test_flag_adds_its_columns_and_keeps_every_row(setup, tmp_path):
    out = tmp_path / "flagged.fits"
    r = flag(setup, "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    src, t = read_table(str(setup / "stars.fits")), read_table(str(out))
    assert t.colnames == src.colnames + NEW
    np.testing.assert_array_equal(t["source_id"], src["source_id"])
    assert t["xp_flag"].dtype == np.int32
    for name in NEW[:-1]:
        assert np.isfinite(t[name]).all(), name
    assert ((t["ood_iforest_pct"] >= 0) & (t["ood_iforest_pct"] <= 100)).all()
    assert t.meta["XPTFMOD"] == "msa" and t.meta["XPTSVAE"] == "svae"
    # no archive quality columns: no such bits; the table's own teff and logg are no infer
    # labels (no infer_flag beside them): no label bits
    archive = flags.XP_RUWE | flags.XP_FEW_BASES | flags.XP_FEW_OBSERVATIONS
    label = flags.XP_LABEL_EDGE | flags.XP_LABEL_ERROR
    assert not np.any(t["xp_flag"] & (archive | label))
    r = run("flag", setup / "stars.fits", "--model", setup / "msa", "--svae", setup / "svae",
            "-o", tmp_path / "again.fits")
    assert b"no infer labels in the table" in r.stderr and b"pass xp_flag < 64" in r.stderr


def test_outliers_and_bad_rows_are_flagged(setup, tmp_path):
    t = read_table(str(setup / "stars.fits"))
    flux = np.asarray(t["flux"]).copy()
    flux[0] *= np.linspace(3.0, 0.2, flux.shape[1])        # a spectrum nothing like the rest
    flux[1] = np.nan                                        # no XP at all
    flux[2, :40] = np.nan                                   # the blue end of BP missing
    t.columns["flux"] = flux
    path = tmp_path / "odd.fits"
    write_table(t, str(path))
    r = flag(setup, "-o", tmp_path / "out.fits", src=path)
    assert r.returncode == 0, r.stderr.decode()
    out = read_table(str(tmp_path / "out.fits"))
    f = np.asarray(out["xp_flag"])
    assert f[0] >= flags.XP_BASIC_CUT and f[0] & flags.XP_RECONSTRUCTION
    assert f[1] & flags.XP_NO_XP and f[1] & flags.XP_NOT_SCORED
    assert np.isnan(out["recon_chi2"][1]) and np.isnan(out["recon_chi2_pct"][1])
    assert f[2] & flags.XP_PARTIAL and f[2] & flags.XP_NOT_SCORED
    assert len(out) == len(t)


def test_label_side_and_archive_bits(setup, tmp_path):
    t = read_table(str(setup / "stars.fits"))
    n = len(t)
    t.add_column("msa_teff", np.full(n, 5000.0))
    t.columns["msa_teff"][0] = 20000.0                         # beyond the training labels
    t.add_column("msa_teff_error", np.full(n, 50.0))
    t.columns["msa_teff_error"][1] = 400.0                     # above --sigma-max teff=150
    t.add_column("msa_logg", np.full(n, 3.0))
    t.add_column("msa_logg_error", np.full(n, 0.05))
    t.add_column("msa_infer_flag", np.zeros(n, np.int16))
    t.add_column("ruwe", np.full(n, 1.0, np.float32))
    t.columns["ruwe"][2] = 2.5
    t.add_column("bp_n_relevant_bases", np.full(n, 40, np.int16))
    t.columns["bp_n_relevant_bases"][3] = 4
    t.add_column("rp_n_transits", np.full(n, 40, np.int16))
    t.columns["rp_n_transits"][4] = 12
    path = tmp_path / "labelled.fits"
    write_table(t, str(path))
    r = flag(setup, "-o", tmp_path / "out.fits", "--infer-prefix", "msa",
             "--quality", "ruwe < 2 and msa_logg > 2", src=path)
    assert r.returncode == 0, r.stderr.decode()
    f = np.asarray(read_table(str(tmp_path / "out.fits"))["xp_flag"])
    assert f[0] & flags.XP_LABEL_EDGE and not f[1] & flags.XP_LABEL_EDGE
    assert f[1] & flags.XP_LABEL_ERROR and not f[0] & flags.XP_LABEL_ERROR
    assert f[2] & flags.XP_RUWE and f[2] & flags.XP_QUALITY
    assert f[3] & flags.XP_FEW_BASES and f[4] & flags.XP_FEW_OBSERVATIONS
    assert not np.any(f[5:] & (flags.XP_RUWE | flags.XP_QUALITY | flags.XP_FEW_BASES))
    # --sigma-max naming a label the table has no error column for is an error
    r = flag(setup, "-o", tmp_path / "x.fits", "--infer-prefix", "msa", "--sigma-max",
             "fe_h=0.1", src=path)
    assert r.returncode == 1 and b"msa_fe_h_error" in r.stderr


def test_without_flux_errors_or_g(setup, tmp_path):
    """No flux_error column: no reconstruction, said once, and not a failure of every row.
    No phot_g_mean_mag: the svae normalises by the spectrum's own G, so no reconstruction
    bit (its chi2 is still written)."""
    t = read_table(str(setup / "stars.fits"))
    t.remove_columns(["flux_error"])
    write_table(t, str(tmp_path / "noerr.fits"))
    r = run("flag", tmp_path / "noerr.fits", "--model", setup / "msa", "--svae", setup / "svae",
            "-o", tmp_path / "a.fits")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.count(b"no flux_error column") == 1
    out = read_table(str(tmp_path / "a.fits"))
    assert np.isnan(out["recon_chi2"]).all()
    assert not np.any(out["xp_flag"] & (flags.XP_NOT_SCORED | flags.XP_RECONSTRUCTION))
    t = read_table(str(setup / "stars.fits"))
    t.remove_columns(["phot_g_mean_mag"])
    t.columns["flux"][0] *= np.linspace(3.0, 0.2, t["flux"].shape[1])   # unlike any star
    write_table(t, str(tmp_path / "nog.fits"))
    r = flag(setup, "-o", tmp_path / "b.fits", src=tmp_path / "nog.fits")
    assert r.returncode == 0, r.stderr.decode()
    out = read_table(str(tmp_path / "b.fits"))
    assert np.isfinite(out["recon_chi2"]).all()
    assert not np.any(out["xp_flag"] & flags.XP_RECONSTRUCTION)


def test_photometric_consistency():
    """The effective passbands recover a known one, a BP half scaled by 10% stands out, and
    a star with one magnitude missing is still checked on the other band."""
    from xptools.io import Table
    from xptools.ood import PhotometricConsistency
    from xptools.photometry import ZERO_POINT

    rng = np.random.default_rng(1)
    n, grid = 3000, np.arange(340.0, 1020.0, 10.0)
    teff = rng.uniform(3800, 7000, n)
    flux = np.exp(-0.5 * ((grid[None] - 2.9e6 / teff[:, None]) / 250.0) ** 2) * 1e-15
    flux *= 10 ** (-0.4 * rng.uniform(-2, 2, n))[:, None]
    passband = {"bp": np.exp(-0.5 * ((grid - 520) / 60) ** 2) * (grid < 639),
                "rp": np.exp(-0.5 * ((grid - 780) / 90) ** 2) * (grid >= 639)}
    t = Table()
    for band in ("bp", "rp"):
        i = (flux @ passband[band]) * (1 + 0.003 * rng.normal(size=n))
        t.add_column(f"phot_{band}_mean_mag", -2.5 * np.log10(i) + ZERO_POINT[band])
    t.add_column("phot_g_mean_mag", np.full(n, 12.0))
    check = PhotometricConsistency.fit(grid, flux, t, np.ones(n, bool))
    z = check.score(flux, t)
    # the larger of two |N(0, 1)|: median 1.05, 99th percentile 2.8
    assert 0.9 < np.median(z) < 1.2 and np.percentile(z, 99) < 3.5
    scaled = flux.copy()
    scaled[:, grid < 639] *= 1.1
    assert np.all(check.score(scaled, t) > 20)       # 10% against a 0.3% spread
    t.columns["phot_rp_mean_mag"] = np.full(n, np.nan)
    assert np.all(check.score(scaled, t) > 20)       # BP alone still says so
    t.columns["phot_bp_mean_mag"] = np.full(n, np.nan)
    assert np.isnan(check.score(scaled, t)).all()    # no magnitude: no check


def test_cuts_change_the_bits(setup, tmp_path):
    r = flag(setup, "-o", tmp_path / "a.fits", "--cuts", "mahalanobis=0,iforest=100,gmm=100")
    assert r.returncode == 0, r.stderr.decode()
    f = np.asarray(read_table(str(tmp_path / "a.fits"))["xp_flag"])
    every = flags.XP_OOD_MAHALANOBIS | flags.XP_OOD_IFOREST | flags.XP_OOD_GMM
    assert np.all(f & every == every)


def test_pipeline_from_stdin_with_prefix_and_plots(setup, tmp_path):
    t = read_table(str(setup / "stars.fits"))
    t.remove_columns(["teff", "logg"])          # the labels will be infer's
    write_table(t, str(tmp_path / "spectra.fits"))
    infer = run("infer", tmp_path / "spectra.fits", "--model", setup / "msa", "-q")
    assert infer.returncode == 0, infer.stderr.decode()
    r = run("flag", "-", "--model", setup / "msa", "--svae", setup / "svae", "--prefix", "q",
            "--plots", tmp_path / "plots", "-o", tmp_path / "out.fits", stdin=infer.stdout)
    assert r.returncode == 0, r.stderr.decode()
    t = read_table(str(tmp_path / "out.fits"))
    assert "q_xp_flag" in t.colnames and "teff" in t.colnames
    assert b"labels checked: logg, teff" in r.stderr
    assert sorted(os.listdir(tmp_path / "plots")) == ["flag_kiel.png", "flag_percentiles.png"]
    assert (tmp_path / "plots" / "flag_kiel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the plots exist now: a second run without --overwrite refuses before any work
    r = run("flag", setup / "stars.fits", "--model", setup / "msa", "--svae", setup / "svae",
            "--plots", tmp_path / "plots", "-o", tmp_path / "again.fits")
    assert r.returncode == 1 and b"exists" in r.stderr
    assert not os.path.exists(tmp_path / "again.fits")


# -- bad input ----------------------------------------------------------------------------

def test_empty_table(setup, tmp_path):
    t = read_table(str(setup / "stars.fits")).rows(np.zeros(0, int))
    write_table(t, str(tmp_path / "empty.fits"))
    r = flag(setup, "-o", tmp_path / "out.fits", src=tmp_path / "empty.fits")
    assert r.returncode == 0, r.stderr.decode()
    out = read_table(str(tmp_path / "out.fits"))
    assert len(out) == 0 and out.colnames[-len(NEW):] == NEW


def test_all_nan_rows_are_flagged_not_fatal(setup, tmp_path):
    t = read_table(str(setup / "stars.fits")).rows(np.arange(5))
    for name in ("flux", "flux_error"):
        t.columns[name] = np.full_like(t[name], np.nan)
    for name in ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "j_m", "h_m",
                 "ks_m"):
        t.columns[name] = np.full_like(t[name], np.nan)
    write_table(t, str(tmp_path / "nan.fits"))
    r = flag(setup, "-o", tmp_path / "out.fits", src=tmp_path / "nan.fits")
    assert r.returncode == 0, r.stderr.decode()
    out = read_table(str(tmp_path / "out.fits"))
    assert np.all(out["xp_flag"] & flags.XP_NOT_SCORED) and np.all(out["xp_flag"] & flags.XP_NO_XP)
    for name in NEW[:-1]:
        assert np.isnan(out[name]).all(), name


def test_missing_and_clashing_columns(setup, tmp_path):
    t = read_table(str(setup / "stars.fits"))
    t.remove_columns(["flux", "flux_error"])
    write_table(t, str(tmp_path / "nospec.fits"))
    r = flag(setup, "-o", tmp_path / "a.fits", src=tmp_path / "nospec.fits")
    assert r.returncode == 1 and b"no XP spectra" in r.stderr and len(r.stderr.splitlines()) == 1
    t = read_table(str(setup / "stars.fits"))
    t.add_column("xp_flag", np.zeros(len(t), np.int32))
    write_table(t, str(tmp_path / "clash.fits"))
    r = flag(setup, "-o", tmp_path / "b.fits", src=tmp_path / "clash.fits")
    assert r.returncode == 1 and b"--prefix" in r.stderr
    r = flag(setup, "-o", tmp_path / "c.fits", "--quality", "ruwe < 1.4")
    assert r.returncode == 1 and b"no column 'ruwe'" in r.stderr
    assert not {"a.fits", "b.fits", "c.fits"} & set(os.listdir(tmp_path))


@pytest.mark.parametrize("option, text", [("--cuts", "mahalanobis"), ("--cuts", "foo=3"),
                                          ("--cuts", "gmm=101"), ("--sigma-max", "teff=x")])
def test_bad_options(setup, tmp_path, option, text):
    r = flag(setup, option, text, "-o", tmp_path / "out.fits")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert option.encode() in r.stderr and not os.path.exists(tmp_path / "out.fits")


def test_a_model_without_detectors(setup, tmp_path):
    from xptools import models

    model = models.load(str(setup / "msa"))
    model.detectors = None
    models.save(model, str(tmp_path / "bare"), "# bare\n")
    r = run("flag", setup / "stars.fits", "--model", tmp_path / "bare", "--svae", setup / "svae",
            "-o", tmp_path / "out.fits")
    assert r.returncode == 1 and b"no out-of-distribution detectors" in r.stderr
    assert not os.path.exists(tmp_path / "out.fits")
