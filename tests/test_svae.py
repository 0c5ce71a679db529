"""The scatter VAE: its loss, training without labels, xptools embed and xptools generate, on a
tiny model trained for a few epochs on synthetic spectra."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import gaia_bp_rp, run, synthetic_continuous, synthetic_sampled
from xptools.io import read_table, write_table
from xptools.models.svae import (ScatterVAE, kl_divergence, knn_labels, outlier_statistics,
                                  scatter_chi2)

TINY = {"model": "svae",
        "hyperparameters": {"widths": [24, 12], "epochs": 4, "batch_size": 64,
                            "lr": 3e-3, "restart_epochs": 2, "monitor_fraction": 0.1}}
LABELS = ["teff", "teff_err", "logg", "logg_err"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("svae")
    train = synthetic_sampled(400, seed=1)
    train.remove_columns(LABELS)                     # the sVAE needs no labels
    write_table(train, str(d / "train.fits"))
    write_table(synthetic_sampled(120, seed=2), str(d / "valid.fits"))
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


@pytest.fixture(scope="module")
def model(data):
    out = data / "model"
    r = run("train", data / "train.fits", "--recipe", data / "tiny.json", "--valid",
            data / "valid.fits", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert b"k-NN (k=20) teff from z" in r.stdout    # labels of --valid, for the report only
    return out


def test_loss_is_the_papers():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    x_hat = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    sigma = torch.tensor([[0.3, 0.4], [0.5, 0.5]])
    s_hat = torch.tensor([[0.4, 0.3], [0.5, 0.5]])
    variance = np.array([[0.25, 0.25], [0.5, 0.5]])
    expected = np.mean(np.array([[0.25, 0], [1, 0]]) / variance) + np.mean(np.log(variance))
    assert float(scatter_chi2(x, sigma, x_hat, s_hat)) == pytest.approx(expected, rel=1e-6)
    mu, log_var = torch.zeros(3, 6), torch.zeros(3, 6)
    assert float(kl_divergence(mu, log_var)) == 0.0            # the prior itself
    mu[0, 0], log_var[1, 2] = 2.0, np.log(4.0)
    assert float(kl_divergence(mu, log_var)) == pytest.approx(
        (4.0 + (4.0 - 1 - np.log(4.0))) / 18, rel=1e-6)
    # "sum" (the authors' released code): summed over features or latent dimensions
    assert float(scatter_chi2(x, sigma, x_hat, s_hat, "sum")) == pytest.approx(2 * expected,
                                                                               rel=1e-6)
    assert float(kl_divergence(mu, log_var, "sum")) == pytest.approx(
        (4.0 + (4.0 - 1 - np.log(4.0))) / 3, rel=1e-6)


def test_outlier_statistics():
    sigma = np.full((3, 4), 0.1)
    x = np.zeros((3, 4))
    x_hat = np.zeros((3, 4))
    s_hat = np.zeros((3, 4))
    x[1] = 0.1 * 3                 # fitted only thanks to a wide scatter: chi2 1, excess > 1
    s_hat[1] = np.sqrt(8) * 0.1
    x[2, 0] = 0.1 * 4              # one bad sample: worst 16, diluted to 4 in chi2
    st = outlier_statistics(x, sigma, x_hat, s_hat)
    np.testing.assert_allclose(st["chi2"], [0, 1, 4])
    np.testing.assert_allclose(st["excess"], [0, 1 + np.log(9), 4])
    np.testing.assert_allclose(st["worst"], [0, 1, 16])
    sigma[0, 0] = np.nan
    assert np.isnan(outlier_statistics(x, sigma, x_hat, s_hat)["excess"][0])


def test_outlier_percentile_of_either_score():
    """Training stars atypical in excess or in worst both rank high; 1% score above 99."""
    rng = np.random.default_rng(0)
    train = {"excess": rng.chisquare(5, 20000), "worst": rng.chisquare(3, 20000)}
    model = ScatterVAE()
    model.fit_outlier_quantiles(train)
    p = model.outlier_percentile(train)
    assert np.mean(p > 99) == pytest.approx(0.01, abs=0.002)
    typical = np.median(train["excess"]), np.median(train["worst"])
    stars = {"excess": np.array([typical[0], 100.0, typical[0], np.nan]),
             "worst": np.array([typical[1], typical[1], 100.0, np.nan])}
    p = model.outlier_percentile(stars)
    assert 22 < p[0] < 28            # median in both: P(max of two ranks < 0.5) = 0.25
    assert p[1] == 100 and p[2] == 100 and np.isnan(p[3])


def test_knn_leaves_each_star_out():
    z = np.array([[0.0], [0.1], [5.0], [5.1]])
    y = np.array([1.0, 2.0, 10.0, 20.0])
    np.testing.assert_allclose(knn_labels(z, y, z, k=1, leave_one_out=True), [2, 1, 20, 10])
    np.testing.assert_allclose(knn_labels(z, y, np.array([[4.9], [np.nan]]), k=2),
                               [15.0, np.nan])


def test_model_directory(model):
    assert sorted(os.listdir(model)) == ["card.md", "config.json", "detectors.safetensors",
                                         "validation.json", "weights.safetensors"]
    config = json.loads((model / "config.json").read_text())
    assert config["detectors"]["embedding"] == "z"      # xptools flag's (tests/test_flag.py)
    assert config["kind"] == "svae" and config["labels"] == []
    assert config["features"]["transform"] == "linear" and config["features"]["photometry"] == []
    for score in ("excess", "worst", "combined"):
        q = np.array(config["outlier_quantiles"][score])
        assert len(q) == 1001 and np.all(np.diff(q) >= 0) and q[0] >= 0
    assert config["provenance"]["epochs_run"] == 4 and config["provenance"]["train_rows"] > 300
    report = json.loads((model / "validation.json").read_text())
    assert report["usable_rows"] == 120 and set(report["knn"]) == {"teff", "logg"}
    card = (model / "card.md").read_text()
    for section in ("## Training", "## Validation", "## Known limits"):
        assert section in card
    assert "as the paper prints them" in card                 # TINY keeps reduction "mean"


def test_card_states_the_loss_reduction(model):
    from xptools import models

    loaded = models.load(str(model))
    loaded.hyper.reduction = "sum"
    assert ("summed over features or latent dimensions and averaged over stars, as the "
            "authors' released code (xp_vae) computes them" in loaded.card(None))


def test_embed_adds_latents_and_keeps_columns(model, data, tmp_path):
    out = tmp_path / "z.fits"
    r = run("embed", data / "valid.fits", "--model", model, "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    t, src = read_table(str(out)), read_table(str(data / "valid.fits"))
    for name in src.colnames:
        np.testing.assert_array_equal(t[name], src[name])
    assert t["z"].shape == (120, 6) and np.isfinite(t["z"]).all()
    assert np.all(t["z_error"] > 0) and np.all(t["embed_flag"] == 0)
    assert t.meta["XPTMKIND"] == "svae" and len(t.meta["XPTMSUM"]) == 16
    # the same stars again, now with a z column: the new columns need other names
    r = run("embed", out, "--model", model, "-o", tmp_path / "again.fits")
    assert r.returncode == 1 and b"already has a column 'z'; give --prefix" in r.stderr
    r = run("embed", out, "--model", model, "--prefix", "svae", "-o", tmp_path / "again.fits")
    assert r.returncode == 0, r.stderr.decode()
    np.testing.assert_array_equal(read_table(str(tmp_path / "again.fits"))["svae_z"], t["z"])


def test_embed_bad_rows_become_nan_and_flags(model, data, tmp_path):
    t = read_table(str(data / "valid.fits")).rows(slice(0, 5))
    grid = np.arange(336.0, 1021.0, 2.0)
    t["flux"][1, 30:40] = np.nan                        # a few NaN samples
    t["flux"][2, grid < 640] = np.nan                   # the BP half missing
    t["flux"][3] = np.nan                               # no spectrum at all
    t["phot_g_mean_mag"][4] = np.nan                    # no G: estimated from the spectrum
    write_table(t, str(tmp_path / "odd.fits"))
    r = run("embed", tmp_path / "odd.fits", "--model", model, "-o", tmp_path / "z.fits")
    assert r.returncode == 0, r.stderr.decode()
    assert b"3 of 5 rows had no complete spectrum" in r.stderr
    o = read_table(str(tmp_path / "z.fits"))
    flags = o["embed_flag"]
    assert flags[0] == 0 and np.isfinite(o["z"][0]).all()
    for row in (1, 2):
        assert flags[row] & 2 and flags[row] & 64 and np.isnan(o["z"][row]).all()
    assert flags[3] & 1 and flags[3] & 64 and np.isnan(o["z_error"][3]).all()
    assert flags[4] == 16 and np.isfinite(o["z"][4]).all()


def test_embed_coefficient_input(model, tmp_path):
    write_table(synthetic_continuous(4, missing_bp=(2,)), str(tmp_path / "c.fits"))
    r = run("embed", tmp_path / "c.fits", "--model", model, "-o", tmp_path / "z.fits")
    assert r.returncode == 0, r.stderr.decode()
    o = read_table(str(tmp_path / "z.fits"))
    assert "bp_coefficients" in o                       # input columns pass through
    assert np.isfinite(o["z"][[0, 1, 3]]).all()         # sampled first, G from the spectrum
    assert np.all(o["embed_flag"][[0, 1, 3]] == 16)
    assert np.isnan(o["z"][2]).all() and o["embed_flag"][2] & 64


def test_generate_from_a_grid(model, tmp_path):
    out = tmp_path / "grid.fits"
    r = run("generate", "--model", model, "--z", "-1:1:0.5,0,0.5,0,0:1:1,0", "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    t = read_table(str(out))
    assert len(t) == 10 and t["z"].shape == (10, 6)
    np.testing.assert_allclose(t["z"][:2], [[-1, 0, 0.5, 0, 0, 0], [-1, 0, 0.5, 0, 1, 0]])
    assert t.meta["WAVEMIN"] == 336.0 and t.meta["WAVEMAX"] == 1020.0
    assert t.meta["WAVESTEP"] == 6.0 and t["flux"].shape == (10, 115)
    assert np.isfinite(t["flux"]).all() and np.all(t["flux_scatter"] > 0)
    assert t.info["flux"].unit == "W m-2 nm-1"
    assert not np.allclose(t["flux"][0], t["flux"][-1], rtol=1e-3, atol=0)  # z matters
    for bad, message in ((["--z", "0,0"], b"give 6 comma-separated entries"),
                         (["--z", "0,0,0,0,0,x"], b"'x' is not a number"),
                         ([], b"give a table of latents")):
        r = run("generate", "--model", model, *bad, "-o", tmp_path / "bad.fits")
        assert r.returncode == 1 and message in r.stderr and r.stderr.count(b"\n") == 1
    assert not (tmp_path / "bad.fits").exists()


def test_generate_from_embed_is_the_reconstruction(model, data, tmp_path):
    """embed, then generate from its z column, gives the spectra of generate --reconstruct:
    the same z, decoded and brought back to each star's G."""
    run("embed", data / "valid.fits", "--model", model, "-o", tmp_path / "z.fits")
    r = run("generate", tmp_path / "z.fits", "--model", model, "-o", tmp_path / "gen.fits")
    assert r.returncode == 0, r.stderr.decode()
    r = run("generate", "--reconstruct", data / "valid.fits", "--model", model,
            "-o", tmp_path / "rec.fits")
    assert r.returncode == 0, r.stderr.decode()
    gen, rec = read_table(str(tmp_path / "gen.fits")), read_table(str(tmp_path / "rec.fits"))
    np.testing.assert_allclose(gen["flux"], rec["flux"], rtol=1e-5)
    np.testing.assert_allclose(gen["flux_scatter"], rec["flux_scatter"], rtol=1e-5)
    np.testing.assert_array_equal(gen["z"], rec["z"])
    assert "flux_error" not in rec and rec["flux"].shape == (120, 115)  # one grid per table
    # the reconstruction follows the data: within 20% of the observed flux at 500-900 nm
    observed = read_table(str(data / "valid.fits"))["flux"][:, ::3]
    band = (np.arange(336.0, 1021.0, 6.0) > 500) & (np.arange(336.0, 1021.0, 6.0) < 900)
    assert np.median(np.abs(rec["flux"][:, band] / observed[:, band] - 1)) < 0.2


def test_reconstruct_after_embed_replaces_z(model, data, tmp_path):
    """The README's pipeline: embed, then generate --reconstruct re-encodes the spectra; its z
    and z_error replace embed's (the same encoder mean), other clashes still stop it."""
    cmd = (f"{sys.executable} -m xptools embed {data / 'valid.fits'} --model {model} | "
           f"{sys.executable} -m xptools generate --reconstruct - --model {model} "
           f"-o {tmp_path / 'scored.fits'}")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    o = read_table(str(tmp_path / "scored.fits"))
    assert o.colnames.count("z") == 1 and "chi2" in o.colnames
    run("embed", data / "valid.fits", "--model", model, "-o", tmp_path / "z.fits")
    np.testing.assert_array_equal(o["z"], read_table(str(tmp_path / "z.fits"))["z"])
    r = run("generate", "--reconstruct", tmp_path / "scored.fits", "--model", model,
            "-o", tmp_path / "again.fits")
    assert r.returncode == 1 and b"already has a column 'chi2'" in r.stderr


def test_reconstruct_scores_outliers(model, data, tmp_path):
    t = read_table(str(data / "valid.fits")).rows(slice(0, 6))
    grid = np.arange(336.0, 1021.0, 2.0)
    t["flux"][1, grid < 640] *= 3.0                     # a broken BP calibration
    t["flux"][2, 201] *= 50.0                           # a spike (the model reads every
    t["flux_error"][3, 9] = np.nan                      # 3rd sample); unusable errors
    t["flux"][4, :] = np.nan                            # no spectrum
    write_table(t, str(tmp_path / "odd.fits"))
    r = run("generate", "--reconstruct", tmp_path / "odd.fits", "--model", model,
            "-o", tmp_path / "rec.fits")
    assert r.returncode == 0, r.stderr.decode()
    o = read_table(str(tmp_path / "rec.fits"))
    chi2, pct, flags = o["chi2"], o["outlier_percentile"], o["generate_flag"]
    assert np.all((pct[[0, 5]] >= 0) & (pct[[0, 5]] <= 100))
    assert chi2[1] > 10 * chi2[0] and chi2[2] > 10 * chi2[0]
    assert pct[1] == 100 and pct[2] == 100
    assert flags[3] == 128 and np.isnan(chi2[3]) and np.isfinite(o["z"][3]).all()
    assert flags[4] & 64 and np.isnan(o["flux"][4]).all() and np.isnan(pct[4])


def test_generate_input_errors(model, data, tmp_path):
    out = tmp_path / "out.fits"
    r = run("generate", data / "valid.fits", "--model", model, "-o", out)
    assert r.returncode == 1 and b"no column 'z' of latents" in r.stderr
    r = run("generate", "--reconstruct", "--z", "0,0,0,0,0,0", "--model", model, "-o", out)
    assert r.returncode == 1 and b"--reconstruct needs a table of XP spectra" in r.stderr
    t = read_table(str(data / "valid.fits")).rows(slice(0, 3))
    t.remove_columns(["flux_error"])
    write_table(t, str(tmp_path / "noerr.fits"))
    r = run("generate", "--reconstruct", tmp_path / "noerr.fits", "--model", model, "-o", out)
    assert r.returncode == 1 and b"no flux_error column" in r.stderr
    t.add_column("z", np.zeros((3, 4), np.float32))
    write_table(t, str(tmp_path / "z4.fits"))
    r = run("generate", tmp_path / "z4.fits", "--model", model, "-o", out)
    assert r.returncode == 1 and b"4 values per row, the model's latent space 6" in r.stderr
    assert not out.exists()


def test_flux_excess_cut_leaves_out_blended_training_stars(tmp_path):
    from xptools.errors import UserError
    from xptools.train import Trainer

    t = synthetic_sampled(60, seed=3)
    bp, rp = gaia_bp_rp(t["phot_g_mean_mag"], 1.0,
                        np.where(np.arange(60) < 5, 1.3, 1.0))
    t["phot_bp_mean_mag"][:], t["phot_rp_mean_mag"][:] = bp, rp  # rows 0-4: 30% excess
    t["phot_rp_mean_mag"][5] = np.nan                   # unknown C*: kept
    recipe = {"hyperparameters": {**TINY["hyperparameters"], "epochs": 1,
                                  "max_flux_excess": 3.0}}
    model = ScatterVAE.create(None, recipe)
    split = model.fit_table(t, "train", Trainer(str(tmp_path / "w"), quiet=True))
    assert split["usable_rows"] == 60 and split["flux_excess_rows"] == 5
    assert split["train_rows"] + split["monitor_rows"] == 55
    model.provenance = split                            # as xptools train sets it
    assert "5 left out for a BP/RP flux excess" in model.card(None)
    t.remove_columns(["phot_bp_mean_mag"])
    with pytest.raises(UserError, match="max_flux_excess needs the column 'phot_bp_mean_mag'"):
        ScatterVAE.create(None, recipe).fit_table(t, "train", Trainer(str(tmp_path / "v")))
