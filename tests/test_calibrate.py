"""`xptools calibrate`: diagnostics and fits on synthetic tables with known answers, the
command line (join, bad input, outputs), and a calibrated model that `xptools infer` applies."""

import hashlib
import json
import os

import numpy as np
import pytest

from conftest import run
from xptools.calibrate import diagnostics, fit
from xptools.calibrate.calibration import Calibration, LabelCalibration
from xptools.errors import UserError
from xptools.io import Table, read_table, write_table

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "apogee_xp_200.fits")
SHIPPED = os.path.join(os.path.dirname(__file__), "..", "xptools", "data", "msa-apogee")


def draws(n, seed=0, scale=1.0, a=1.0, b=0.0, ref_ratio=0.3, lo=3800.0, hi=6500.0,
          error=80.0):
    """Predictions m with errors e, and references y with errors e_y such that
    y | m ~ N(a m + b, sqrt((scale e)^2 + e_y^2)): errors ``scale`` times too small, an
    offset b and a slope a to recover."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(lo, hi, n)
    e = error * rng.uniform(0.5, 1.5, n)
    e_y = ref_ratio * e
    y = a * m + b + rng.normal(size=n) * np.sqrt((scale * e) ** 2 + e_y ** 2)
    return m, e, y, e_y


def labeled_tables(n=2000, seed=0, **kw):
    """(LABELED, REF): infer's columns for teff and logg; REF's teff, teff_err, logg, logg_err,
    snr by source_id, rows in another order."""
    labeled, ref = Table(), Table()
    ids = np.arange(n, dtype=np.int64) + 10 ** 15
    labeled.add_column("source_id", ids)
    order = np.random.default_rng(seed + 99).permutation(n)
    ref.add_column("source_id", ids[order])
    for k, (label, lo, hi, error) in enumerate((("teff", 3800, 6500, 80.0),
                                                ("logg", 1.0, 4.8, 0.15))):
        m, e, y, e_y = draws(n, seed + k, lo=lo, hi=hi, error=error, **kw)
        labeled.add_column(label, m)
        labeled.add_column(f"{label}_error", e)
        labeled.add_column(f"{label}_q16", m - e)
        labeled.add_column(f"{label}_q84", m + e)
        ref.add_column(label, y[order])
        ref.add_column(f"{label}_err", e_y[order])
    ref.add_column("snr", np.full(n, 100.0))
    return labeled, ref


def write_pair(tmp_path, **kw):
    labeled, ref = labeled_tables(**kw)
    write_table(labeled, str(tmp_path / "labeled.fits"))
    write_table(ref, str(tmp_path / "ref.fits"))
    return tmp_path / "labeled.fits", tmp_path / "ref.fits"


# -- the numbers ------------------------------------------------------------------------------

def test_errors_twice_too_small_give_s_2():
    m, e, y, e_y = draws(5000, scale=2.0)
    s = fit.fit_scale(m - y, e, e_y, np.random.default_rng(0))
    assert abs(s["s"] - 2) < 0.05 * 2, s
    assert 0 < s["s_error"] < 0.05 and not s["floor"]


def test_injected_offset_and_slope_are_recovered_within_their_bootstrap_errors():
    m, e, y, e_y = draws(3000, seed=3, a=1.08, b=-350.0)
    line = fit.fit_linear(m, y, e, e_y, np.random.default_rng(1))
    assert abs(line["a"] - 1.08) < 2 * line["a_error"], line
    assert abs(line["b"] + 350) < 2 * line["b_error"], line
    assert line["a_error"] < 0.02 and line["ab_correlation"] < -0.9   # b and a trade off
    # and then the errors: s of the mapped values is 1
    s = fit.fit_scale(line["a"] * m + line["b"] - y, e, e_y, np.random.default_rng(2))
    assert abs(s["s"] - 1) < 3 * s["s_error"]


def test_bootstrap_errors_are_honest():
    """Over 40 synthetic sets the truth lies within one bootstrap error about 68% of the
    time, for s, a and b."""
    inside = {"s": 0, "a": 0, "b": 0}
    trials = 40
    for seed in range(trials):
        m, e, y, e_y = draws(800, seed=100 + seed, scale=1.5, a=0.95, b=200.0)
        rng = np.random.default_rng(seed)
        line = fit.fit_linear(m, y, e, e_y, rng, bootstrap=100)
        s = fit.fit_scale(0.95 * m + 200 - y, e, e_y, rng, bootstrap=100)
        inside["a"] += abs(line["a"] - 0.95) < line["a_error"]
        inside["b"] += abs(line["b"] - 200) < line["b_error"]
        inside["s"] += abs(s["s"] - 1.5) < s["s_error"]
    for name, count in inside.items():
        assert 0.5 <= count / trials <= 0.88, (name, count)


def test_calibrated_data_give_a_uniform_pit():
    m, e, y, e_y = draws(3000, seed=7)
    d = diagnostics.label_diagnostics(m, e, m - e, m + e, y, e_y)
    assert d["ks_p"] > 0.05, d["ks_p"]
    assert d["pit_shape"] == "flat"
    assert abs(d["coverage_68"] - diagnostics.NOMINAL_68) < 0.03
    assert abs(d["coverage_95"] - diagnostics.NOMINAL_95) < 0.015
    assert abs(d["z_sigma_mad"] - 1) < 0.05
    assert abs(d["bias"]) < 0.1 * np.median(e)
    np.testing.assert_allclose(d["reliability"], diagnostics.LEVELS, atol=0.035)
    # [q16, q84] = m +- e, widened by e_y: the same interval as +-1 sigma
    assert d["coverage_68_quantiles"] == pytest.approx(d["coverage_68"])
    s = fit.fit_scale(m - y, e, e_y, np.random.default_rng(0))
    assert abs(s["s"] - 1) < 3 * s["s_error"]


@pytest.mark.parametrize("kw, shape", [
    ({"scale": 2.0}, "U: over-confident"),
    ({"scale": 0.5}, "inverted U: conservative"),
    ({"b": -60.0}, "skewed: predictions high"),
    ({"b": 60.0}, "skewed: predictions low"),
])
def test_pit_shapes(kw, shape):
    m, e, y, e_y = draws(3000, seed=5, **kw)
    assert shape in diagnostics.label_diagnostics(m, e, None, None, y, e_y)["pit_shape"]


def test_the_label_only_floor_says_so_and_keeps_the_errors():
    """Reference errors twice the predicted ones, differences narrower than the reference
    errors alone: the label-only PIT is an inverted U and s stays 1."""
    rng = np.random.default_rng(11)
    n = 3000
    e = rng.uniform(40, 120, n)
    e_y = 2 * e
    d = rng.normal(size=n) * 0.8 * e_y
    found = diagnostics.label_diagnostics(d, e, None, None, np.zeros(n), e_y)
    assert found["label_only"]["floor"]
    assert "inverted U" in found["label_only"]["pit_shape"]
    s = fit.fit_scale(d, e, e_y, rng)
    assert s == {"s": 1.0, "s_error": 0.0, "floor": True}


def test_hexagonal_cells_are_matplotlibs():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(3)
    x, y = rng.normal(3.7, 0.05, 4000), rng.normal(3.0, 1.0, 4000)
    extent = (3.55, 3.85, 0.0, 5.0)
    inside = (x >= extent[0]) & (x <= extent[1]) & (y >= extent[2]) & (y <= extent[3])
    x, y = x[inside], y[inside]
    cell, centres = diagnostics.hex_cells(x, y, 18, extent)
    counts = np.bincount(cell)
    ours = sorted(zip(np.round(centres[:, 0], 6), np.round(centres[:, 1], 6), counts))
    hexbin = Figure().add_subplot().hexbin(x, y, gridsize=18, extent=extent, mincnt=1)
    theirs = sorted(zip(np.round(hexbin.get_offsets()[:, 0], 6),
                        np.round(hexbin.get_offsets()[:, 1], 6), hexbin.get_array()))
    assert ours == theirs


def test_cell_ks_is_the_ks_distance_of_each_cell():
    rng = np.random.default_rng(4)
    cell = rng.integers(0, 7, 500)
    p = rng.uniform(size=500) ** 1.3
    counts, d = diagnostics.cell_ks(cell, p, 8)
    assert counts[7] == 0 and np.isnan(d[7])
    for k in range(7):
        assert d[k] == pytest.approx(diagnostics.ks_distance(p[cell == k]))
        assert d[k] == pytest.approx(diagnostics.ks_test(p[cell == k])[0])


def test_calibration_applies_and_inverts():
    c = Calibration("linear", {"teff": LabelCalibration(s=1.3, a=1.05, b=-100.0,
                                                        range=[4000.0, 6000.0])})
    m = np.array([3500.0, 5000.0, np.nan])
    e = np.array([50.0, 60.0, np.nan])
    (m2, e2, lo, hi), outside = c.apply("teff", m, e, m - 40, m + 70)
    np.testing.assert_allclose(m2[:2], 1.05 * m[:2] - 100)
    np.testing.assert_allclose(e2[:2], 1.3 * e[:2])
    np.testing.assert_allclose((m2 - lo)[:2], [52.0, 52.0])
    np.testing.assert_allclose((hi - m2)[:2], [91.0, 91.0])
    assert outside.tolist() == [True, False, False]
    back = c.invert("teff", m2, e2, lo, hi)
    np.testing.assert_allclose(back[0][:2], m[:2])
    np.testing.assert_allclose(back[2][:2], (m - 40)[:2])
    again = Calibration.from_dict(json.loads(json.dumps(c.to_dict())), ["teff", "logg"])
    assert again.id == c.id
    for bad, message in (({"s": -1.0}, "must be positive"), ({"a": 0.0}, "a = 0"),
                         ({"range": [2.0, 1.0]}, "is not [low, high]")):
        d = c.to_dict()
        d["labels"]["teff"].update(bad)
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            Calibration.from_dict(d, ["teff"])
    with pytest.raises(ValueError, match="not one of the model's"):
        Calibration.from_dict(c.to_dict(), ["logg"])


# -- the command ------------------------------------------------------------------------------

def test_scale_target_coverage(tmp_path):
    """--scale-target coverage: +-1 sigma holds 68.27% of the fitted differences exactly."""
    labeled, ref = write_pair(tmp_path, scale=2.0)
    report = tmp_path / "r.json"
    r = run("calibrate", labeled, "--reference", ref, "--fit", "scale", "--scale-target",
            "coverage", "--report", report)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(report.read_text())
    assert out["calibration"]["scale_target"] == "coverage"
    for label in ("teff", "logg"):
        assert abs(out["fit"]["labels"][label]["s"] - 2) < 0.1
        assert abs(out["after"]["all"][label]["coverage_68"] - 0.683) < 0.002
    r = run("calibrate", labeled, "--reference", ref, "--fit", "scale", "--scale-target", "x")
    assert r.returncode == 1 and b"choose mad or coverage" in r.stderr


def test_scale_from_the_command_line(tmp_path):
    labeled, ref = write_pair(tmp_path, scale=2.0)
    report = tmp_path / "r.json"
    r = run("calibrate", labeled, "--reference", ref, "--fit", "scale", "--report", report,
            "--plots", tmp_path / "plots", "--where", "teff_ref < 5000")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert r.stdout == b""                       # the table goes to stderr
    assert "| all | teff | 2000 |" in err and "U: over-confident" in err
    out = json.loads(report.read_text())
    for label in ("teff", "logg"):  # the default target: sigma_MAD of z is 1
        assert abs(out["fit"]["labels"][label]["s"] - 2) < 0.1
        assert abs(out["after"]["all"][label]["z_sigma_mad"] - 1) < 0.02
        assert abs(out["after"]["all"][label]["coverage_68"] - 0.683) < 0.03
    assert set(out["before"]) == {"all", "teff_ref < 5000"}
    assert out["before"]["teff_ref < 5000"]["teff"]["n"] < 2000
    assert out["calibration"]["reference"]["sha256"] == \
        hashlib.sha256(ref.read_bytes()).hexdigest()
    assert out["kiel"]["before"]["labels"]["teff"]["ks"]
    names = sorted(os.listdir(tmp_path / "plots"))
    assert names == ["calibrate_kiel.png", "calibrate_pit.png", "calibrate_reliability.png",
                     "calibrate_residuals.png"]
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_fit_where_and_reference_columns_of_the_same_table(tmp_path):
    labeled, ref = labeled_tables(1500, seed=2, a=1.05, b=-150.0)
    for name in ("teff", "teff_err", "logg", "logg_err"):
        order = np.argsort(ref["source_id"])
        labeled.add_column("apogee_" + name, ref[name][order])
    write_table(labeled, str(tmp_path / "both.fits"))
    report = tmp_path / "r.json"
    r = run("calibrate", tmp_path / "both.fits", "--reference-columns", "apogee_",
            "--labels", "teff", "--fit", "linear", "--fit-where", "source_id < "
            f"{10 ** 15 + 1000}", "--where", f"source_id >= {10 ** 15 + 1000}",
            "--report", report)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(report.read_text())
    c = out["fit"]["labels"]["teff"]
    assert c["n"] == 1000                             # --fit-where
    assert abs(c["a"] - 1.05) < 3 * c["a_error"] and abs(c["b"] + 150) < 3 * c["b_error"]
    assert out["labels"] == ["teff"]
    held = f"source_id >= {10 ** 15 + 1000}"          # out of sample: the bias is gone
    assert abs(out["before"][held]["teff"]["bias"]) > 3 * abs(out["after"][held]["teff"]["bias"])


def test_duplicate_reference_ids_follow_the_crossmatch_rules(tmp_path):
    labeled, ref = labeled_tables(300)
    dup = ref.rows(np.r_[np.arange(len(ref)), 0])     # row 0 again, far off, higher snr
    dup.columns["teff"] = dup["teff"].copy()
    dup.columns["snr"] = dup["snr"].copy()
    dup["teff"][-1] += 5000
    dup["snr"][-1] = 10.0                             # lower snr: --best snr drops it
    write_table(labeled, str(tmp_path / "labeled.fits"))
    write_table(dup, str(tmp_path / "dup.fits"))
    r = run("calibrate", tmp_path / "labeled.fits", "--reference", tmp_path / "dup.fits")
    err = r.stderr.decode()
    assert r.returncode == 1 and "more than one row" in err and "--best COL" in err
    assert "--all" not in err and err.count("\n") == 1
    r = run("calibrate", tmp_path / "labeled.fits", "--reference", tmp_path / "dup.fits",
            "--best", "snr", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["rows"] == 300 and out["before"]["all"]["teff"]["sigma_mad"] < 200


def test_nan_rows_are_skipped_and_counted(tmp_path):
    labeled, ref = labeled_tables(400)
    labeled.columns["teff"] = labeled["teff"].copy()
    labeled["teff"][[3, 9, 27]] = np.nan
    ref.columns["logg_err"] = ref["logg_err"].copy()
    ref["logg_err"][:5] = np.nan
    write_table(labeled, str(tmp_path / "labeled.fits"))
    write_table(ref, str(tmp_path / "ref.fits"))
    r = run("calibrate", tmp_path / "labeled.fits", "--reference", tmp_path / "ref.fits",
            "--report", "-")
    assert r.returncode == 0, r.stderr.decode()
    assert "rows skipped for NaN values: teff 3, logg 5" in r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["before"]["all"]["teff"]["n"] == 397 and out["skipped"] == {"teff": 3, "logg": 5}


def test_stdin(tmp_path):
    labeled, ref = write_pair(tmp_path)
    r = run("calibrate", "-", "--reference", ref, "-q", "--report", "-",
            stdin=labeled.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["rows"] == 2000 and r.stderr == b""


def _change(table: Table, column: str, value) -> Table:
    table.columns[column] = np.full(len(table), value, dtype=table[column].dtype)
    return table


@pytest.mark.parametrize("case, args, message", [
    ("no overlap", [], "no 'source_id' in common with"),
    ("no label", [], "ref.fits: no column 'logg' (the reference logg)"),
    ("no error", [], "ref.fits: no column 'teff_err' or 'teff_error' (the error of the "
                     "reference teff)"),
    ("all NaN", [], "ref.fits: column 'logg_err' is NaN (or null) in every row compared"),
    ("all NaN prediction", [], "labeled.fits: column 'teff_error' is NaN"),
    ("no prediction", ["--labels", "teff,feh"], "labeled.fits: no column 'feh' (the predicted "
                                                "feh)"),
    ("o without fit", ["-o", "MODEL"], "-o writes a calibrated model: give --fit"),
    ("bad where", ["--where", "tef < 1"], "has no column 'tef' (did you mean 'teff'?)"),
    ("checksum", [], "made with model weights 0123456789abcdef (XPTMSUM), but"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, args, message):
    labeled, ref = labeled_tables(200)
    if case == "no overlap":
        ref.columns["source_id"] = ref["source_id"] + 10 ** 6
    elif case == "no label":
        ref.remove_columns(["logg"])
    elif case == "no error":
        ref.remove_columns(["teff_err"])
    elif case == "all NaN":
        _change(ref, "logg_err", np.nan)
    elif case == "all NaN prediction":
        _change(labeled, "teff_error", np.nan)
    elif case == "checksum":
        labeled.meta.update({"XPTMODEL": "msa-apogee", "XPTMSUM": "0123456789abcdef"})
    write_table(labeled, str(tmp_path / "labeled.fits"))
    write_table(ref, str(tmp_path / "ref.fits"))
    args = [str(tmp_path / "model") if a == "MODEL" else a for a in args]
    r = run("calibrate", tmp_path / "labeled.fits", "--reference", tmp_path / "ref.fits",
            "--report", tmp_path / "r.json", "--plots", tmp_path / "plots", *args)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert message in err and err.count("\n") == 1, err
    assert err.startswith("xptools calibrate: error: ")
    assert sorted(os.listdir(tmp_path)) == ["labeled.fits", "ref.fits"]


def test_existing_outputs_are_refused_before_any_work(tmp_path):
    labeled, ref = write_pair(tmp_path)
    (tmp_path / "r.json").write_text("{}")
    r = run("calibrate", labeled, "--reference", ref, "--report", tmp_path / "r.json")
    assert r.returncode == 1 and b"exists; use --overwrite" in r.stderr
    assert (tmp_path / "r.json").read_text() == "{}"


# -- with the shipped model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_labels(tmp_path_factory):
    """The 200 example stars labelled by the shipped model (as infer gives them)."""
    out = tmp_path_factory.mktemp("shipped") / "labeled.fits"
    r = run("infer", EXAMPLE, "-o", out, env=dict(os.environ, XPTOOLS_THREADS="1"))
    assert r.returncode == 0, r.stderr.decode()
    return out


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_calibrated_model_directory_and_infer_with_it(shipped_labels, tmp_path):
    model = tmp_path / "calibrated"
    r = run("calibrate", shipped_labels, "--reference-columns", "apogee_", "--fit", "scale",
            "-o", model, "--seed", "3")
    assert r.returncode == 0, r.stderr.decode()
    assert _sha(model / "weights.safetensors") == _sha(os.path.join(SHIPPED,
                                                                    "weights.safetensors"))
    assert {"config.json", "card.md", "weights.safetensors", "calibration.json",
            "validation.json", "calibrate_pit.png", "calibrate_reliability.png",
            "calibrate_kiel.png", "calibrate_residuals.png"} <= set(os.listdir(model))
    config = json.loads((model / "config.json").read_text())
    cal = config["calibration"]
    assert cal["fit"] == "scale" and set(cal["labels"]) == {"teff", "logg", "fe_h", "alpha_m"}
    assert cal["reference"]["file"] == "labeled.fits" and cal["made_by"]["seed"] == 3
    card = (model / "card.md").read_text()
    assert card.count("## Calibration") == 1 and "## Known limits" in card

    out = tmp_path / "relabeled.fits"
    r = run("infer", EXAMPLE, "--model", model, "-o", out,
            env=dict(os.environ, XPTOOLS_THREADS="1"))
    assert r.returncode == 0, r.stderr.decode()
    before, after = read_table(str(shipped_labels)), read_table(str(out))
    from xptools import models

    new = models.load(str(model))
    assert after.meta["XPTCALIB"] == new.calibration.id and after.meta["XPTCFIT"] == "scale"
    assert after.meta["XPTMSUM"] == before.meta["XPTMSUM"]
    shipped = models.load(SHIPPED).calibration
    for label in ("teff", "logg", "fe_h", "alpha_m"):
        s_new = new.calibration.labels[label].s
        s_old = shipped.labels[label].s if shipped and label in shipped.labels else 1.0
        np.testing.assert_allclose(after[label + "_error"], before[label + "_error"]
                                   * s_new / s_old, rtol=2e-5)
        np.testing.assert_allclose(after[label], before[label], rtol=1e-6)
        half = (after[label + "_q84"] - after[label + "_q16"]) / 2
        np.testing.assert_allclose(half, after[label + "_error"], rtol=1e-4)
    assert "calibrated" in after.info["teff_error"].description

    # calibrating the calibrated output starts from the raw values: the same s again
    r = run("calibrate", out, "--reference-columns", "apogee_", "--fit", "scale", "--seed",
            "3", "--model", model, "--report", tmp_path / "again.json")
    assert r.returncode == 0, r.stderr.decode()
    again = json.loads((tmp_path / "again.json").read_text())["fit"]["labels"]
    for label, c in cal["labels"].items():
        assert again[label]["s"] == pytest.approx(c["s"], rel=1e-4)

    # a prediction outside the calibrated range gets infer_flag 512
    for label in cal["labels"]:
        cal["labels"][label]["range"] = [-1e9, 1e9]
    cal["labels"]["teff"]["range"] = [4500.0, 5000.0]
    (model / "config.json").write_text(json.dumps(config))
    out2 = tmp_path / "flagged.fits"
    r = run("infer", EXAMPLE, "--model", model, "-o", out2,
            env=dict(os.environ, XPTOOLS_THREADS="1"))
    assert r.returncode == 0, r.stderr.decode()
    flagged = read_table(str(out2))
    raw_teff = before["teff"] / 1.0  # scale-only: values are the raw ones
    outside = (raw_teff < 4500) | (raw_teff > 5000)
    assert outside.any() and (~outside).any()
    assert np.array_equal((flagged["infer_flag"] & 512) != 0, outside)


def test_a_bad_calibration_in_a_model_directory_is_one_line(tmp_path):
    import shutil

    model = tmp_path / "broken"
    shutil.copytree(SHIPPED, model)
    config = json.loads((model / "config.json").read_text())
    config["calibration"] = {"fit": "scale", "labels": {"teff": {"s": -2.0}}}
    (model / "config.json").write_text(json.dumps(config))
    r = run("infer", EXAMPLE, "--model", model, "-o", tmp_path / "x.fits")
    assert r.returncode == 1
    assert b"bad calibration in config.json (ValueError: teff: s = -2.0 must be positive)" \
        in r.stderr


def test_save_refuses_weights_that_differ(tmp_path):
    from xptools import models

    model = models.load(SHIPPED)
    with pytest.raises(UserError, match="the weights written differ"):
        models.save(model, str(tmp_path / "m"), "card", checksum="0" * 64)
    assert not os.path.exists(tmp_path / "m") and os.listdir(tmp_path) == []


def test_the_shipped_model_is_calibrated_and_says_so():
    from xptools import models

    model = models.load(SHIPPED)
    assert model.calibration is not None and model.calibration.fit == "scale"
    card = open(os.path.join(SHIPPED, "card.md")).read()
    assert "## Calibration" in card and "recipes/work/apogee_valid.fits" in card
    for label, c in model.calibration.labels.items():
        assert 0.8 < c.s < 1.3 and c.a == 1 and c.b == 0, label
