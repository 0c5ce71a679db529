"""--engine lsdb (the 'scale' extra) on a local Dask cluster started here (127.0.0.1): the
same matches as the local engine, by sky position and by id, from tables and HATS catalogues.

The engine runs in this process: LSDB compiles its HEALPix code (numba) on first use, about
20 s, which a subprocess would pay on every call."""

import numpy as np
import pytest

pytest.importorskip("lsdb")
pytest.importorskip("distributed")
pytestmark = pytest.mark.filterwarnings("ignore:.*inplace:")  # pandas 3.1 about LSDB's code

from conftest import run  # noqa: E402
from test_crossmatch import crossmatch, labels, scattered, sky_tables, write, xp_table  # noqa: E402
from xptools.crossmatch import Match  # noqa: E402
from xptools.crossmatch.lsdb_engine import run_lsdb  # noqa: E402
from xptools.errors import UserError  # noqa: E402
from xptools.io import TableWriter, read_table  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                           protocol="tcp", host="127.0.0.1", dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


def on_lsdb(tmp_path, scheduler, left, right, match, name="lsdb.fits"):
    out = tmp_path / name
    warnings = []
    with TableWriter(str(out)) as writer:
        run_lsdb(str(left), str(right), writer, match, scheduler=scheduler, quiet=True,
                 warn=warnings.append)
    return read_table(str(out)), warnings


def sorted_rows(t, *keys):
    return t.rows(np.lexsort([t[k] for k in reversed(keys)]))


def assert_same(ours, local, *keys):
    assert ours.colnames == local.colnames
    ours, local = sorted_rows(ours, *keys), sorted_rows(local, *keys)
    for name in local.colnames:
        np.testing.assert_array_equal(ours[name], local[name], err_msg=name)


def test_sky_match_equals_the_local_engine(tmp_path, scheduler):
    ra, dec, ra2, dec2 = scattered(20_000, 0.5, seed=7)
    left, right = sky_tables(ra, dec, ra2, dec2, mag=np.linspace(10, 20, 20_000))
    lp, rp = write(left, tmp_path / "left.fits"), write(right, tmp_path / "right.fits")
    for options, match in ((("--how", "left"), Match(radius=1.0, how="left")),
                           (("--all",), Match(radius=2.0, rule="all")),
                           (("--best", "mag"), Match(radius=2.0, rule="best", best="mag"))):
        radius = ("--sky", str(match.radius))
        local, _ = crossmatch(tmp_path, lp, rp, *radius, *options)
        ours, _ = on_lsdb(tmp_path, scheduler, lp, rp, match, name=f"{match.rule}.fits")
        assert ours.meta["XMENGINE"] == "lsdb"
        assert_same(ours, local, "source_id", "match_separation")


def test_sky_match_from_a_hats_catalogue(tmp_path, scheduler):
    import lsdb
    import pandas as pd

    ra, dec, ra2, dec2 = scattered(5000, 0.3, seed=8)
    left, right = sky_tables(ra, dec, ra2, dec2)
    lp = write(left, tmp_path / "left.fits")
    frame = pd.DataFrame({n: right[n] for n in right.colnames})
    hats = tmp_path / "right_hats"
    lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", margin_threshold=10.0,
                        should_generate_moc=False).write_catalog(hats, progress_bar=False)
    ours, _ = on_lsdb(tmp_path, scheduler, lp, hats, Match(radius=1.0))
    local, _ = crossmatch(tmp_path, lp, write(right, tmp_path / "right.fits"), "--sky", "1")
    assert_same(ours, local, "source_id")
    with pytest.raises(UserError, match="needs a margin cache at least 30 arcsec wide"):
        on_lsdb(tmp_path, scheduler, lp, hats, Match(radius=30.0), name="wide.fits")


def test_id_join_equals_the_local_engine(tmp_path, scheduler):
    lp, rp = write(xp_table(), tmp_path / "left.fits"), write(labels(), tmp_path / "right.fits")
    for options, match in ((("--best", "snr", "--how", "left"),
                            Match(on=("source_id", "source_id"), rule="best", best="snr",
                                  how="left")),
                           (("--all",), Match(on=("source_id", "source_id"), rule="all"))):
        local, _ = crossmatch(tmp_path, lp, rp, "--on", "source_id", *options)
        ours, _ = on_lsdb(tmp_path, scheduler, lp, rp, match, name=f"{match.rule}.fits")
        assert_same(ours, local, "source_id", "nvisits")
    with pytest.raises(UserError, match="1 source_id values occur on more than one row"):
        on_lsdb(tmp_path, scheduler, lp, rp, Match(on=("source_id", "source_id")),
                name="refused.fits")


def test_bad_positions_are_flagged(tmp_path, scheduler):
    left = sky_tables(*scattered(50, 0.3, seed=9))[0]
    left.columns["dec"][[3, 7]] = [np.nan, 91.0]
    right = sky_tables(*scattered(50, 0.3, seed=9))[1]
    lp, rp = write(left, tmp_path / "left.fits"), write(right, tmp_path / "right.fits")
    ours, warnings = on_lsdb(tmp_path, scheduler, lp, rp, Match(radius=1.0, how="left"))
    assert len(ours) == 50
    bad = np.isin(ours["source_id"], left["source_id"][[3, 7]])
    assert list(ours["match_flag"][bad]) == [2, 2] and list(ours["match_count"][bad]) == [0, 0]
    assert np.all(ours["match_count"][~bad] == 1)
    assert any("2 rows have a missing or out-of-range position" in w for w in warnings)


def test_command_line_refusals(tmp_path):
    lp, rp = write(xp_table(), tmp_path / "left.fits"), write(labels(), tmp_path / "right.fits")
    r = run("crossmatch", lp, rp, "--sky", "1", "--pm", "--epoch-right", "2000", "--engine",
            "lsdb", "-o", tmp_path / "out.fits")
    assert r.returncode == 2 and "--pm with --engine lsdb: not implemented yet" in \
        r.stderr.decode()
    r = run("crossmatch", lp, rp, "--on", "source_id", "--all", "--scheduler", "tcp://x:1",
            "-o", tmp_path / "out.fits")
    assert r.returncode == 1 and "--scheduler is for --engine lsdb" in r.stderr.decode()
