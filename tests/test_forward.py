"""The forward model (Zhang, Green & Rix 2023): its covariance and Jacobian terms, per-star fits
against a known model (pulls, grid start), training in absolute and relative mode on spectra
drawn from a known network and extinction curve, generate -> infer, and bad input."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import run
from xptools import models
from xptools.flags import (FLAG_NO_PHOTOMETRY, FLAG_NO_XP, FLAG_PARTIAL_PHOTOMETRY,
                           FLAG_PARTIAL_XP, FLAG_UNUSABLE)
from xptools.io import Table, read_table, write_table
from xptools.models.forward import (EIGENVALUE_FLOOR, TWO_MASS, XP_WAVELENGTHS, ForwardModel,
                                    Hyperparameters, ccm89, covariance, curve_table, whitening)

N_XP = len(XP_WAVELENGTHS)
TINY = {"model": "forward", "seed": 0,
        "hyperparameters": {"batch_size": 256, "lr": 1e-2, "network_epochs": 60,
                            "joint_epochs": 30, "all_epochs": 30, "retrain_epochs": 60,
                            "refine_epochs": 20, "patience": 20, "gmm_components": 4,
                            "grid_draws": 64, "grid_ext": 8}}


def truth_model(absolute: bool, seed: int = 3) -> ForwardModel:
    """A forward model with a random network and a CCM-like curve: the truth spectra are drawn
    from."""
    torch.manual_seed(seed)
    m = ForwardModel(None, Hyperparameters(gmm_components=1), absolute=absolute)
    m.label_mean, m.label_std = [5000.0, 3.0, -0.3], [800.0, 1.0, 0.3]
    m.label_range = [[2000.0, 8000.0], [-1.0, 7.0], [-2.0, 1.5]]
    m.ln_unit = math.log(1e-16)
    with torch.no_grad():
        for layer in m.network.mlp:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(1.5)
        # a smooth spectrum that changes with the labels
        m.network.mlp[-1].weight.mul_(0.6)
        m.network.ln_r.copy_(torch.as_tensor(np.log(ccm89(m.wavelengths) * 8.8 / 1.0857)))
    m.network.requires_grad_(False).double().eval()     # as a trained or loaded model
    m.gmm = {"weights": torch.ones(1, dtype=torch.float64),
             "means": torch.zeros(1, 3, dtype=torch.float64),
             "covariances": 4.0 * torch.eye(3, dtype=torch.float64)[None]}
    m.ln_prior_cut = -20.0
    m.features.zero_point = 0.0
    return m


def synthetic_stars(truth: ForwardModel, n: int, seed: int, noise: float = 0.01,
                    parallax: bool = True) -> tuple[Table, dict]:
    """A table of spectra drawn from ``truth`` with noise drawn from the model's own full
    covariance (the diagonal ``noise`` x flux plus the Eq. 2 terms)."""
    rng = np.random.default_rng(seed)
    theta = np.clip(rng.standard_normal((n, 3)), -2.2, 2.2)
    labels = theta * truth.label_std + truth.label_mean
    ext = rng.exponential(0.3, n) + 0.01
    plx = rng.uniform(0.5, 3.0, n)
    clean = truth.spectra(labels, ext, plx if truth.absolute else np.ones(n))
    if not truth.absolute:     # a relative truth: any amplitude
        clean = clean * 1e-16 * rng.uniform(0.2, 5.0, n)[:, None]
    error = noise * clean
    table = _table(clean[:, :N_XP], error[:, :N_XP], clean[:, N_XP:], labels, ext, plx,
                   parallax)
    data = truth.data(table, "synthetic")
    cov = np.linalg.inv(np.einsum("nki,nkj->nij", data["W"], data["W"]))
    draw = np.einsum("nij,nj->ni", np.linalg.cholesky(cov), rng.standard_normal(clean.shape))
    noisy = clean + draw * np.exp(data["ln_scale"])[:, None]
    table = _table(noisy[:, :N_XP], error[:, :N_XP], noisy[:, N_XP:], labels, ext, plx,
                   parallax)
    return table, {"labels": labels, "ext": ext, "parallax": plx}


def _table(flux, error, bands, labels, ext, plx, parallax):
    n = len(flux)
    t = Table()
    t.add_column("source_id", np.arange(n, dtype=np.int64) * 7919 + 11)
    t.add_column("flux", flux)
    t.add_column("flux_error", error)
    t.meta.update({"WAVEMIN": 392.0, "WAVEMAX": 992.0, "WAVESTEP": 10.0})
    for j, (band, (_, zero)) in enumerate(TWO_MASS.items()):
        t.add_column(band, -2.5 * np.log10(bands[:, j] / zero))
    t.add_column("phot_g_mean_mag", -2.5 * np.log10(flux[:, 5:55].mean(axis=1)))
    for j, name in enumerate(("teff", "logg", "fe_h")):
        t.add_column(name, labels[:, j])
        t.add_column(name + "_err", np.full(n, (20.0, 0.03, 0.02)[j]))
    t.add_column("ak_targ", ext + np.random.default_rng(1).normal(0, 0.02, n))
    if parallax:
        t.add_column("parallax", plx)
        t.add_column("parallax_error", 0.01 * plx)
    return t


# -- the data model --------------------------------------------------------------------------

def test_covariance_adds_the_eq2_terms_and_floors_eigenvalues():
    f = np.array([[1.0, 2.0, 3.0, 4.0]])
    bp = np.array([True, False, False])    # 3 XP points (1 BP, 2 RP), then one band
    c = covariance(f, np.zeros((1, 4, 4)), 3, bp)[0]
    v = f[0]
    xp = np.r_[v[:3], 0.0]
    expected = (np.diag((0.005 * v) ** 2) + 0.005 ** 2 * np.outer(xp, xp)
                + 0.001 ** 2 * np.outer([1, 0, 0, 0], [1, 0, 0, 0])
                + 0.001 ** 2 * np.outer([0, 2, 3, 0], [0, 2, 3, 0]))
    assert np.allclose(c, expected, rtol=1e-12, atol=0)
    singular = np.array([[[1.0, 1.0], [1.0, 1.0]]])         # eigenvalues 2 and 0
    w = whitening(singular)[0]
    inverse = w.T @ w
    eigen = np.linalg.eigvalsh(np.linalg.inv(inverse))
    assert eigen.min() == pytest.approx(EIGENVALUE_FLOOR, rel=1e-6)
    assert eigen.max() == pytest.approx(2.0)


def test_ccm_and_the_normalised_curve():
    # CCM's A_lambda / A_V at V (549 nm) is ~1 and at K ~0.11 (their Table 3: 0.114 at 2.2 um)
    assert ccm89(np.array([549.0]))[0] == pytest.approx(1.0, abs=0.01)
    assert ccm89(np.array([2200.0]))[0] == pytest.approx(0.114, abs=0.01)
    table = curve_table(truth_model(True))          # the truth's curve is CCM's
    assert np.allclose(table["r_normalised"], table["ccm_normalised"], rtol=1e-3, atol=1e-3)


def test_objective_has_the_jacobian_terms_and_its_gradient_is_right():
    truth = truth_model(True)
    table, _ = synthetic_stars(truth, 3, seed=5)
    data = truth.data(table, "t")
    plx, plx_err = truth.parallax(table)
    batch = truth.batch(data, np.arange(3), plx, plx_err)
    p = torch.tensor([[0.1, -0.2, 0.3, math.log(0.2), math.log(1.5)]] * 3, dtype=torch.float64)
    loss, chi2, prior, _, (grad, _), _ = truth._objective(p, batch, True)
    # Eq. 17: chi2 - 2 ln p_GMM + parallax term - 2 ln parallax - 2 ln E
    expected = (chi2 + prior + (1.5 - torch.as_tensor(plx)) ** 2 / torch.as_tensor(plx_err) ** 2
                - 2 * math.log(1.5) - 2 * math.log(0.2))
    assert torch.allclose(loss, expected)
    for k in range(5):      # the analytic gradient (Jacobian terms included) by differences
        step = torch.zeros_like(p)
        step[:, k] = 1e-6
        up, *_ = truth._objective(p + step, batch, False)
        down, *_ = truth._objective(p - step, batch, False)
        numeric = (up - down) / 2e-6
        assert torch.allclose(grad[:, k], numeric, rtol=1e-4, atol=1e-3 * float(loss.max())), k


# -- per-star fits against the truth --------------------------------------------------------------

@pytest.mark.parametrize("absolute", [True, False])
def test_fit_pulls_are_unit_normal_when_the_covariance_is_true(absolute):
    truth = truth_model(absolute)
    table, true = synthetic_stars(truth, 300, seed=11, noise=0.01)
    fit = truth.fit_stars(table, "synthetic")
    for name, ref in (("teff", true["labels"][:, 0]), ("logg", true["labels"][:, 1]),
                      ("fe_h", true["labels"][:, 2]), ("ext", true["ext"])):
        pull = (fit["values"][name] - ref) / fit["errors"][name]
        width = 1.4826 * np.median(np.abs(pull - np.median(pull)))   # sigma_MAD
        assert abs(np.median(pull)) < 0.25, name
        assert 0.8 < width < 1.2, (name, width)
        assert np.mean(np.abs(pull) > 4) < 0.03, name      # few fits in a wrong corner
    ratio = fit["chi2"] / fit["dof"]
    assert 0.85 < np.median(ratio) < 1.15
    assert np.all(fit["dof"] == 64 - 5)


def test_the_grid_start_finds_the_global_minimum():
    truth = truth_model(False)
    table, true = synthetic_stars(truth, 40, seed=4, noise=0.005)
    # a prior with a heavy component far from every star: a start there is a wrong basin
    truth.gmm = {"weights": torch.tensor([0.95, 0.05], dtype=torch.float64),
                 "means": torch.tensor([[3.0, -3.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
                 "covariances": torch.stack([0.05 * torch.eye(3), 4.0 * torch.eye(3)]).double()}
    fit = truth.fit_stars(table, "synthetic")
    assert np.median(np.abs(fit["values"]["teff"] - true["labels"][:, 0])) < 30
    data = truth.data(table, "t")
    batch = truth.batch(data, np.arange(len(table)), *truth.parallax(table))
    theta = (true["labels"] - truth.label_mean) / truth.label_std
    start = truth._start(batch, truth.hyper.grid_draws, truth.hyper.grid_ext)
    # the best start is nearer the truth than the prior's heavy component, where most draws are
    start = start[:, :3].numpy()
    to_truth = np.linalg.norm(start - theta, axis=1)
    to_heavy = np.linalg.norm(start - np.array([3.0, -3.0, 3.0]), axis=1)
    assert np.mean(to_truth < to_heavy) > 0.9


# -- training ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An absolute and a relative model trained on spectra drawn from the truth."""
    d = tmp_path_factory.mktemp("forward")
    (d / "tiny.json").write_text(json.dumps(TINY))
    out = {}
    for mode, absolute in (("absolute", True), ("relative", False)):
        truth = truth_model(absolute)
        train, _ = synthetic_stars(truth, 1200, seed=21, parallax=absolute)
        valid, _ = synthetic_stars(truth, 150, seed=22, parallax=absolute)
        write_table(train, str(d / f"{mode}_train.fits"))
        write_table(valid, str(d / f"{mode}_valid.fits"))
        r = run("train", d / f"{mode}_train.fits", "--model", "forward", "--recipe",
                d / "tiny.json", "--valid", d / f"{mode}_valid.fits", "-o", d / mode, "--quiet")
        assert r.returncode == 0, r.stderr.decode()
        out[mode] = (d / mode, truth, r.stdout.decode())
    out["dir"] = d
    return out


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_training_recovers_the_network_and_the_curve(trained, mode):
    path, truth, report = trained[mode]
    model = models.load(str(path))
    assert model.kind == "forward" and model.absolute == (mode == "absolute")
    assert json.loads((path / "config.json").read_text())["mode"] == mode
    assert "ext - ak_targ" in report and "learned curve vs CCM" in report
    learned, true = curve_table(model), curve_table(truth)
    xp = slice(0, N_XP)    # R up to its grey part: R - R(Ks), normalised
    rel = (learned["r_normalised"][xp] - true["r_normalised"][xp]) / true["r_normalised"][xp]
    assert np.sqrt(np.mean(rel ** 2)) < 0.15, np.sqrt(np.mean(rel ** 2))
    validation = json.loads((path / "validation.json").read_text())
    assert validation["teff<7000"]["teff"]["sigma_mad"] < 150
    assert validation["teff<7000"]["logg"]["sigma_mad"] < 0.25
    assert validation["ext"]["sigma_mad"] < 0.08


def test_infer_and_generate_round_trip(trained, tmp_path):
    path, truth, _ = trained["absolute"]
    d = trained["dir"]
    r = run("infer", d / "absolute_valid.fits", "--model", path, "--covariance", "--prefix",
            "fit", "-o", tmp_path / "fit.fits", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    fit = read_table(str(tmp_path / "fit.fits"))
    for column in ("teff", "teff_error", "teff_q16", "ext", "ebv", "parallax", "parallax_error",
                   "chi2", "dof", "ln_prior", "covariance", "infer_flag"):
        assert "fit_" + column in fit, column
    assert fit["fit_covariance"].shape[1:] == (5, 5)
    assert np.allclose(np.sqrt(fit["fit_covariance"][:, 0, 0]), fit["fit_teff_error"],
                       rtol=1e-3)
    assert np.allclose(np.sqrt(fit["fit_covariance"][:, 4, 4]), fit["fit_parallax_error"],
                       rtol=1e-3)
    # labels -> spectra -> labels
    labels = Table()
    for name in ("teff", "logg", "fe_h", "ext", "parallax"):
        labels.add_column(name, np.asarray(fit["fit_" + name], np.float64)[:50])
    write_table(labels, str(tmp_path / "labels.fits"))
    r = run("generate", tmp_path / "labels.fits", "--model", path, "-o",
            tmp_path / "spectra.fits", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    spectra = read_table(str(tmp_path / "spectra.fits"))
    assert spectra["flux"].shape == (50, N_XP) and "ks_m" in spectra
    assert sum("generate" in line for line in spectra.history) == 1   # stamped once
    spectra.add_column("flux_error", 0.002 * np.abs(spectra["flux"]))
    write_table(spectra, str(tmp_path / "spectra2.fits"))
    r = run("infer", tmp_path / "spectra2.fits", "--model", path, "--prefix", "fit", "-o",
            tmp_path / "back.fits", "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    back = read_table(str(tmp_path / "back.fits"))
    assert np.median(np.abs(back["fit_teff"] - back["teff"])) < 20
    assert np.median(np.abs(back["fit_ext"] - back["ext"])) < 0.01
    assert np.median(np.abs(back["fit_parallax"] / back["parallax"] - 1)) < 0.01


def test_grid_and_extinction_curve(trained, tmp_path):
    path, _, _ = trained["relative"]
    r = run("generate", "--model", path, "--grid",
            "teff=4000:7000:1000,logg=4.6,fe_h=0,ext=0:1:0.5", "-o", tmp_path / "g.fits",
            "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    g = read_table(str(tmp_path / "g.fits"))
    assert len(g) == 4 * 3 and g.meta["WAVEMIN"] == 392.0 and g.meta["WAVESTEP"] == 10.0
    blue = g["flux"][:, 0] / g["flux"][:, -1]
    assert blue[(g["teff"] == 5000) & (g["ext"] == 1.0)][0] < \
        blue[(g["teff"] == 5000) & (g["ext"] == 0.0)][0]          # dust reddens
    r = run("generate", "--model", path, "--extinction-curve", "-o", tmp_path / "r.ecsv")
    assert r.returncode == 0, r.stderr.decode()
    curve = read_table(str(tmp_path / "r.ecsv"))
    assert list(curve.colnames) == ["wavelength", "r", "r_normalised", "ccm_normalised"]
    assert curve["r_normalised"][-1] == pytest.approx(0.0, abs=1e-9)
    r = run("generate", "--model", path, "--grid", "teff=5000,logg=4", "-o", tmp_path / "x.fits")
    assert r.returncode != 0 and b"give fe_h" in r.stderr
    r = run("generate", "--grid", "teff=5000,logg=4,fe_h=0", "-o", tmp_path / "y.fits")
    assert r.returncode != 0 and b"--grid needs a forward or transformer model" in r.stderr


def test_bad_input_gives_nan_and_flags(trained, tmp_path):
    path, truth, _ = trained["relative"]
    table, _ = synthetic_stars(truth, 6, seed=9, parallax=False)
    table.remove_columns([c for c in table.colnames if c.startswith(("teff", "logg", "fe_h"))])
    table["flux"][0] = np.nan               # no XP
    table["flux"][1, :20] = np.nan          # NaN samples (BP's part)
    table["j_m"][2] = np.nan                # one 2MASS band missing
    for band in TWO_MASS:                   # no 2MASS at all
        table[band][3] = np.nan
    write_table(table, str(tmp_path / "bad.fits"))
    r = run("infer", tmp_path / "bad.fits", "--model", path, "-o", tmp_path / "out.fits",
            "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    out = read_table(str(tmp_path / "out.fits"))
    flag = np.asarray(out["infer_flag"])
    assert np.isnan(out["teff"][0]) and flag[0] & FLAG_UNUSABLE and flag[0] & FLAG_NO_XP
    assert np.isfinite(out["teff"][1]) and flag[1] & FLAG_PARTIAL_XP
    assert out["dof"][1] == 64 - 20 - 5
    assert np.isfinite(out["teff"][2]) and flag[2] & FLAG_PARTIAL_PHOTOMETRY
    assert np.isfinite(out["teff"][3]) and flag[3] & FLAG_NO_PHOTOMETRY
    assert np.isfinite(out["teff"][4:]).all()
    table.remove_columns(["flux"])
    write_table(table, str(tmp_path / "noxp.fits"))
    r = run("infer", tmp_path / "noxp.fits", "--model", path, "-o", tmp_path / "o2.fits")
    assert r.returncode == 1 and b"no XP spectra" in r.stderr
    assert not (tmp_path / "o2.fits").exists()
    r = run("train", tmp_path / "bad.fits", "--model", "msa", "--ext-prior", "ak_targ",
            "-o", tmp_path / "m")
    assert r.returncode != 0 and b"--ext-prior is for --model forward" in r.stderr
    r = run("flag", tmp_path / "bad.fits", "--model", path, "-o", tmp_path / "f.fits")
    assert r.returncode == 1 and b"no embedding for the detectors" in r.stderr
    r = run("embed", tmp_path / "bad.fits", "--model", path, "-o", tmp_path / "e.fits")
    assert r.returncode == 1 and b"forward model has no latent space" in r.stderr


def test_shipped_model_names(tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    assert models.shipped("msa-apogee") == os.path.join(models.DATA, "msa-apogee")
    (tmp_path / "msa-apogee").mkdir()          # a folder of that name here wins
    assert models.shipped("msa-apogee") == "msa-apogee"
    assert models.shipped("no-such-model") == "no-such-model"
    table, _ = synthetic_stars(truth_model(False), 3, seed=1, parallax=False)
    write_table(table, str(tmp_path / "t.fits"))
    r = run("infer", tmp_path / "t.fits", "--model", "svae-apogee", "--covariance", "-o",
            tmp_path / "o.fits")
    assert r.returncode == 1 and b"does not predict labels" in r.stderr


def test_a_sampled_covariance_is_used_when_the_table_has_one():
    truth = truth_model(False)
    table, _ = synthetic_stars(truth, 20, seed=6, parallax=False)
    plain = truth.fit_stars(table, "t")
    error = np.asarray(table["flux_error"])
    table.add_column("flux_covariance", np.einsum("ni,ij->nij", error ** 2, np.eye(N_XP)))
    same = truth.fit_stars(table, "t")            # the diagonal as a covariance: the same fits
    assert np.allclose(same["values"]["teff"], plain["values"]["teff"], rtol=1e-6)
    assert np.allclose(same["chi2"], plain["chi2"], rtol=1e-5)
    # correlated errors (neighbouring samples at 0.9) weigh the data differently
    rho = 0.9 ** np.abs(np.subtract.outer(np.arange(N_XP), np.arange(N_XP)))
    table.columns["flux_covariance"] = error[:, :, None] * rho * error[:, None, :]
    other = truth.fit_stars(table, "t")
    assert not np.allclose(other["chi2"], plain["chi2"], rtol=1e-3)
    assert np.isfinite(other["values"]["teff"]).all()


def test_a_missing_sample_inside_the_spectrum_weighs_nothing():
    truth = truth_model(False)
    table, _ = synthetic_stars(truth, 4, seed=8, parallax=False)
    for i, index in enumerate((5, 10, 30, 59)):
        table["flux"][i, index] = np.nan
    data = truth.data(table, "t")
    rng = np.random.default_rng(0)
    for i, index in enumerate((5, 10, 30, 59)):
        observed = data["observed"][i]
        assert not observed[index] and observed.sum() == 63
        assert np.all(data["W"][i][:, index] == 0)
        # chi2 through W against the observed block's covariance, built and solved directly
        d, scale = data["d"][i], np.exp(data["ln_scale"][i])
        bands = d[N_XP:] * 0.4 * math.log(10.0) * 0.03           # 0.03 mag, normalised
        sigma = np.r_[np.asarray(table["flux_error"][i]) / scale, bands]
        c = covariance(d[None], np.diag(np.where(observed, sigma, 0.0) ** 2)[None], N_XP,
                       XP_WAVELENGTHS < 640)[0][np.ix_(observed, observed)]
        r = rng.normal(size=64) * 1e-3
        exact = r[observed] @ np.linalg.solve(c, r[observed])
        assert np.sum((data["W"][i] @ r) ** 2) == pytest.approx(exact, rel=1e-6)
