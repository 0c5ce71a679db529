import os
import pty
import subprocess
import sys

import numpy as np
import pytest

from conftest import run
from xptools.errors import UserError
from xptools.io import FORMATS, Table, TableWriter, open_table, read_table, sniff, write_table

EXT = {"fits": "fits", "hdf5": "h5", "parquet": "parquet", "csv": "csv", "ecsv": "ecsv",
       "votable": "vot"}


def sample_table(n=4):
    t = Table(meta={"WAVEMIN": 336.0, "SURVEY": "test", "NSTARS": n},
              history=["2026-01-01T00:00:00Z first step"])
    t.add_column("source_id", np.arange(n, dtype=np.int64) * 10**15, description="Gaia id")
    t.add_column("g", np.array([10.5, np.nan, 12.25, 13.0])[:n], unit="mag")
    t.add_column("n", np.array([1, -32768, 3, 4], dtype=np.int16)[:n], null=-32768)
    t.add_column("name", np.array(["a", "b c", "d,e", "f"])[:n])
    t.add_column("ok", np.array([True, False, True, True])[:n])
    flux = np.arange(n * 5, dtype=np.float64).reshape(n, 5) / 7.0
    flux[1] = np.nan
    t.add_column("flux", flux, unit="W m-2 nm-1")
    t.add_column("err32", (np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 0.1))
    return t


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip_every_format(tmp_path, fmt):
    t = sample_table()
    path = str(tmp_path / f"t.{EXT[fmt]}")
    write_table(t, path)
    back = read_table(path)
    assert back.colnames == t.colnames
    np.testing.assert_array_equal(back["source_id"], t["source_id"])
    np.testing.assert_array_equal(back["g"], t["g"])  # NaN == NaN here
    np.testing.assert_array_equal(back["flux"], t["flux"])
    # CSV carries no types: float32 values come back as the float64 of their 9-digit text
    np.testing.assert_array_equal(back["err32"].astype(np.float32), t["err32"])
    assert list(back["name"]) == list(t["name"])
    assert list(back["ok"]) == list(t["ok"])
    assert back["n"][1] == back.info["n"].null and list(back["n"][[0, 2, 3]]) == [1, 3, 4]
    if fmt == "csv":  # plain CSV (the archive's) has no place for units or keywords
        return
    from astropy import units as u  # VOTable spells units its own way

    assert u.Unit(back.info["flux"].unit) == u.Unit("W m-2 nm-1")
    assert back.info["g"].unit == "mag"
    assert float(back.meta["WAVEMIN"]) == 336.0 and back.meta["SURVEY"] == "test"
    assert back.history == t.history
    assert back.info["source_id"].description == "Gaia id"


@pytest.mark.parametrize("fmt", ["fits", "hdf5"])
def test_2d_cells(tmp_path, fmt):
    t = Table()
    t.add_column("cov", np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3))
    path = str(tmp_path / f"t.{EXT[fmt]}")
    write_table(t, path)
    np.testing.assert_array_equal(read_table(path)["cov"], t["cov"])


def test_2d_cells_refused_in_text(tmp_path):
    t = Table()
    t.add_column("cov", np.zeros((2, 3, 3)))
    with pytest.raises(UserError, match="2-D cells"):
        write_table(t, str(tmp_path / "t.csv"))
    assert os.listdir(tmp_path) == []


def test_chunked_write_and_read(tmp_path):
    path = str(tmp_path / "t.h5")
    with TableWriter(path) as out:
        for start in range(0, 25, 10):
            t = Table()
            t.add_column("i", np.arange(start, min(start + 10, 25)))
            out.write(t)
    with open_table(path) as src:
        assert src.nrows == 25
        sizes = [len(c) for c in src.chunks(7)]
    assert sizes == [7, 7, 7, 4]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gzip_round_trip(tmp_path, fmt):
    path = str(tmp_path / f"t.{EXT[fmt]}.gz")
    write_table(sample_table(), path)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    np.testing.assert_array_equal(read_table(path)["flux"], sample_table()["flux"])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sniff_stdin_formats(tmp_path, fmt):
    path = tmp_path / f"t.{EXT[fmt]}"
    write_table(sample_table(), str(path))
    assert sniff(path.read_bytes()[:4096]) == fmt
    # through a pipe, the content decides
    r = run("info", "-", "--json", stdin=path.read_bytes())
    assert r.returncode == 0, r.stderr
    assert b'"rows": 4' in r.stdout


def test_existing_output_is_kept_without_overwrite(tmp_path):
    path = tmp_path / "t.fits"
    path.write_bytes(b"precious")
    with pytest.raises(UserError, match="exists"):
        TableWriter(str(path))
    assert path.read_bytes() == b"precious"
    write_table(sample_table(), str(path), overwrite=True)
    assert len(read_table(str(path))) == 4


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.fits"
    with pytest.raises(RuntimeError):
        with TableWriter(str(path)) as out:
            out.write(sample_table())
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_old_file(tmp_path):
    path = tmp_path / "out.fits"
    write_table(sample_table(2), str(path))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with TableWriter(str(path), overwrite=True) as out:
            out.write(sample_table())
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.fits"]


def test_binary_to_terminal_is_refused(tmp_path):
    src = tmp_path / "t.fits"
    write_table(sample_table(), str(src))
    main, child = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "xptools", "sample", str(src)],
                          stdout=child, stderr=subprocess.PIPE, timeout=120)
    os.close(child)
    os.close(main)
    assert proc.returncode == 1
    assert b"refusing to write binary FITS to a terminal" in proc.stderr
    assert proc.stderr.count(b"\n") == 1


def test_ecsv_readable_by_astropy(tmp_path):
    from astropy.table import Table as AstropyTable

    path = str(tmp_path / "t.ecsv")
    write_table(sample_table(), path)
    t = AstropyTable.read(path, format="ascii.ecsv")
    np.testing.assert_allclose(t["flux"][0], sample_table()["flux"][0])
    assert str(t["g"].unit) == "mag"


def test_archive_files_read_alike(shared):
    base = os.path.join(shared, "gaiaxpy_reference", "xp_continuous",
                        "XP_CONTINUOUS_RAW_with_missing_BP")
    tables = {ext: read_table(base + ext) for ext in (".fits", ".csv", ".ecsv", ".xml",
                                                      "_plain.xml")}
    ref = tables[".fits"]
    for ext, t in tables.items():
        np.testing.assert_array_equal(t["source_id"], ref["source_id"], err_msg=ext)
        np.testing.assert_allclose(t["bp_coefficients"], ref["bp_coefficients"], rtol=1e-15,
                                   err_msg=ext)
        np.testing.assert_allclose(t["rp_coefficient_correlations"],
                                   ref["rp_coefficient_correlations"], rtol=1e-7, err_msg=ext)
        assert np.isnan(t["bp_coefficients"][1]).all(), ext  # the missing BP spectrum


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_table(str(tmp_path / "nope.fits"))
    with pytest.raises(UserError, match="directory"):
        read_table(str(tmp_path))


def test_csv_type_errors_name_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(UserError, match="line 3 has 1 fields"):
        read_table(str(path))


def test_csv_ragged_arrays_name_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,x\n1,"(1, 2, 3)"\n2,"(1, 2)"\n')
    with pytest.raises(UserError, match="line 3: array has 2 values, expected 3"):
        read_table(str(path))


@pytest.mark.parametrize("fmt", ["fits", "hdf5"])
def test_longer_text_in_later_chunks(tmp_path, fmt):
    path = str(tmp_path / f"t.{EXT[fmt]}")
    with TableWriter(path) as out:
        for names in (["abcdefghij", "cd"], ["a much longer name", "é-accented"]):
            t = Table()
            t.add_column("name", np.array(names))
            out.write(t)
    accented = "é-accented" if fmt == "hdf5" else "?-accented"  # FITS text is ASCII
    assert list(read_table(path)["name"]) == ["abcdefghij", "cd", "a much longer name",
                                              accented]
    with pytest.raises(UserError, match="does not fit"):
        with TableWriter(str(tmp_path / f"u.{EXT[fmt]}")) as out:
            for names in (["ab"], ["x" * 40]):
                t = Table()
                t.add_column("name", np.array(names))
                out.write(t)


def test_long_history_lines_survive_fits(tmp_path):
    t = sample_table()
    t.history = ["x" * 30 + " " + "y" * 150 + " end", "short"]
    path = str(tmp_path / "t.fits")
    write_table(t, path)
    assert read_table(path).history == t.history


@pytest.mark.parametrize("fmt", ["fits", "csv", "ecsv", "votable"])
def test_info_gives_the_width_of_text_columns(tmp_path, fmt):
    import json

    t = sample_table()
    t.columns["name"] = np.array(["2M00000002+7417074", "b", "c", "d"])
    path = tmp_path / f"t.{EXT[fmt]}"
    write_table(t, str(path))
    r = run("info", path, "--json")
    assert r.returncode == 0, r.stderr
    dtype = {c["name"]: c["dtype"] for c in json.loads(r.stdout)["columns"]}["name"]
    assert dtype in ("<U18", "<U36")  # FITS keeps room to spare: twice the longest
    assert dtype.encode() in run("info", path).stdout
