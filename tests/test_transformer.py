"""The Transformer foundation model (Leung & Bovy 2024): the paper's checks on a tiny model
(set invariance, Eq. 11, k requests in one pass), training and the commands on synthetic
stars, bad input, and the shipped transformer-apogee (labels in -> out, log g from Teff and
[Fe/H] alone)."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import run, synthetic_sampled
from xptools import models
from xptools.io import read_table, write_table
from xptools.models.transformer import (Hyperparameters, TransformerModel, combine,
                                        loss_eq11, row_seeds)

TINY = {"model": "transformer", "labels": ["teff", "logg"],
        "hyperparameters": {"d": 16, "heads": 2, "width": 32, "encoder_blocks": 1,
                            "decoder_blocks": 1, "epochs": 30, "batch_size": 64,
                            "lr": 0.003, "patience": 50, "monitor_fraction": 0.1}}
SHIPPED = os.path.join(models.DATA, "transformer-apogee")


def tiny_model(context=64, seed=0) -> TransformerModel:
    torch.manual_seed(seed)
    model = TransformerModel(["teff", "logg"], hyper=Hyperparameters(
        d=16, heads=2, width=32, encoder_blocks=2, decoder_blocks=2, context=context))
    model.network.eval()
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_table(synthetic_sampled(600, seed=1), str(d / "train.fits"))
    write_table(synthetic_sampled(150, seed=2), str(d / "valid.fits"))
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


@pytest.fixture(scope="module")
def model(data):
    out = data / "model"
    r = run("train", data / "train.fits", "--recipe", data / "tiny.json", "--valid",
            data / "valid.fits", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert b"| all | teff |" in r.stdout and b"Never-requested" in r.stdout
    return out


def test_eq11_by_hand():
    """0.5 ((yhat - y)^2 / (s_known^2 + s_pred^2) + ln(s_known^2 + s_pred^2))."""
    mean = torch.tensor([[1.0, 0.0]])
    ln_var = torch.log(torch.tensor([[0.5, 2.0]]))      # s_pred^2
    y = torch.tensor([[2.0, 0.0]])
    known = torch.tensor([[0.5, 0.0]])                   # s_known
    # first: (1 / 0.75 + ln 0.75) / 2; second: (0 + ln 2) / 2
    first = 0.5 * (1 / 0.75 + np.log(0.75))
    second = 0.5 * np.log(2.0)
    both = loss_eq11(mean, ln_var, y, known, torch.tensor([[True, True]]))
    assert float(both) == pytest.approx((first + second) / 2, rel=1e-6)
    one = loss_eq11(mean, ln_var, y, known, torch.tensor([[True, False]]))
    assert float(one) == pytest.approx(first, rel=1e-6)


def test_outputs_do_not_depend_on_order_or_padding():
    """No positional encoding and masked padding [Sec. 2-3]: shuffling the given tokens or
    appending padding tokens changes nothing."""
    net = tiny_model().network
    rng = np.random.default_rng(0)
    types = torch.from_numpy(np.stack([rng.choice(60, 12, replace=False) for _ in range(3)]))
    values = torch.from_numpy(rng.normal(size=(3, 12)).astype(np.float32))
    padding = torch.zeros(3, 12, dtype=torch.bool)
    requests = torch.tensor([[60, 61, 0]] * 3)
    with torch.no_grad():
        mean, ln_var = net(types, values, padding, requests)
        perm = torch.from_numpy(rng.permutation(12))
        m2, v2 = net(types[:, perm], values[:, perm], padding, requests)
        padded = (torch.cat([types, torch.randint(0, 60, (3, 5))], 1),
                  torch.cat([values, torch.randn(3, 5) * 100], 1),
                  torch.cat([padding, torch.ones(3, 5, dtype=torch.bool)], 1))
        m3, v3 = net(*padded, requests)
    for m, v in ((m2, v2), (m3, v3)):
        assert torch.allclose(m, mean, atol=1e-5) and torch.allclose(v, ln_var, atol=1e-5)


def test_k_requests_in_one_pass_equal_k_passes():
    """Requests do not attend to each other: k in one decoder pass = k passes of one."""
    model = tiny_model()
    rng = np.random.default_rng(1)
    values = rng.normal(size=(20, len(model.vocabulary))).astype(np.float32)
    given = rng.random(values.shape) < 0.7
    requests = np.array([58, 64, 3, 40])
    mean, sigma = model.answer(values, given, requests)
    for j, t in enumerate(requests):
        m, s = model.answer(values, given, np.array([t]))
        assert np.allclose(m[:, 0], mean[:, j], atol=1e-5)
        assert np.allclose(s[:, 0], sigma[:, j], rtol=1e-5)


def test_rows_beyond_the_context_are_answered_from_draws():
    means = torch.tensor([[1.0], [3.0]])
    variances = torch.tensor([[0.5], [1.5]])
    m, v = combine(means, variances)
    assert float(m) == 2.0 and float(v) == pytest.approx(1.0 + 1.0)   # mean var + var of means
    model = tiny_model(context=8)
    rng = np.random.default_rng(2)
    values = rng.normal(size=(6, len(model.vocabulary))).astype(np.float32)
    given = np.zeros(values.shape, bool)
    given[:3, :6] = True          # within the context: one pass, draws change nothing
    given[3:, :30] = True         # beyond it: random subsets of 8
    one = model.answer(values, given, np.array([64]), draws=1)
    many = model.answer(values, given, np.array([64]), draws=6)
    assert np.allclose(one[0][:3], many[0][:3], atol=1e-6)
    assert np.allclose(one[1][:3], many[1][:3], rtol=1e-5)
    assert not np.allclose(one[0][3:], many[0][3:])
    assert np.isfinite(many[0]).all() and (many[1] > 0).all()
    # a row's subsets come from its own seed: not from its place among the rows
    seeds = row_seeds(values)
    order = np.array([5, 2, 4, 0, 3, 1])
    moved = model.answer(values[order], given[order], np.array([64]), draws=6,
                         seeds=seeds[order], batch=2)
    assert np.allclose(moved[0], many[0][order], atol=1e-6)
    assert np.allclose(moved[1], many[1][order], rtol=1e-5)


def test_training_draws_inputs_and_targets_as_the_paper():
    """5..context observed tokens given; targets observed, never a never-requested type,
    the not-given ones (labels first) before any given one."""
    model = tiny_model(context=20)
    torch.manual_seed(0)
    n_types = len(model.vocabulary)
    observed = torch.rand(500, n_types) < 0.8
    order, padding = model._draw(observed, 20, 5)
    count = (~padding).sum(1)
    assert count.min() >= 5 and count.max() <= 20 and len(set(count.tolist())) > 10
    assert observed.gather(1, order)[~padding].all()
    given = torch.zeros_like(observed).scatter_(1, order, ~padding)
    requests, valid = model._targets(observed, given, 8)
    never = [model.vocabulary.index[n] for n in model.hyper.never_requested]
    assert not np.isin(requests[valid].numpy(), never).any()
    assert observed.gather(1, requests)[valid].all()
    # ranks: an observed label not given 0, another type not given 1, a given type 2; the
    # requests of a row come in rank order, and none is passed over for a higher rank
    is_label = torch.zeros(n_types, dtype=torch.bool)
    is_label[-2:] = True
    rank = torch.where(given, 2, torch.where(is_label[None], 0, 1))
    allowed = observed.clone()
    allowed[:, never] = False
    for row in range(len(observed)):
        asked = requests[row][valid[row]]
        r = rank[row, asked]
        assert (r[1:] >= r[:-1]).all()
        left = allowed[row].clone()
        left[asked] = False
        if left.any() and len(asked):
            assert rank[row, left].min() >= r.max()


def test_model_directory_and_card(model, data, tmp_path):
    config = json.loads((model / "config.json").read_text())
    assert config["kind"] == "transformer" and config["labels"] == ["teff", "logg"]
    card = (model / "card.md").read_text()
    assert "Never-requested" in card and "j_g" in card and "Known limits" in card
    # the table has teff and logg: infer does not overwrite them
    r = run("infer", data / "valid.fits", "--model", model, "-o", tmp_path / "o.fits")
    assert r.returncode == 1 and "already has a column 'teff'" in r.stderr.decode()


def test_infer_labels_and_requests(model, data, tmp_path):
    valid = read_table(str(data / "valid.fits"))
    spectra = valid.select([c for c in valid.colnames if c not in ("teff", "logg")])
    write_table(spectra, str(tmp_path / "in.fits"))
    r = run("infer", tmp_path / "in.fits", "--model", model, "-o", tmp_path / "o.fits", "-q")
    assert r.returncode == 0, r.stderr.decode()
    t = read_table(str(tmp_path / "o.fits"))
    for c in ("teff", "teff_error", "teff_q16", "teff_q84", "logg", "infer_flag"):
        assert c in t.colnames
    d = np.asarray(t["teff"], float) - np.asarray(valid["teff"], float)
    assert 1.4826 * np.median(np.abs(d - np.median(d))) < 0.6 * np.std(valid["teff"])
    assert (np.asarray(t["teff_error"]) > 0).all()
    assert np.allclose(t["teff_q84"] - t["teff"], t["teff_error"], rtol=1e-4)
    # any request, in the order asked, from any given tokens
    r = run("infer", data / "valid.fits", "--model", model, "--request", "logg,j_m,teff",
            "--given", "xp", "--prefix", "t", "-o", tmp_path / "r.fits", "-q")
    assert r.returncode == 0, r.stderr.decode()
    t = read_table(str(tmp_path / "r.fits"))
    added = [c for c in t.colnames if c.startswith("t_") and not c.endswith(("error", "q16",
                                                                             "q84"))]
    assert added == ["t_logg", "t_j_g", "t_teff", "t_infer_flag"]
    assert t.info["t_j_g"].unit == "mag"
    # a label from another label; infer_flag says what was given: no XP (1), no photometry (4)
    r = run("infer", data / "valid.fits", "--model", model, "--request", "logg", "--given",
            "teff", "--prefix", "u", "-o", tmp_path / "u.fits", "-q")
    assert r.returncode == 0, r.stderr.decode()
    u = read_table(str(tmp_path / "u.fits"))
    assert np.isfinite(u["u_logg"]).all() and (np.asarray(u["u_infer_flag"]) & 5 == 5).all()
    # --hide takes a token out of --given; a never-requested colour is asked from the rest
    loaded = models.load(str(model))
    observed = np.ones((1, len(loaded.vocabulary)), bool)
    j = loaded.vocabulary.index["j_g"]
    assert not loaded.given_mask(observed, np.array([j]), "xp,phot", "j_g")[0, j]
    assert loaded.given_mask(observed, np.array([j]), "xp,phot", None)[0, j]
    r = run("infer", data / "valid.fits", "--model", model, "--hide", "xp,phot,labels",
            "--prefix", "h", "-o", tmp_path / "h.fits", "-q")
    assert r.returncode == 0
    h = read_table(str(tmp_path / "h.fits"))
    assert np.isnan(h["h_teff"]).all() and (np.asarray(h["h_infer_flag"]) & 64).all()


def test_token_option_errors(model, data, tmp_path):
    for args, words in ((("--request", "nope"), "unknown token 'nope'"),
                        (("--given", "xp,bogus"), "unknown token 'bogus'"),
                        (("--request", ","), "names no token")):
        r = run("infer", data / "valid.fits", "--model", model, *args, "--prefix", "x",
                "-o", tmp_path / "o.fits")
        assert r.returncode == 1 and words in r.stderr.decode(), r.stderr.decode()
        assert len(r.stderr.decode().strip().splitlines()) == 1
        assert not (tmp_path / "o.fits").exists()
    r = run("generate", data / "valid.fits", "--model", model, "--request", "teff",
            "-o", tmp_path / "o.fits")
    assert r.returncode == 1 and "xptools infer --request" in r.stderr.decode()
    r = run("generate", "--model", model, "--inpaint", data / "valid.fits", "-o",
            tmp_path / "o.fits")
    assert r.returncode == 1 and "--inpaint needs --request" in r.stderr.decode()
    r = run("generate", "--model", model, "--grid", "feh=0", "-o", tmp_path / "o.fits")
    assert r.returncode == 1 and "NAME one of teff, logg" in r.stderr.decode()
    r = run("generate", "--model", model, "--extinction-curve", "-o", tmp_path / "o.ecsv")
    assert r.returncode == 1 and "needs a forward model" in r.stderr.decode()
    for option in (("--request", "teff"), ("--draws", "3")):
        r = run("infer", data / "valid.fits", "--model", "msa-apogee", *option,
                "-o", tmp_path / "o.fits")
        assert r.returncode == 1 and "are for transformer models" in r.stderr.decode()
    recipe = {**TINY, "features": {"xp": "coefficients"}}
    (tmp_path / "bad.json").write_text(json.dumps(recipe))
    r = run("train", data / "valid.fits", "--recipe", tmp_path / "bad.json", "-o",
            tmp_path / "m")
    assert r.returncode == 1 and "sampled, linear flux / G flux" in r.stderr.decode()
    recipe = {**TINY, "hyperparameters": {**TINY["hyperparameters"], "heads": 3}}
    (tmp_path / "bad.json").write_text(json.dumps(recipe))
    r = run("train", data / "valid.fits", "--recipe", tmp_path / "bad.json", "-o",
            tmp_path / "m")
    assert r.returncode == 1 and "multiple of heads" in r.stderr.decode()


def test_generate_from_labels_grid_and_inpaint(model, data, tmp_path):
    loaded = models.load(str(model))
    r = run("generate", data / "valid.fits", "--model", model, "-o", tmp_path / "g.fits",
            "-q")
    assert r.returncode == 0, r.stderr.decode()
    g = read_table(str(tmp_path / "g.fits"))
    assert g["flux"].shape == (150, 58) and g.meta["WAVEMIN"] == 336.0
    assert g.meta["WAVESTEP"] == 12.0 and (np.asarray(g["flux_scatter"]) > 0).all()
    valid = read_table(str(data / "valid.fits"))
    observed = np.asarray(valid["flux"])[:, ::6]
    relative = np.median(np.abs(np.asarray(g["flux"]) / observed - 1))
    assert relative < 0.2    # the spectrum's scale and shape from teff, logg and colours
    r = run("generate", "--model", model, "--grid", "teff=4000:6000:1000,logg=2:4:2",
            "--request", "bp", "-o", tmp_path / "grid.fits", "-q")
    assert r.returncode == 0, r.stderr.decode()
    grid = read_table(str(tmp_path / "grid.fits"))
    bp = np.asarray(loaded.features.wavelengths) < 640
    assert len(grid) == 6 and np.isfinite(grid["flux"][:, bp]).all()
    assert np.isnan(grid["flux"][:, ~bp]).all()
    r = run("generate", "--model", model, "--inpaint", data / "valid.fits", "--given", "rp",
            "--request", "bp", "-o", tmp_path / "i.fits", "-q")
    assert r.returncode == 0, r.stderr.decode()
    filled = read_table(str(tmp_path / "i.fits"))
    assert np.allclose(filled["flux"][:, ~bp], observed[:, ~bp], rtol=1e-6)
    assert (np.asarray(filled["flux_error"])[:, bp] == 0).all()
    assert (np.asarray(filled["flux_scatter"])[:, ~bp] == 0).all()
    assert np.isfinite(filled["flux"]).all()


def test_bad_rows_give_nan_and_a_flag(model, data, tmp_path):
    valid = read_table(str(data / "valid.fits")).rows(slice(0, 4))
    flux = np.asarray(valid["flux"]).copy()
    flux[0] = np.nan                                       # no spectrum at all
    valid.columns["flux"] = flux
    for c in ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "j_m", "h_m",
              "ks_m", "teff", "logg"):
        column = np.asarray(valid[c], np.float32).copy()
        column[0] = np.nan
        valid.columns[c] = column
    write_table(valid, str(tmp_path / "bad.fits"))
    r = run("infer", tmp_path / "bad.fits", "--model", model, "--prefix", "p", "-o",
            tmp_path / "o.fits", "-q")
    assert r.returncode == 0, r.stderr.decode()
    t = read_table(str(tmp_path / "o.fits"))
    assert np.isnan(t["p_teff"][0]) and t["p_infer_flag"][0] & 64
    assert np.isfinite(t["p_teff"][1:]).all()
    assert not (np.asarray(t["p_infer_flag"][1:]) & 64).any()
    r = run("generate", tmp_path / "bad.fits", "--model", model, "-o", tmp_path / "g.fits")
    assert r.returncode == 0 and "1 of 4 rows had no token to give" in r.stderr.decode()
    g = read_table(str(tmp_path / "g.fits"))
    assert np.isnan(g["flux"][0]).all() and g["generate_flag"][0] & 64
    # inpainting a row without a G (none in the table, none from a spectrum without BP): its
    # labels are given, its spectrum (and colours) not: G normalises them
    flux[1, :150] = np.nan
    valid.columns["flux"] = flux
    g_mag = np.asarray(valid["phot_g_mean_mag"]).copy()
    g_mag[1] = np.nan
    valid.columns["phot_g_mean_mag"] = g_mag
    write_table(valid, str(tmp_path / "bad2.fits"))
    r = run("generate", "--inpaint", tmp_path / "bad2.fits", "--model", model, "--given",
            "rp,labels", "--request", "bp", "-o", tmp_path / "i.fits")
    assert r.returncode == 0, r.stderr.decode()
    assert "1 of 4 rows had no G" in r.stderr.decode()
    assert "1 of 4 rows had no token to give" in r.stderr.decode()
    i = read_table(str(tmp_path / "i.fits"))
    assert np.isnan(i["flux"][:2]).all() and (np.asarray(i["generate_flag"][:2]) & 64).all()
    assert np.isfinite(i["flux"][2:]).all()


def shipped_answers(given_labels):
    """The shipped model's answers for three stars' labels, given ``given_labels`` alone."""
    model = models.load(SHIPPED)
    labels = np.array([[4800, 2.5, -0.2, 0.05], [5600, 4.4, 0.1, 0.0], [4300, 1.8, -0.9, 0.25]])
    values = np.zeros((len(labels), len(model.vocabulary)), np.float32)
    first = len(model.vocabulary) - 4
    values[:, first:] = (labels - model.label_median) / model.label_iqr
    given = np.zeros(values.shape, bool)
    for name in given_labels:
        given[:, first + model.labels.index(name)] = True
    requests = np.arange(first, first + 4)
    mean, sigma = model.to_values(*model.answer(values, given, requests), requests)
    return labels, mean, sigma


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="transformer-apogee not shipped")
def test_shipped_log_g_is_wide_from_teff_and_metallicity():
    """[Sec. 7.3]: given Teff and [Fe/H] alone, log g is uncertain (a giant or a dwarf)."""
    _, _, sigma = shipped_answers(["teff", "fe_h"])
    assert (sigma[:, 1] > 0.4).all()


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="transformer-apogee not shipped")
@pytest.mark.xfail(strict=True, reason="measured shortfall of the shipped model: given its "
                   "four labels alone it does not return them (Teff off by up to 224 K, "
                   "log g by 0.63, sigma_pred 1,000-1,500 K in Teff): label-only inputs are "
                   "rare in its training (5..64 tokens, mostly flux); docs/transformer.md")
def test_shipped_returns_given_labels():
    """[Sec. 7.3]: given the labels themselves it returns them with small sigma."""
    labels, mean, sigma = shipped_answers(["teff", "logg", "fe_h", "alpha_m"])
    assert np.allclose(mean, labels, atol=[60, 0.1, 0.06, 0.03])
    assert (sigma < [100, 0.2, 0.1, 0.05]).all()
