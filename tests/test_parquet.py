"""Parquet through pyarrow, in the conventions of HATS catalogues: array cells as list columns,
units, descriptions, keywords and history in the schema metadata; astropy, pyarrow and pandas
read what xptools writes, xptools reads what they write."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run, synthetic_continuous
from test_hdf5 import spectra_table as hdf5_spectra_table
from test_hdf5 import write_in_pieces as hdf5_write_in_pieces
from xptools.errors import UserError
from xptools.io import (Table, TableWriter, format_from_name, open_table, output_format,
                        read_table, sniff, write_table)

KEYWORDS = {"XPTVERS": "0.1.0", "XPTCMD": "xptools sample in.fits -o out.parquet",
            "XPTDATE": "2026-01-01T00:00:00Z", "WAVEMIN": 336.0, "NSTARS": 9, "GOOD": True}
HISTORY = ["2026-01-01T00:00:00Z xptools sample in.fits -o out.parquet", "second step"]


def spectra_table(n=9, start=0):
    """test_hdf5.py's table of every kind of column xptools writes, with more that Parquet must
    keep: a NaN scalar, one missing sample, a second array width, a boolean keyword."""
    rows = np.arange(start, start + n)
    t = hdf5_spectra_table(n, start)
    t.meta, t.history = dict(KEYWORDS), list(HISTORY)
    t.columns["g"] = np.where(rows % 5 == 3, np.nan, t["g"])
    t.columns["flux"][rows % 4 == 1, 5] = np.nan  # one missing sample
    t.add_column("bp_coefficients", rows[:, None] * 0.5 + np.arange(55.0)[None, :])
    return t


def write_in_pieces(path, total=9, piece=4):
    return hdf5_write_in_pieces(path, total, piece, spectra_table)


def assert_same(back, t):
    assert back.colnames == t.colnames
    for n in t.colnames:
        assert back[n].dtype == t[n].dtype or t[n].dtype.kind == "U", n
        assert back[n].shape == t[n].shape, n
        np.testing.assert_array_equal(back[n], t[n], err_msg=n)  # NaN == NaN here
        assert back.info[n] == t.info[n], n
    assert back.meta == t.meta
    assert back.history == t.history


def assert_one_line_error(r, *fragments, command="info"):
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"xptools {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_round_trip(tmp_path):
    path = tmp_path / "t.parquet"
    t = write_in_pieces(path)
    back = read_table(str(path))
    assert_same(back, t)
    assert back["n_bases"][1] == -1 and back.info["n_bases"].null == -1


def test_layout_list_columns_and_schema_metadata(tmp_path):
    path = tmp_path / "t.parquet"
    write_in_pieces(path)
    f = pq.ParquetFile(path)
    schema = f.schema_arrow
    assert f.metadata.num_row_groups == 3  # one per chunk written
    assert schema.field("flux").type == pa.list_(pa.float32(), 343)
    assert schema.field("bp_coefficients").type == pa.list_(pa.float64(), 55)
    assert schema.field("cov").type == pa.list_(pa.float64(), 4)
    assert json.loads(schema.field("cov").metadata[b"shape"]) == [2, 2]
    assert schema.field("flux").metadata[b"unit"] == b"W m-2 nm-1"
    assert schema.field("flux").metadata[b"description"] == b"sampled flux"
    assert schema.field("n_bases").metadata[b"null"] == b"-1"
    blob = json.loads(schema.metadata[b"xptools"])
    assert blob == {"meta": KEYWORDS, "history": HISTORY}
    assert b"table_meta_yaml" in schema.metadata
    data = pq.read_table(path)
    assert data["n_bases"].null_count == 3  # the null value is a Parquet null
    assert data["flux"].null_count == 0  # a missing spectrum is a list of NaN (astropy)


def test_chunked_reading_keeps_the_order(tmp_path):
    path = tmp_path / "t.parquet"
    t = write_in_pieces(path, total=25, piece=10)
    with open_table(str(path)) as src:
        assert src.nrows == 25 and src.format == "parquet"
        assert src.schema["flux"].shape == (0, 343) and len(src.schema) == 0
        pieces = list(src.chunks(7))
        assert [len(p) for p in pieces] == [7, 7, 7, 4]
        np.testing.assert_array_equal(np.concatenate([p["source_id"] for p in pieces]),
                                      t["source_id"])
        np.testing.assert_array_equal(np.concatenate([p["flux"] for p in pieces]), t["flux"])
        only = list(src.chunks(100, columns=["flux", "source_id"]))
    assert len(only) == 1 and only[0].colnames == ["flux", "source_id"]
    assert only[0].info["flux"].unit == "W m-2 nm-1"


def test_empty_table(tmp_path):
    path = str(tmp_path / "t.parquet")
    write_table(spectra_table(0), path)
    back = read_table(path)
    assert len(back) == 0 and back.colnames == spectra_table(0).colnames
    assert back["flux"].shape == (0, 343) and back["cov"].shape == (0, 2, 2)
    assert back.meta == KEYWORDS


def test_cells_of_no_values(tmp_path):
    """A FITS column of empty arrays (no source has a BP spectrum) is (rows, 0)."""
    t = Table()
    t.add_column("source_id", np.arange(3))
    t.add_column("bp_coefficients", np.zeros((3, 0)))
    path = str(tmp_path / "t.parquet")
    write_table(t, path)
    assert read_table(path)["bp_coefficients"].shape == (3, 0)


def test_astropy_and_pandas_read_it(tmp_path):
    import pandas as pd
    from astropy import units as u
    from astropy.table import Table as AstropyTable

    path = tmp_path / "t.parquet"
    t = write_in_pieces(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it measures the text (no table::len in the schema)
        a = AstropyTable.read(path)
    assert a.colnames == t.colnames
    assert a["flux"].shape == (9, 343) and a["flux"].unit == u.Unit("W m-2 nm-1")
    np.testing.assert_array_equal(a["flux"], t["flux"])
    assert a["source_id"].description == "Gaia DR3 id"
    assert a.meta["WAVEMIN"] == 336.0 and list(a.meta["HISTORY"]) == HISTORY
    frame = pd.read_parquet(path)
    assert list(frame["source_id"]) == list(t["source_id"])
    assert frame["n_bases"].isna().sum() == 3
    np.testing.assert_array_equal(np.stack(frame["bp_coefficients"]), t["bp_coefficients"])


def test_format_names_and_magic():
    assert format_from_name("x.parquet") == format_from_name("x.pq") == "parquet"
    assert format_from_name("x.parquet.gz") == "parquet"
    assert output_format("x.pq", None) == "parquet"
    assert sniff(b"PAR1\x15\x04") == "parquet"


def test_info(tmp_path):
    path = tmp_path / "t.parquet"
    write_in_pieces(path)
    r = run("info", path, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["format"] == "parquet" and report["rows"] == 9
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["flux"]["shape"] == [343] and columns["flux"]["unit"] == "W m-2 nm-1"
    assert columns["cov"]["shape"] == [2, 2]
    assert columns["name"]["dtype"] == "<U7"  # the longest text, recorded in the footer
    assert report["provenance"]["XPTVERS"] == "0.1.0"
    r = run("info", path)
    assert r.returncode == 0 and b"parquet" in r.stdout and b"flux" in r.stdout, r.stderr


def test_stdin_and_stdout(tmp_path):
    path = tmp_path / "t.parquet"
    write_in_pieces(path)
    r = run("info", "-", "--json", stdin=path.read_bytes())  # recognised by its first bytes
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "parquet"
    src = tmp_path / "continuous.fits"
    write_table(synthetic_continuous(n=3, correlations=False), str(src))
    r = run("sample", src, "--format", "parquet", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout[:4] == b"PAR1" and r.stdout[-4:] == b"PAR1"
    out = tmp_path / "stdout.parquet"
    out.write_bytes(r.stdout)
    back = read_table(str(out))
    assert len(back) == 3 and back["flux"].shape[0] == 3
    assert back.meta["XPTCMD"].startswith("xptools sample")


def test_sample_writes_parquet(tmp_path, continuous_fits):
    out_parquet, out_fits = tmp_path / "out.parquet", tmp_path / "out.fits"
    r = run("sample", continuous_fits, "-o", out_parquet, "-q")
    assert r.returncode == 0, r.stderr
    assert run("sample", continuous_fits, "-o", out_fits, "-q").returncode == 0
    got, want = read_table(str(out_parquet)), read_table(str(out_fits))
    assert got.colnames == want.colnames
    for n in want.colnames:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)
        assert got.info[n].unit == want.info[n].unit, n
    assert np.isnan(got["flux"][2]).any()  # row 2 has no BP spectrum
    assert len(got.history) == 1 and got.history[0].endswith("out.parquet -q")
    assert got.meta["WAVEMIN"] == want.meta["WAVEMIN"] and "out.parquet" in got.meta["XPTCMD"]
    assert pq.read_schema(out_parquet).field("flux").type.list_size == got["flux"].shape[1]


def test_parquet_input_to_sample(tmp_path):
    src = tmp_path / "in.parquet"
    write_table(synthetic_continuous(n=4, missing_bp=(1,)), str(src))
    out = tmp_path / "out.fits"
    r = run("sample", src, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert len(read_table(str(out))) == 4


def test_reads_what_astropy_writes(tmp_path):
    from astropy.table import MaskedColumn
    from astropy.table import Table as AstropyTable

    a = AstropyTable()
    a["source_id"] = np.array([1, 2, 3], dtype=np.int64)
    a["n"] = MaskedColumn(np.array([5, 6, 7], dtype=np.int32), mask=[False, True, False],
                          unit="m", description="a masked int")
    a["g"] = MaskedColumn([1.0, 2.0, 3.0], mask=[True, False, False])
    a["name"] = ["x", "yy", "z"]
    a["flux"] = np.arange(3 * 343, dtype=np.float32).reshape(3, 343)
    a["cov"] = np.arange(12.0).reshape(3, 2, 2)
    a.meta["WAVEMIN"] = 336.0
    a.meta["HISTORY"] = ["one", "two"]
    path = tmp_path / "astropy.parquet"
    a.write(path)
    t = read_table(str(path))
    assert t.colnames == ["source_id", "n", "g", "name", "flux", "cov"]  # no .mask columns
    assert t.info["n"].unit == "m" and t.info["n"].description == "a masked int"
    assert t["n"][1] == t.info["n"].null == np.iinfo(np.int32).min
    assert list(t["n"][[0, 2]]) == [5, 7] and t["n"].dtype == np.int32
    assert np.isnan(t["g"][0]) and list(t["g"][1:]) == [2.0, 3.0]
    assert list(t["name"]) == ["x", "yy", "z"]
    np.testing.assert_array_equal(t["flux"], a["flux"])
    np.testing.assert_array_equal(t["cov"], a["cov"])  # the subtype's shape
    assert t.meta == {"WAVEMIN": 336.0} and t.history == ["one", "two"]


def test_reads_plain_pyarrow_and_pandas_files(tmp_path):
    import pandas as pd

    table = pa.table({
        "id": pa.array([1, None, 3], pa.int64()),
        "u": pa.array([1, 2, 3], pa.uint8()),
        "x": pa.array([1.5, None, 3.0], pa.float32()),
        "ok": pa.array([True, None, False]),
        "s": pa.array(["a", None, "ccc"]),
        "cat": pa.array(["r", "g", "r"]).dictionary_encode(),
        "bp": pa.array([[1.0, 2.0], None, [3.0, None]], pa.list_(pa.float64())),
        "fixed": pa.array([[1, 2], [3, 4], None], pa.list_(pa.int32(), 2)),
        "gone": pa.array([None, None, None], pa.list_(pa.float32())),
    })
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path, row_group_size=2)
    t = read_table(str(path))
    assert t.info["id"].null == np.iinfo(np.int64).min and t["id"][1] == t.info["id"].null
    assert t.info["u"].null is None and t["u"].dtype == np.uint8  # no nulls: no null value
    assert np.isnan(t["x"][1]) and t["x"].dtype == np.float32
    assert list(t["ok"]) == [True, False, False]
    assert list(t["s"]) == ["a", "", "ccc"] and list(t["cat"]) == ["r", "g", "r"]
    np.testing.assert_array_equal(t["bp"], [[1, 2], [np.nan, np.nan], [3, np.nan]])
    np.testing.assert_array_equal(t["fixed"], [[1, 2], [3, 4], [0, 0]])
    assert t["gone"].shape == (3, 0)
    assert t.meta == {} and t.history == [] and t.info["x"].unit is None
    # pandas' own file: its index column is left out
    frame = pd.DataFrame({"a": [1, 2]}, index=pd.Index([10, 20]))
    frame.to_parquet(tmp_path / "pandas.parquet")
    back = read_table(str(tmp_path / "pandas.parquet"))
    assert back.colnames == ["a"] and list(back["a"]) == [1, 2]


def test_list_lengths_that_differ_are_one_line(tmp_path, monkeypatch):
    table = pa.table({"source_id": [1, 2, 3],
                      "flux": pa.array([[1.0, 2.0], None, [3.0]], pa.list_(pa.float64()))})
    path = tmp_path / "ragged.parquet"
    pq.write_table(table, path)
    assert_one_line_error(run("info", path), str(path), "'flux'", "different lengths (2 and 1)")
    # found when reading, past the rows looked at to learn the length
    import xptools.io.parquet as parquet

    monkeypatch.setattr(parquet, "PROBE_ROWS", 1)
    with open_table(str(path)) as src:
        with pytest.raises(UserError, match="'flux': arrays of different lengths"):
            src.read()


def test_unreadable_column_type_is_one_line(tmp_path):
    path = tmp_path / "map.parquet"
    pq.write_table(pa.table({"m": pa.array([[("a", 1)], [("b", 2)]],
                                           type=pa.map_(pa.string(), pa.int64()))}), path)
    assert_one_line_error(run("info", path), "column 'm'", "map")


def test_struct_fields_are_columns(tmp_path):
    """Nested columns (HATS, the Multimodal Universe): each field a column under its own name,
    or parent.field where the name is taken; a null struct is null in every field."""
    path = tmp_path / "nested.parquet"
    coeff = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32()))
    nested = pa.StructArray.from_arrays([coeff, coeff], names=["coeff", "coeff_error"],
                                        mask=pa.array([False, True, False]))
    phot = pa.StructArray.from_arrays([pa.array([10.0, 11.0, 12.0]),
                                       pa.array([7, 8, 9], pa.int32())],
                                      names=["phot_g_mean_mag", "ra"])
    pq.write_table(pa.table({"ra": [1.0, 2.0, 3.0], "spectral_coefficients": nested,
                             "photometry": phot}), path)
    t = read_table(str(path))
    assert t.colnames == ["ra", "coeff", "coeff_error", "phot_g_mean_mag", "photometry.ra"]
    np.testing.assert_array_equal(t["coeff"], [[1, 2], [np.nan, np.nan], [5, 6]])
    np.testing.assert_array_equal(t["photometry.ra"], [7, 8, 9])
    np.testing.assert_array_equal(t["ra"], [1, 2, 3])


@pytest.mark.parametrize("case", ["empty", "truncated", "not_parquet"])
def test_bad_files(tmp_path, case):
    src, out = tmp_path / "bad.parquet", tmp_path / "out.fits"
    if case == "empty":
        src.write_bytes(b"")
        expected = "empty file"
    elif case == "truncated":
        write_table(synthetic_continuous(n=20), str(tmp_path / "good.parquet"))
        data = (tmp_path / "good.parquet").read_bytes()
        src.write_bytes(data[:len(data) // 2])
        expected = "not a readable Parquet file"
    else:
        src.write_text("source_id,ra\n1,2.0\n")
        expected = "not a readable Parquet file"
    r = run("sample", src, "-o", out)
    assert_one_line_error(r, str(src), expected, command="sample")
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_later_chunk_with_other_types(tmp_path):
    path = tmp_path / "t.parquet"
    with pytest.raises(UserError, match="later chunk"):
        with TableWriter(str(path)) as out:
            out.write(spectra_table(2))
            t = spectra_table(2, 2)
            t.columns["flux"] = t["flux"].astype(np.float64)
            out.write(t)
    assert os.listdir(tmp_path) == []


def test_cli_imports_no_pyarrow():
    code = "import sys; import xptools.cli, xptools.io; print('pyarrow' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
