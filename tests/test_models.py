"""The model framework (model directories, training loop, resume) and train/infer with the
Masked Stellar Autoencoder, on tiny models that train in seconds."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import gaia_bp_rp, run, synthetic_sampled
from xptools.io import read_table, write_table

TINY = {"labels": ["teff", "logg"],
        "hyperparameters": {"members": 2, "pretrain_epochs": 2, "finetune_epochs": 3,
                            "widths": [48], "latent": 12, "head_width": 24, "frequencies": 3,
                            "batch_size": 64, "patience": 50, "monitor_fraction": 0.1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_table(synthetic_sampled(400, seed=1), str(d / "train.fits"))
    write_table(synthetic_sampled(120, seed=2), str(d / "valid.fits"))
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


@pytest.fixture(scope="module")
def model(data):
    out = data / "model"
    r = run("train", data / "train.fits", "--recipe", data / "tiny.json", "--valid",
            data / "valid.fits", "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    assert b"| all | teff |" in r.stdout  # the validation report
    return out


def test_model_directory(model):
    assert sorted(os.listdir(model)) == ["card.md", "config.json", "detectors.safetensors",
                                         "validation.json", "weights.safetensors"]
    config = json.loads((model / "config.json").read_text())
    assert config["detectors"]["embedding"] == "head"    # xptools flag's (tests/test_flag.py)
    assert config["kind"] == "msa" and config["labels"] == ["teff", "logg"]
    assert len(config["features"]["median"]) == len(config["features"]["wavelengths"]) + 5
    assert config["provenance"]["seed"] == 0 and config["provenance"]["train_rows"] > 300
    report = json.loads((model / "validation.json").read_text())
    assert report["all"]["teff"]["n"] == 120
    card = (model / "card.md").read_text()
    assert "## Validation" in card and "## Known limits" in card
    assert not os.path.exists(str(model) + ".partial")  # checkpoints are cleaned up


def test_model_learns_something(model, data):
    """Tiny and briefly trained, but better than predicting the mean."""
    report = json.loads((model / "validation.json").read_text())
    truth = read_table(str(data / "valid.fits"))
    assert report["all"]["teff"]["sigma_mad"] < np.std(truth["teff"])


def test_infer_adds_labels_and_keeps_columns(model, data, tmp_path):
    out = tmp_path / "labeled.fits"
    r = run("infer", data / "valid.fits", "--model", model, "--prefix", "msa", "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    t, src = read_table(str(out)), read_table(str(data / "valid.fits"))
    for name in src.colnames:
        np.testing.assert_array_equal(t[name], src[name])
    for label in ("teff", "logg"):
        for suffix in ("", "_error", "_q16", "_q84"):
            assert f"msa_{label}{suffix}" in t
        assert np.all(t[f"msa_{label}_q16"] <= t[f"msa_{label}"])
        assert np.all(t[f"msa_{label}"] <= t[f"msa_{label}_q84"])
        assert np.all(t[f"msa_{label}_error"] > 0)
    assert t.info["msa_teff"].unit == "K"
    assert t.meta["XPTMKIND"] == "msa" and len(t.meta["XPTMSUM"]) == 16
    assert "msa_infer_flag" in t


def test_infer_refuses_to_overwrite_label_columns(model, data, tmp_path):
    out = tmp_path / "labeled.fits"
    r = run("infer", data / "valid.fits", "--model", model, "-o", out)
    assert r.returncode == 1
    assert b"already has a column 'teff'; give --prefix" in r.stderr
    assert not out.exists()


def test_infer_robustness_and_flags(model, data, tmp_path):
    t = read_table(str(data / "valid.fits")).rows(slice(0, 6))
    t.remove_columns(["teff", "logg", "teff_err", "logg_err"])
    grid = np.arange(336.0, 1021.0, 2.0)
    t["flux"][1, 10:20] = np.nan                       # a few NaN samples
    t["flux"][2, grid < 640] = np.nan                  # BP half missing
    for c in ("j_m", "h_m", "ks_m"):                   # 2MASS missing in row 3
        t[c][3] = np.nan
    t["flux"][4] = np.nan                              # no XP at all (photometry only)
    t["flux"][5] = np.nan                              # nothing usable at all
    for c in ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "j_m", "h_m", "ks_m"):
        t[c][5] = np.nan
    src, out = tmp_path / "odd.fits", tmp_path / "out.fits"
    write_table(t, str(src))
    r = run("infer", src, "--model", model, "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    assert b"1 of 6 rows had nothing to predict from" in r.stderr
    o = read_table(str(out))
    flags = o["infer_flag"]
    assert flags[0] & 3 == 0
    assert flags[1] & 2 and flags[2] & 2                          # partial XP
    assert flags[3] & 8                                           # partial photometry
    assert flags[4] & 1 and np.isfinite(o["teff"][4])             # labels from photometry
    assert flags[5] & 64 and np.isnan(o["teff"][5])               # NaN + flag, not a crash
    assert np.isfinite(o["teff"][:5]).all()
    assert o["teff_error"][4] > o["teff_error"][0]                # less input, wider errors


def test_infer_flags_a_bp_rp_flux_excess(model, data, tmp_path):
    t = read_table(str(data / "valid.fits")).rows(slice(0, 3))
    t.remove_columns(["teff", "logg", "teff_err", "logg_err"])
    bp, rp = gaia_bp_rp(t["phot_g_mean_mag"], 1.0, [1.0, 1.3, 1.3])  # 1, 2: a neighbour's light
    t["phot_bp_mean_mag"][:], t["phot_rp_mean_mag"][:] = bp, rp
    t["phot_rp_mean_mag"][2] = np.nan                            # C* unknown: no flag
    write_table(t, str(tmp_path / "in.fits"))
    r = run("infer", tmp_path / "in.fits", "--model", model, "-o", tmp_path / "out.fits")
    assert r.returncode == 0, r.stderr.decode()
    o = read_table(str(tmp_path / "out.fits"))
    assert [bool(f & 256) for f in o["infer_flag"]] == [False, True, False]
    assert np.isfinite(o["teff"]).all()


def test_infer_needs_the_default_grid(model, data, tmp_path):
    t = read_table(str(data / "valid.fits")).rows(slice(0, 3))
    t.columns["flux"] = t["flux"][:, :100]
    t.columns["flux_error"] = t["flux_error"][:, :100]
    t.meta.update({"WAVEMIN": 336.0, "WAVEMAX": 534.0})
    t.remove_columns(["teff", "logg"])
    src = tmp_path / "short.fits"
    write_table(t, str(src))
    r = run("infer", src, "--model", model, "-o", tmp_path / "out.fits")
    assert r.returncode == 1 and b"which the model needs" in r.stderr


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(os.path.join(path, "weights.safetensors"))


def test_same_seed_same_model(model, data, tmp_path):
    again = tmp_path / "again"
    r = run("train", data / "train.fits", "--recipe", data / "tiny.json", "-o", again,
            "--quiet")
    assert r.returncode == 0, r.stderr.decode()
    a, b = _weights(model), _weights(again)
    differ = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a if not np.array_equal(a[k], b[k])}
    assert not differ, f"same seed, different weights (max |difference|): {differ}"
    other = tmp_path / "other"
    assert run("train", data / "train.fits", "--recipe", data / "tiny.json", "-o", other,
               "--seed", "7", "--quiet").returncode == 0
    c = _weights(other)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_kill_matches_an_uninterrupted_run(model, data, tmp_path, signum):
    recipe = dict(TINY, hyperparameters=dict(TINY["hyperparameters"], finetune_epochs=12))
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    args = [sys.executable, "-m", "xptools", "train", str(data / "train.fits"), "--recipe",
            str(tmp_path / "r.json"), "--checkpoint-every", "3", "--quiet"]
    straight = tmp_path / "straight"
    assert subprocess.run(args + ["-o", str(straight)]).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + ["-o", str(killed)], stderr=subprocess.PIPE)
    marker = killed.parent / "killed.partial" / "checkpoints" / "finetune-0.safetensors"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate()
    assert not killed.exists(), "the run finished before it could be killed"
    if signum == signal.SIGTERM:  # a clean stop says where the checkpoints are
        assert proc.returncode == 143 and b"continue with --resume" in err, err
    r = run("train", data / "train.fits", "--recipe", tmp_path / "r.json", "--checkpoint-every",
            "3", "--quiet", "-o", killed)
    assert r.returncode == 1 and b"--resume" in r.stderr  # no silent restart
    r = run("train", data / "train.fits", "--recipe", tmp_path / "r.json", "--checkpoint-every",
            "3", "--quiet", "-o", killed, "--resume")
    assert r.returncode == 0, r.stderr.decode()
    a, b = _weights(straight), _weights(killed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_model_directories(model, data, tmp_path):
    import shutil

    def infer_with(path):
        r = run("infer", data / "valid.fits", "--model", path, "--prefix", "x",
                "-o", tmp_path / "out.fits")
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
        return r.stderr.decode()

    assert "no such model directory" in infer_with(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(dict(config, kind="nope")))
    assert "unknown model kind 'nope'" in infer_with(broken)
    (broken / "config.json").write_text("{not json")
    assert "not valid JSON" in infer_with(broken)
    (broken / "config.json").write_text(json.dumps(dict(config, format_version=99)))
    assert "format_version 99, this xptools reads 1" in infer_with(broken)
    wider = dict(config, hyperparameters=dict(config["hyperparameters"], latent=13))
    (broken / "config.json").write_text(json.dumps(wider))
    assert "weights do not match the config" in infer_with(broken)
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "weights.safetensors").write_bytes(b"garbage")
    assert "unreadable weights" in infer_with(broken)
    os.remove(broken / "weights.safetensors")
    assert "no weights.safetensors" in infer_with(broken)


def test_train_input_errors(data, tmp_path):
    r = run("train", data / "train.fits", "--labels", "teff,nope", "-o", tmp_path / "m")
    assert r.returncode == 1 and b"no label column 'nope'" in r.stderr
    r = run("train", data / "train.fits", "-o", tmp_path / "m")
    assert r.returncode == 1 and b"name the labels" in r.stderr
    r = run("train", data / "train.fits", "--model", "xgb", "--labels", "teff",
            "-o", tmp_path / "m")
    assert r.returncode == 1 and b"unknown model kind 'xgb'" in r.stderr
    assert not (tmp_path / "m").exists()


def test_masking_of_bands_and_anchors():
    """Rows that keep their XP may lose one band's own samples or the anchors; a row never
    loses both its XP and its anchors."""
    import torch

    from xptools.models.features import FeatureSpec
    from xptools.models.msa import Hyperparameters, MaskedStellarAutoencoder
    from xptools.xp import BANDS

    spec = FeatureSpec()
    bp, rp = spec.band_only("bp"), spec.band_only("rp")
    w = np.asarray(spec.wavelengths)
    assert w[bp].max() < 636 and w[rp].min() > 642 and (~bp & ~rp).sum() == 2  # 636, 642 nm
    coefficients = FeatureSpec(xp="coefficients")
    assert coefficients.band_only("bp")[:55].all() and not coefficients.band_only("bp")[55:].any()

    hyper = Hyperparameters(p_hide_band=0.3, p_hide_anchors=0.5)
    model = MaskedStellarAutoencoder(["teff"], spec, hyper)
    n_xp = spec.n_xp
    groups = {"anchors": torch.tensor([n in hyper.anchors for n in spec.names[n_xp:]]),
              **{b: torch.from_numpy(spec.band_only(b)) for b in BANDS}}
    observed = torch.ones(4000, len(spec.names), dtype=torch.bool)
    torch.manual_seed(0)
    visible = model._visible(observed, groups, p_xp=0.5, p_other=0.0).numpy()
    xp, anchors = visible[:, :n_xp], visible[:, n_xp:][:, groups["anchors"].numpy()]
    no_xp = ~xp.any(axis=1)
    assert anchors[no_xp].all()                                   # never both hidden
    assert 0.4 < (~anchors[~no_xp].all(axis=1)).mean() < 0.6      # anchors hidden, p = 0.5
    assert (anchors.all(axis=1) | ~anchors.any(axis=1)).all()     # hidden together
    shown = xp[~no_xp]
    no_bp, no_rp = ~shown[:, bp].any(axis=1), ~shown[:, rp].any(axis=1)
    assert shown[no_bp][:, ~bp].all() and shown[no_rp][:, ~rp].all()  # exactly one band
    assert not (no_bp & no_rp).any()
    assert 0.25 < no_bp.mean() < 0.35 and 0.25 < no_rp.mean() < 0.35
    assert ((shown.all(axis=1)) | no_bp | no_rp).all()            # nothing else hidden


def test_predict_reports_progress_within_a_chunk(model, data):
    """The progress bar moves as batches of a chunk are done, not once per chunk."""
    from xptools import models
    from xptools.models.features import XPSource

    loaded = models.load(str(model))
    t = read_table(str(data / "valid.fits"))
    xp, _ = XPSource(t, "valid", loaded.features)(t)
    values, _, observed, _ = loaded.features.raw(t, xp, None)
    x = loaded.features.scale(values)
    steps = []
    pred = loaded.predict(x, observed, batch=50, advance=steps.append)
    assert steps == [50, 50, 20]
    np.testing.assert_allclose(pred["teff"][0], loaded.predict(x, observed)["teff"][0], rtol=1e-6)


def test_train_without_valid_says_so(data, tmp_path):
    out = tmp_path / "model"
    r = run("train", data / "train.fits", "--recipe", data / "tiny.json", "-o", out, "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert b"no validation report: give --valid FILE" in r.stdout
    card = (out / "card.md").read_text()
    assert "None: trained without `--valid`" in card
    assert "rows above" not in card  # there are none to see
