"""The scatter VAE that ships inside xptools: present, loadable, used by embed and generate by
default, and the same latents for the same stars given as coefficients or sampled spectra."""

import os

import numpy as np

from conftest import run
from xptools import models
from xptools.io import Table, read_table, write_table

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "apogee_xp_200.fits")


def test_default_svae_ships_and_loads():
    path = models.default_path("embed")
    assert path == models.default_path("generate")
    model = models.load(path)
    assert model.kind == "svae" and model.latent == 6
    assert os.path.getsize(os.path.join(path, "weights.safetensors")) < 20e6
    card = open(os.path.join(path, "card.md")).read()
    for section in ("## Training", "## Validation", "## Known limits"):
        assert section in card


def test_embed_and_reconstruct_the_example_without_a_model_option(tmp_path):
    r = run("embed", EXAMPLE, "-o", tmp_path / "z.fits")
    assert r.returncode == 0, r.stderr.decode()
    z = read_table(str(tmp_path / "z.fits"))
    assert len(z) == 200 and np.isfinite(z["z"]).all()
    # the latent space orders the (unseen) stars by temperature: some axis follows Teff
    r_teff = [abs(np.corrcoef(z["z"][:, j], z["apogee_teff"])[0, 1]) for j in range(6)]
    assert max(r_teff) > 0.5
    r = run("generate", "--reconstruct", EXAMPLE, "-o", tmp_path / "rec.fits")
    assert r.returncode == 0, r.stderr.decode()
    rec = read_table(str(tmp_path / "rec.fits"))
    np.testing.assert_allclose(rec["z"], z["z"], rtol=1e-5, atol=1e-6)
    observed = z["flux"][:, ::3]
    grid = np.arange(336.0, 1021.0, 6.0)
    band = (grid >= 400) & (grid <= 1000)
    assert np.median(np.abs(rec["flux"][:, band] / observed[:, band] - 1)) < 0.03
    assert np.mean(rec["outlier_percentile"] > 99) < 0.1


def test_coefficient_and_sampled_input_agree(shared, tmp_path):
    """The stars of overlap_with_apogee_xp.npz, once as coefficients (sampled inside
    embed) and once as the library's sampled flux: the same z, well within z_error."""
    npz = np.load(os.path.join(shared, "xp_continuous", "overlap_with_apogee_xp.npz"))
    coefficients = read_table(os.path.join(shared, "xp_continuous", "xp_continuous_2000.fits"))
    library = read_table(os.path.join(shared, "apogee_xp", "xp_sampled.fits"))
    # the library's G is needed for both inputs: keep the overlap stars it holds (not all do)
    keep = np.isin(npz["source_id"], library["source_id"])
    assert keep.any()
    d = {k: npz[k][keep] for k in ("source_id", "sampled_flux_Wm2nm")}
    rows = [int(np.flatnonzero(coefficients["source_id"] == s)[0]) for s in d["source_id"]]
    lib_rows = [int(np.flatnonzero(library["source_id"] == s)[0]) for s in d["source_id"]]
    continuous = coefficients.rows(rows)
    continuous.add_column("phot_g_mean_mag", library["phot_g_mean_mag"][lib_rows])
    sampled = Table(meta={"WAVEMIN": 336.0, "WAVEMAX": 1020.0})
    sampled.add_column("source_id", d["source_id"])
    sampled.add_column("flux", d["sampled_flux_Wm2nm"])
    sampled.add_column("phot_g_mean_mag", library["phot_g_mean_mag"][lib_rows])
    write_table(continuous, str(tmp_path / "c.fits"))
    write_table(sampled, str(tmp_path / "s.fits"))
    for name in ("c", "s"):
        r = run("embed", tmp_path / f"{name}.fits", "-o", tmp_path / f"{name}_z.fits")
        assert r.returncode == 0, r.stderr.decode()
    a, b = (read_table(str(tmp_path / f"{n}_z.fits")) for n in ("c", "s"))
    assert np.all(np.abs(a["z"] - b["z"]) < 0.1 * b["z_error"])
