"""xptools crossmatch: id joins (hash join, duplicates), sky matches (KD-tree, poles, RA wrap,
proper motions) against astropy, bad input, and the APOGEE x Gaia XP join on real data."""

import os

import numpy as np
import pytest

from conftest import run
from xptools.crossmatch.sky import propagated, unit_vectors
from xptools.io import Table, read_table, write_table

ARCSEC = 1 / 3600


def table(**columns):
    t = Table()
    for name, values in columns.items():
        if isinstance(values, tuple):  # (data, unit)
            t.add_column(name, np.asarray(values[0]), unit=values[1])
        else:
            t.add_column(name, np.asarray(values))
    return t


def write(t, path):
    write_table(t, str(path), overwrite=True)
    return path


def crossmatch(tmp_path, left, right, *options, out="out.fits"):
    """Run the command on two tables; returns (output table or None, stderr text)."""
    lp = write(left, tmp_path / "left.fits") if isinstance(left, Table) else left
    rp = write(right, tmp_path / "right.fits") if isinstance(right, Table) else right
    out = tmp_path / out
    if out.exists():
        out.unlink()
    r = run("crossmatch", lp, rp, "-o", out, *options)
    err = r.stderr.decode()
    if r.returncode != 0:
        assert not out.exists()
        assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]
        return None, err
    return read_table(str(out)), err


def fails(tmp_path, left, right, *options, fragments=()):
    t, err = crossmatch(tmp_path, left, right, *options)
    assert t is None, "expected a failure"
    assert err.startswith("xptools crossmatch: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def scattered(n, rms_arcsec, seed, ra=None, dec=None):
    """Random positions on the sphere (or the given ones) and copies moved in a random
    direction by a 2-D Gaussian offset of total RMS ``rms_arcsec``."""
    rng = np.random.default_rng(seed)
    if ra is None:
        ra = rng.uniform(0, 360, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    u = unit_vectors(ra, dec)
    a, d = np.radians(ra), np.radians(dec)
    p = np.column_stack([-np.sin(a), np.cos(a), np.zeros(n)])
    q = np.column_stack([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    sigma = np.radians(rms_arcsec * ARCSEC) / np.sqrt(2)
    moved = u + sigma * (rng.normal(size=(n, 1)) * p + rng.normal(size=(n, 1)) * q)
    moved /= np.linalg.norm(moved, axis=1)[:, None]
    ra2 = np.degrees(np.arctan2(moved[:, 1], moved[:, 0])) % 360
    dec2 = np.degrees(np.arcsin(moved[:, 2]))
    return ra, dec, ra2, dec2


def astropy_separation(ra1, dec1, ra2, dec2):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra1 * u.deg, dec1 * u.deg).separation(
        SkyCoord(ra2 * u.deg, dec2 * u.deg)).to(u.arcsec).value


# --- id join -----------------------------------------------------------------------------

def labels():
    """A right table with a duplicated key (id 20: three rows) and the usual column types."""
    return table(source_id=np.array([10, 20, 30, 20, 20, 50], np.int64),
                 apogee_id=np.array(["a10", "a20x", "a30", "a20y", "a20z", "a50"]),
                 teff=(np.array([5000, 4000, 6000, 4100, 4200, 3000], np.float32), "K"),
                 snr=np.array([50, 80, 60, 120, np.nan, 90], np.float32),
                 nvisits=np.array([1, 2, 3, 4, 5, 6], np.int16))


def xp_table():
    return table(source_id=np.array([30, 20, 40, 10], np.int64),
                 phot_g_mean_mag=(np.array([12.0, 13.0, 14.0, 15.0], np.float32), "mag"),
                 flux=np.arange(8, dtype=np.float32).reshape(4, 2))


def test_id_join_refuses_duplicates_by_default(tmp_path):
    fails(tmp_path, xp_table(), labels(), "--on", "source_id",
          fragments=["right.fits", "1 source_id values occur on more than one row",
                     "20 (3 rows)", "--best COL", "--all"])


def test_id_join_best_keeps_highest(tmp_path):
    t, _ = crossmatch(tmp_path, xp_table(), labels(), "--on", "source_id", "--best", "snr")
    # inner join, left order; id 40 has no label; id 20 keeps snr 120 (NaN counts as lowest)
    assert list(t["source_id"]) == [30, 20, 10]
    assert list(t["apogee_id"]) == ["a30", "a20y", "a10"]
    assert list(t["teff"]) == [6000, 4100, 5000]
    assert list(t["match_count"]) == [1, 3, 1]
    assert list(t["match_flag"]) == [0, 0, 0]
    assert list(t["phot_g_mean_mag"]) == [12.0, 13.0, 15.0]
    np.testing.assert_array_equal(t["flux"], xp_table()["flux"][[0, 1, 3]])
    assert t.info["teff"].unit == "K" and t.info["phot_g_mean_mag"].unit == "mag"
    assert "source_id_r" not in t  # the right key is the left key: not repeated
    assert t.meta["XMKEEP"] == "best snr" and t.meta["XMON"] == "source_id=source_id"
    assert t.meta["XPTCMD"].startswith("xptools crossmatch")


def test_id_join_best_ties_go_to_the_first_row(tmp_path):
    right = labels()
    right.columns["snr"] = np.array([50, 80, 60, 80, 80, 90], np.float32)
    t, _ = crossmatch(tmp_path, xp_table(), right, "--on", "source_id", "--best", "snr")
    assert list(t["apogee_id"]) == ["a30", "a20x", "a10"]


def test_id_join_all_keeps_every_pair(tmp_path):
    t, _ = crossmatch(tmp_path, xp_table(), labels(), "--on", "source_id", "--all")
    assert list(t["source_id"]) == [30, 20, 20, 20, 10]
    assert list(t["apogee_id"]) == ["a30", "a20x", "a20y", "a20z", "a10"]  # right file order
    assert list(t["match_count"]) == [1, 3, 3, 3, 1]
    assert list(t["nvisits"]) == [3, 2, 4, 5, 1]


def test_id_join_left_keeps_unmatched_rows_with_blanks(tmp_path):
    for out in ("out.fits", "out.ecsv", "out.h5"):
        t, _ = crossmatch(tmp_path, xp_table(), labels(), "--on", "source_id", "--best",
                          "snr", "--how", "left", out=out)
        assert list(t["source_id"]) == [30, 20, 40, 10]
        assert list(t["match_count"]) == [1, 3, 0, 1]
        assert np.isnan(t["teff"][2]) and np.isnan(t["snr"][2])
        assert t["apogee_id"][2] == ""
        null = t.info["nvisits"].null
        assert null is not None and t["nvisits"][2] == null
        assert list(t["nvisits"][[0, 1, 3]]) == [3, 4, 1]


def test_id_join_on_differently_named_keys(tmp_path):
    right = labels()
    right.columns = {("gaia_id" if k == "source_id" else k): v for k, v in right.columns.items()}
    right.info = {("gaia_id" if k == "source_id" else k): v for k, v in right.info.items()}
    t, _ = crossmatch(tmp_path, xp_table(), right, "--on", "source_id=gaia_id", "--all",
                      "--columns", "apogee_id,gaia_id")
    assert t.colnames == ["source_id", "phot_g_mean_mag", "flux", "apogee_id", "gaia_id",
                          "match_count", "match_flag"]
    np.testing.assert_array_equal(t["gaia_id"], t["source_id"])


def test_integer_keys_of_different_widths_and_text_keys(tmp_path):
    right = labels()
    right.columns["source_id"] = right["source_id"].astype(np.int32)
    t, _ = crossmatch(tmp_path, xp_table(), right, "--on", "source_id", "--best", "snr")
    assert list(t["apogee_id"]) == ["a30", "a20y", "a10"]
    left = table(name=np.array(["a30", " a20y ", "zz"]), g=np.array([1.0, 2.0, 3.0]))
    t, _ = crossmatch(tmp_path, left, labels(), "--on", "name=apogee_id", "--columns", "teff")
    assert list(t["name"]) == ["a30", " a20y "] and list(t["teff"]) == [6000, 4100]


def test_name_clashes_get_the_suffix(tmp_path):
    left = xp_table()
    left.add_column("teff", np.zeros(4, np.float32))
    t, _ = crossmatch(tmp_path, left, labels(), "--on", "source_id", "--all", "--columns",
                      "teff,snr", "--suffix", "_apogee")
    assert t.colnames == ["source_id", "phot_g_mean_mag", "flux", "teff", "teff_apogee", "snr",
                          "match_count", "match_flag"]
    left.add_column("teff_apogee", np.zeros(4))
    fails(tmp_path, left, labels(), "--on", "source_id", "--all", "--suffix", "_apogee",
          fragments=["'teff' and 'teff_apogee' both exist", "--suffix"])


def test_pipeline_of_two_crossmatches(tmp_path):
    """The second match's own columns get the suffix; tables flow through stdin/stdout."""
    lp = write(xp_table(), tmp_path / "left.fits")
    rp = write(labels(), tmp_path / "labels.fits")
    photometry = table(source_id=np.array([10, 30], np.int64), w1=np.array([9.5, 8.5]))
    pp = write(photometry, tmp_path / "wise.csv")
    first = run("crossmatch", lp, rp, "--on", "source_id", "--best", "snr", "--how", "left")
    assert first.returncode == 0, first.stderr.decode()
    out = tmp_path / "both.ecsv"
    second = run("crossmatch", "-", pp, "--on", "source_id", "--suffix", "_wise", "-o", out,
                 stdin=first.stdout)
    assert second.returncode == 0, second.stderr.decode()
    t = read_table(str(out))
    assert list(t["source_id"]) == [30, 10]
    assert list(t["w1"]) == [8.5, 9.5] and list(t["teff"]) == [6000, 5000]
    assert list(t["match_count_wise"]) == [1, 1] and list(t["match_count"]) == [1, 1]
    assert len(t.history) == 2  # one line per step, long lines intact through FITS
    assert all(": xptools crossmatch " in line for line in t.history)


def test_missing_key_column(tmp_path):
    fails(tmp_path, xp_table(), labels(), "--on", "gaia_id", "--all",
          fragments=["left.fits: no column 'gaia_id' (--on)", "columns: source_id"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id=gaia_id", "--all",
          fragments=["right.fits: no column 'gaia_id' (--on)"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id", "--best", "nope",
          fragments=["right.fits: no column 'nope' (--best)"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id", "--all", "--columns", "x,teff",
          fragments=["right.fits: no column 'x' (--columns)"])


def test_key_types_that_differ(tmp_path):
    right = labels()
    right.columns["source_id"] = right["source_id"].astype(str)
    fails(tmp_path, xp_table(), right, "--on", "source_id", "--all",
          fragments=["key types differ", "left.fits column 'source_id' is integer (int64)",
                     "right.fits column 'source_id' is text"])
    right.columns["source_id"] = labels()["source_id"].astype(np.float64)
    fails(tmp_path, xp_table(), right, "--on", "source_id", "--all",
          fragments=["is float (float64)", "2^53"])


def test_missing_keys_are_flagged_not_dropped(tmp_path):
    left = xp_table()
    left.columns["source_id"] = np.array([30, -1, 40, 10], np.int64)
    left.info["source_id"].null = -1
    right = labels()
    right.columns["snr"] = right["snr"].astype(np.float64)
    right.columns["source_id"] = np.array([10, 20, 30, 20, 20, 999], np.int64)
    right.info["source_id"].null = 999
    t, err = crossmatch(tmp_path, left, right, "--on", "source_id", "--best", "snr", "--how",
                        "left")
    assert list(t["match_flag"]) == [0, 1, 0, 0] and list(t["match_count"]) == [1, 0, 0, 1]
    assert "left.fits: 1 rows have no 'source_id' (first at row 1); unmatched, kept" in err
    assert "right.fits: 1 rows have no 'source_id' (first at row 5); they cannot match" in err
    t, err = crossmatch(tmp_path, left, right, "--on", "source_id", "--best", "snr")
    assert list(t["source_id"]) == [30, 10]
    assert "left out of the inner join (--how left keeps them)" in err


def test_empty_right_table(tmp_path):
    empty = labels().rows(slice(0, 0))
    fails(tmp_path, xp_table(), empty, "--on", "source_id",
          fragments=["right.fits: no rows, so an inner join would be empty", "--how left"])
    t, err = crossmatch(tmp_path, xp_table(), empty, "--on", "source_id", "--how", "left")
    assert list(t["match_count"]) == [0, 0, 0, 0] and np.isnan(t["teff"]).all()
    assert "no rows; every row is unmatched" in err


def test_option_combinations(tmp_path):
    fails(tmp_path, xp_table(), labels(), fragments=["give either --on", "--sky"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id", "--sky", "1",
          fragments=["give either --on"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id", "--nearest",
          fragments=["--nearest is for sky matches"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id", "--all", "--best", "snr",
          fragments=["at most one of --best COL, --nearest and --all"])
    fails(tmp_path, xp_table(), labels(), "--sky", "-1", fragments=["radius must be"])
    fails(tmp_path, xp_table(), labels(), "--sky", "1", "--pm",
          fragments=["--pm needs --epoch-right"])
    fails(tmp_path, xp_table(), labels(), "--on", "source_id", "--how", "outer",
          fragments=["--how 'outer'"])


# --- sky match ---------------------------------------------------------------------------

def sky_tables(ra, dec, ra2, dec2, **right_extra):
    left = table(source_id=np.arange(len(ra), dtype=np.int64) + 10**9, ra=(ra2, "deg"),
                 dec=(dec2, "deg"))
    right = table(id=np.arange(len(ra), dtype=np.int64), ra=(ra, "deg"), dec=(dec, "deg"),
                  **right_extra)
    return left, right


def test_sky_match_recovers_and_agrees_with_astropy(tmp_path):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    n = 20_000
    ra, dec, ra2, dec2 = scattered(n, 0.3, seed=1)
    left, right = sky_tables(ra, dec, ra2, dec2)
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--how", "left")
    assert len(t) == n
    truth = t["source_id"] - 10**9
    matched = t["match_count"] > 0
    assert np.mean(matched & (t["id"] == truth)) >= 0.999
    # no match beyond the radius, by astropy's own separations
    sep = astropy_separation(t["ra"][matched], t["dec"][matched], t["ra_r"][matched],
                             t["dec_r"][matched])
    assert sep.max() <= 1.0
    np.testing.assert_allclose(t["match_separation"][matched], sep, rtol=0, atol=1e-9)
    # the same nearest neighbours as match_to_catalog_sky
    idx, sep2d, _ = SkyCoord(ra2 * u.deg, dec2 * u.deg).match_to_catalog_sky(
        SkyCoord(ra * u.deg, dec * u.deg))
    theirs = sep2d.to(u.arcsec).value <= 1.0
    np.testing.assert_array_equal(matched, theirs)
    np.testing.assert_array_equal(t["id"][matched], idx[theirs])
    assert t.info["match_separation"].unit == "arcsec" and t.meta["XMRADIUS"] == 1.0


def test_sky_match_across_ra_zero_and_at_the_poles(tmp_path):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    rng = np.random.default_rng(2)
    n = 3000  # within 0.01 deg of RA = 0/360 (any Dec), and 0.1 deg of each pole (any RA)
    ra = np.concatenate([rng.uniform(-0.01, 0.01, n) % 360, rng.uniform(0, 360, 2 * n)])
    polar = 0.1 * np.sqrt(rng.uniform(0, 1, (2, n)))  # evenly over the caps' area
    dec = np.concatenate([rng.uniform(-80, 80, n), 90 - polar[0], -90 + polar[1]])
    _, _, ra2, dec2 = scattered(3 * n, 0.3, seed=3, ra=ra, dec=dec)
    left, right = sky_tables(ra, dec, ra2, dec2)
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--how", "left", "--all")
    idx, sep2d, _ = SkyCoord(ra2 * u.deg, dec2 * u.deg).match_to_catalog_sky(
        SkyCoord(ra * u.deg, dec * u.deg))
    nearest = t.rows(np.r_[True, t["source_id"][1:] != t["source_id"][:-1]])  # --all: sorted
    theirs = sep2d.to(u.arcsec).value <= 1.0
    np.testing.assert_array_equal(nearest["match_count"] > 0, theirs)
    np.testing.assert_array_equal(nearest["id"][theirs], idx[theirs])
    matched = t["match_count"] > 0
    sep = astropy_separation(t["ra"][matched], t["dec"][matched], t["ra_r"][matched],
                             t["dec_r"][matched])
    assert sep.max() <= 1.0
    np.testing.assert_allclose(t["match_separation"][matched], sep, rtol=0, atol=1e-9)
    assert np.mean(nearest["id"] == nearest["source_id"] - 10**9) >= 0.99
    # explicit pairs: 0.5" apart across RA = 0, and on opposite sides of the north pole
    left = table(ra=([0.00005, 10.0], "deg"), dec=([0.0, 90 - 0.25 * ARCSEC], "deg"))
    right = table(ra=([359.99991, 190.0], "deg"), dec=([0.0, 90 - 0.25 * ARCSEC], "deg"))
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1")
    np.testing.assert_allclose(t["match_separation"], [0.504, 0.5], rtol=1e-6)


def test_sky_match_several_candidates(tmp_path):
    left = table(ra=([10.0, 50.0], "deg"), dec=([20.0, -30.0], "deg"))
    offsets = np.array([0.9, 0.2, 0.5, 1.5]) * ARCSEC  # arcsec north of the first source
    right = table(ra=([10.0] * 4, "deg"), dec=(20.0 + offsets, "deg"),
                  mag=np.array([12.0, 15.0, 18.0, 9.0]))
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1")
    assert list(t["mag"]) == [15.0] and list(t["match_count"]) == [3]
    np.testing.assert_allclose(t["match_separation"], [0.2], rtol=1e-9)
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--nearest", "--how", "left")
    assert list(t["mag"][:1]) == [15.0] and np.isnan(t["mag"][1])
    assert list(t["match_count"]) == [3, 0] and np.isnan(t["match_separation"][1])
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--best", "mag")
    assert list(t["mag"]) == [18.0]
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--all")
    assert list(t["mag"]) == [15.0, 18.0, 12.0]  # nearest first
    np.testing.assert_allclose(t["match_separation"], [0.2, 0.5, 0.9], rtol=1e-9)
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1.6", "--all")
    assert list(t["mag"]) == [15.0, 18.0, 12.0, 9.0] and list(t["match_count"]) == [4] * 4


def test_sky_match_in_chunks_equals_one_chunk(tmp_path):
    ra, dec, ra2, dec2 = scattered(5000, 1.0, seed=4)
    left, right = sky_tables(ra, dec, ra2, dec2)
    whole, _ = crossmatch(tmp_path, left, right, "--sky", "2", "--how", "left", "--all")
    pieces, _ = crossmatch(tmp_path, left, right, "--sky", "2", "--how", "left", "--all",
                           "--chunk-rows", "333", out="pieces.fits")
    assert whole.colnames == pieces.colnames
    for name in whole.colnames:
        np.testing.assert_array_equal(whole[name], pieces[name])


def test_bad_positions_are_flagged(tmp_path):
    left = table(source_id=np.arange(6), ra=([10.0, np.nan, 370.0, 10.0, -5.0, 20.0], "deg"),
                 dec=([20.0, 20.0, 20.0, 95.0, 20.0, np.nan], "deg"))
    right = table(ra=([10.0, np.nan, 10.0], "deg"), dec=([20.0, 0.0, -91.0], "deg"),
                  name=np.array(["ok", "nan", "south of the pole"]))
    t, err = crossmatch(tmp_path, left, right, "--sky", "1", "--how", "left")
    assert list(t["source_id"]) == list(range(6))
    assert list(t["match_flag"]) == [0, 2, 2, 2, 2, 2]
    assert list(t["match_count"]) == [1, 0, 0, 0, 0, 0] and list(t["name"][:2]) == ["ok", ""]
    assert ("left.fits: 5 rows have a missing or out-of-range position (first at row 1); "
            "unmatched, kept unmatched, match_flag 2") in err
    assert "right.fits: 2 rows have a missing or out-of-range position (first at row 1" in err
    none_valid = table(ra=([np.nan], "deg"), dec=([0.0], "deg"))
    fails(tmp_path, left, none_valid, "--sky", "1",
          fragments=["no row with a valid position, so an inner join would be empty"])


def test_position_columns_and_units(tmp_path):
    left = table(RA_ICRS=([150.0], "deg"), DE_ICRS=([2.0], "deg"))
    right = table(raj2000=(np.radians([150.0 + 0.5 * ARCSEC]), "rad"),
                  dej2000=(np.radians([2.0]), "rad"))
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--ra", "RA_ICRS=raj2000", "--dec",
                      "DE_ICRS=dej2000")
    np.testing.assert_allclose(t["match_separation"], [0.5 * np.cos(np.radians(2.0))],
                               rtol=1e-6)
    right.info["raj2000"].unit = "mag"
    fails(tmp_path, left, right, "--sky", "1", "--ra", "RA_ICRS=raj2000", "--dec",
          "DE_ICRS=dej2000", fragments=["'raj2000' has unit 'mag'", "deg"])
    fails(tmp_path, left, right, "--sky", "1",
          fragments=["left.fits: no column 'ra' (--ra)"])


def test_proper_motion_propagation_equals_astropy():
    import warnings

    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    # Barnard's star, a fast star at RA ~ 0, and two within 0.01 deg of the poles
    ra = np.array([269.452, 359.999, 120.0, 300.0])
    dec = np.array([4.694, 30.0, 89.995, -89.992])
    pmra = np.array([-801.6, 5000.0, 3000.0, -2500.0])
    pmdec = np.array([10362.4, -4000.0, 2000.0, 1500.0])
    ours = propagated(ra, dec, pmra, pmdec, 2000.0 - 2016.0)
    start = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, pm_ra_cosdec=pmra * u.mas / u.yr,
                     pm_dec=pmdec * u.mas / u.yr, obstime=Time(2016.0, format="jyear"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ERFA: "distance overridden" (no parallax given)
        theirs = start.apply_space_motion(new_obstime=Time(2000.0, format="jyear"))
    ours_ra = np.degrees(np.arctan2(ours[:, 1], ours[:, 0])) % 360
    ours_dec = np.degrees(np.arcsin(ours[:, 2]))
    moved = astropy_separation(ra, dec, theirs.ra.deg, theirs.dec.deg)
    assert moved.min() > 10  # the test moves the stars by tens of arcsec
    assert astropy_separation(ours_ra, ours_dec, theirs.ra.deg, theirs.dec.deg).max() < 1e-6


def test_sky_match_with_proper_motions(tmp_path):
    # Barnard's star at Gaia's epoch, and its 2MASS-like position at 2000.0
    ra, dec = np.array([269.44850252, 100.0, 200.0]), np.array([4.73942005, 10.0, 20.0])
    pmra, pmdec = np.array([-801.551, np.nan, 0.0]), np.array([10362.394, np.nan, 0.0])
    then = propagated(ra, dec, np.nan_to_num(pmra), np.nan_to_num(pmdec), -16.0)
    left = table(source_id=np.arange(3), ra=(ra, "deg"), dec=(dec, "deg"),
                 pmra=(pmra, "mas.yr**-1"), pmdec=(pmdec, "mas.yr**-1"))
    right = table(ra=(np.degrees(np.arctan2(then[:, 1], then[:, 0])) % 360, "deg"),
                  dec=(np.degrees(np.arcsin(then[:, 2])), "deg"))
    t, _ = crossmatch(tmp_path, left, right, "--sky", "1", "--how", "left")
    assert list(t["match_count"]) == [0, 1, 1]  # Barnard's star moved 166" in 16 years
    t, err = crossmatch(tmp_path, left, right, "--sky", "1", "--how", "left", "--pm",
                        "--epoch-right", "2000.0")
    assert list(t["match_count"]) == [1, 1, 1] and list(t["match_flag"]) == [0, 4, 0]
    assert t["match_separation"][0] < 1e-6
    assert t.meta["XMEPOCHL"] == 2016.0 and t.meta["XMEPOCHR"] == 2000.0
    assert ("left.fits: 1 rows have no proper motion (first at row 1); matched at their "
            "epoch 2016 position, match_flag 4") in err


# --- real data: APOGEE DR17 labels x Gaia DR3 XP spectra ------------------------------------

STARS = {  # source_id: APOGEE rows with it (from apogee_labels.fits)
    4117426580840115072: 4, 4657652721272866048: 3, 46519413555554816: 2}


@pytest.fixture(scope="module")
def apogee(tmp_path_factory):
    from conftest import SHARED

    folder = os.path.join(SHARED, "apogee_xp")
    if not os.path.isdir(folder):
        pytest.skip(f"shared data not found at {SHARED}")
    xp = os.path.join(folder, "xp_sampled.fits")
    labels_path = os.path.join(folder, "apogee_labels.fits")
    return xp, labels_path, read_table(labels_path)


def rows_of(t, source_id):
    return np.flatnonzero(t["source_id"] == source_id)


def test_apogee_join_refused_without_a_rule(tmp_path, apogee):
    xp, labels_path, _ = apogee
    fails(tmp_path, xp, labels_path, "--on", "source_id",
          fragments=["apogee_labels.fits: 280 source_id values occur on more than one row",
                     "4657652721272866048 (3 rows)"])


def test_apogee_join_best_snr(tmp_path, apogee):
    xp, labels_path, labels_table = apogee
    t, _ = crossmatch(tmp_path, xp, labels_path, "--on", "source_id", "--best", "snr")
    spectra = read_table(xp, columns=["source_id", "phot_g_mean_mag"])
    assert len(t) == 35_886
    np.testing.assert_array_equal(t["source_id"], spectra["source_id"])  # left order kept
    np.testing.assert_array_equal(t["phot_g_mean_mag"], spectra["phot_g_mean_mag"])
    assert t["flux"].shape == (35_886, 343) and t.meta["WAVEMIN"] == 336.0
    assert np.bincount(t["match_count"]).tolist() == [0, 35_606, 236, 41, 3]
    for source_id, count in STARS.items():
        (row,) = rows_of(t, source_id)
        assert t["match_count"][row] == count
        first = rows_of(labels_table, source_id)[0]  # the copies are identical in this file
        for name in ("apogee_id", "teff", "logg", "fe_h", "snr", "ks_m"):
            np.testing.assert_array_equal(t[name][row], labels_table[name][first])
    # a star with one APOGEE entry: its labels, exactly
    (row,) = rows_of(t, t["source_id"][0])
    (label,) = rows_of(labels_table, t["source_id"][0])
    for name in ("apogee_id", "teff", "teff_err", "alpha_m", "j_m"):
        np.testing.assert_array_equal(t[name][row], labels_table[name][label])


def test_apogee_join_best_snr_picks_the_highest(tmp_path, apogee):
    """The same join with the copies made different: --best snr must pick by snr."""
    xp, _, labels_table = apogee
    changed = labels_table.rows(slice(None))
    changed.columns = {n: c.copy() for n, c in changed.columns.items()}
    a, b, c, d = rows_of(changed, 4117426580840115072)
    changed["snr"][[a, b, c, d]] = [100.0, 300.0, np.nan, 200.0]
    changed["teff"][[a, b, c, d]] = [4001.0, 4002.0, 4003.0, 4004.0]
    first, second = rows_of(changed, 46519413555554816)
    changed["snr"][[first, second]] = [150.0, 149.0]
    changed["teff"][[first, second]] = [5001.0, 5002.0]
    t, _ = crossmatch(tmp_path, xp, changed, "--on", "source_id", "--best", "snr")
    assert t["teff"][rows_of(t, 4117426580840115072)].tolist() == [4002.0]
    assert t["teff"][rows_of(t, 46519413555554816)].tolist() == [5001.0]


def test_apogee_join_all(tmp_path, apogee):
    xp, labels_path, labels_table = apogee
    t, _ = crossmatch(tmp_path, xp, labels_path, "--on", "source_id", "--all", "--columns",
                      "apogee_id,teff,snr")
    assert len(t) == 36_213
    for source_id, count in STARS.items():
        rows = rows_of(t, source_id)
        assert len(rows) == count and np.all(np.diff(rows) == 1)  # together, left order
        assert set(t["match_count"][rows]) == {count}
        np.testing.assert_array_equal(t["teff"][rows],
                                      labels_table["teff"][rows_of(labels_table, source_id)])
    assert sorted(t["apogee_id"]) == sorted(labels_table["apogee_id"])
