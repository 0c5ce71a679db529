"""The model that ships inside xptools: present, loadable, used by default, and consistent
between coefficient and sampled input for the same stars."""

import os

import numpy as np

from conftest import run
from xptools import models
from xptools.io import Table, read_table, write_table

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "apogee_xp_200.fits")


def test_default_model_ships_and_loads():
    path = models.default_path("infer")
    model = models.load(path)
    assert model.kind == "msa" and model.labels == ["teff", "logg", "fe_h", "alpha_m"]
    size = os.path.getsize(os.path.join(path, "weights.safetensors"))
    assert size < 20e6
    card = open(os.path.join(path, "card.md")).read()
    for section in ("## Training", "## Validation", "## Known limits"):
        assert section in card


def test_infer_on_the_example_without_a_model_option(tmp_path):
    out = tmp_path / "labeled.fits"
    r = run("infer", EXAMPLE, "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    t = read_table(str(out))
    assert len(t) == 200
    # the example's stars are from the validation split: the model never saw them
    d = t["teff"] - t["apogee_teff"]
    assert np.median(np.abs(d[t["apogee_teff"] < 7000])) < 150


def test_coefficient_and_sampled_input_agree(shared, tmp_path):
    """The two stars of overlap_with_apogee_xp.npz, once as coefficients (sampled inside
    infer) and once as the APOGEE library's sampled flux: the same labels, well within the
    errors. The file has no photometry for them, so G comes from the XP spectrum in both."""
    d = np.load(os.path.join(shared, "xp_continuous", "overlap_with_apogee_xp.npz"))
    coefficients = read_table(os.path.join(shared, "xp_continuous", "xp_continuous_2000.fits"))
    rows = [int(np.flatnonzero(coefficients["source_id"] == s)[0]) for s in d["source_id"]]
    continuous = coefficients.rows(rows)
    sampled = Table(meta={"WAVEMIN": 336.0, "WAVEMAX": 1020.0})
    sampled.add_column("source_id", d["source_id"])
    sampled.add_column("flux", d["sampled_flux_Wm2nm"])
    sampled.add_column("flux_error", d["sampled_flux_error_Wm2nm"])
    results = []
    for name, table in (("continuous.fits", continuous), ("sampled.fits", sampled)):
        write_table(table, str(tmp_path / name))
        out = tmp_path / ("labeled_" + name)
        r = run("infer", tmp_path / name, "-o", out)
        assert r.returncode == 0, r.stderr.decode()
        results.append(read_table(str(out)))
    a, b = results
    assert np.all(a["infer_flag"] & 16) and np.all(b["infer_flag"] & 16)  # G from XP
    for label in ("teff", "logg", "fe_h", "alpha_m"):
        assert np.all(np.abs(a[label] - b[label]) < 0.05 * a[label + "_error"]), label
