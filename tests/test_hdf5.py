"""HDF5 in astropy's table layout: astropy, h5py and pandas read what xptools writes, xptools
reads what astropy writes and the one-dataset-per-column files of older xptools versions."""

import json
import os
import warnings

import h5py
import numpy as np
import pytest

from xptools.errors import UserError
from xptools.io import Table, TableWriter, open_table, read_table, write_table

KEYWORDS = {"XPTVERS": "0.1.0", "XPTCMD": "xptools sample in.fits -o out.h5",
            "XPTDATE": "2026-01-01T00:00:00Z", "WAVEMIN": 336.0, "WAVEMAX": 1020.0, "NSTARS": 9}
HISTORY = ["2026-01-01T00:00:00Z xptools sample in.fits -o out.h5", "second step"]


def spectra_table(n=9, start=0):
    """Rows start..start+n of a table with every kind of column xptools writes."""
    rows = np.arange(start, start + n)
    t = Table(meta=dict(KEYWORDS), history=list(HISTORY))
    t.add_column("source_id", rows.astype(np.int64) * 10**15 + 7, description="Gaia DR3 id")
    t.add_column("g", 10 + rows / 4, unit="mag")
    t.add_column("n_bases", np.where(rows % 3 == 1, -1, rows).astype(np.int16), null=-1,
                 description="bases used")
    t.add_column("name", np.array([f"star-{i}" + ("é" if i % 2 else "") for i in rows]))
    t.add_column("ok", rows % 2 == 0)
    flux = (rows[:, None] + np.linspace(1, 2, 343)[None, :]).astype(np.float32)
    flux[rows % 4 == 2] = np.nan  # a missing spectrum
    t.add_column("flux", flux, unit="W m-2 nm-1", description="sampled flux")
    t.add_column("cov", rows[:, None, None] * 4.0 + np.arange(4).reshape(2, 2))
    return t


def write_in_pieces(path, total=9, piece=4, table=spectra_table):
    """``table``'s rows written chunk by chunk (test_parquet.py passes its own table)."""
    with TableWriter(str(path)) as out:
        for start in range(0, total, piece):
            out.write(table(min(piece, total - start), start))
    return table(total)


def strict_astropy_read(path, **kwargs):
    from astropy.table import Table as AstropyTable

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return AstropyTable.read(str(path), **kwargs)


def test_astropy_reads_it_with_units_and_meta(tmp_path):
    from astropy import units as u
    from astropy.table import MaskedColumn

    path = tmp_path / "t.h5"
    t = write_in_pieces(path)
    a = strict_astropy_read(path)  # no path=, no warnings
    assert a.colnames == t.colnames
    assert len(a) == 9
    assert a["flux"].unit == u.Unit("W m-2 nm-1") and a["g"].unit == u.mag
    assert a["source_id"].description == "Gaia DR3 id"
    assert a["flux"].description == "sampled flux"
    np.testing.assert_array_equal(a["flux"], t["flux"])
    np.testing.assert_array_equal(a["cov"], t["cov"])
    np.testing.assert_array_equal(a["source_id"], t["source_id"])
    assert a["name"].dtype.kind == "S" and list(a["name"]) == list(t["name"])  # UTF-8 bytes
    assert list(a["ok"]) == list(t["ok"])
    # the integer null is astropy's masked value
    assert isinstance(a["n_bases"], MaskedColumn)
    assert list(a["n_bases"].mask) == [i % 3 == 1 for i in range(9)]
    assert a["n_bases"].meta["null"] == -1
    for key, value in KEYWORDS.items():
        assert a.meta[key] == value
    assert a.meta["HISTORY"] == HISTORY


def test_layout_is_one_chunked_compressed_compound_dataset(tmp_path):
    path = tmp_path / "t.h5"
    write_in_pieces(path, total=1000, piece=300)
    with h5py.File(path) as f:
        assert sorted(f) == ["__astropy_table__", "__astropy_table__.__table_column_meta__"]
        ds = f["__astropy_table__"]
        assert ds.shape == (1000,) and ds.maxshape == (None,)
        assert ds.dtype["flux"].shape == (343,) and ds.dtype["name"].kind == "S"
        assert ds.compression == "gzip" and ds.shuffle
        assert ds.chunks[0] * ds.dtype.itemsize <= 1 << 20
        header = "\n".join(v.decode() for v in f["__astropy_table__.__table_column_meta__"])
        assert "XPTCMD: xptools sample in.fits -o out.h5" in header


def test_xptools_round_trip(tmp_path):
    path = tmp_path / "t.h5"
    t = write_in_pieces(path)
    with open_table(str(path)) as src:
        assert src.nrows == 9
        pieces = list(src.chunks(4))
        assert [len(p) for p in pieces] == [4, 4, 1]
        part = next(src.chunks(5, ["flux", "n_bases"]))
    back = read_table(str(path))
    assert back.colnames == t.colnames
    for n in t.colnames:
        np.testing.assert_array_equal(back[n], t[n])
        assert back[n].dtype == t[n].dtype or t[n].dtype.kind == "U", n
    assert back.info["n_bases"].null == -1 and back.info["g"].null is None
    assert back.info["source_id"].description == "Gaia DR3 id"
    assert back.info["g"].unit == "mag"
    from astropy import units as u

    assert u.Unit(back.info["flux"].unit) == u.Unit("W m-2 nm-1")  # astropy's spelling
    assert back.meta == KEYWORDS and back.history == HISTORY
    assert part.colnames == ["flux", "n_bases"] and len(part) == 5
    np.testing.assert_array_equal(part["n_bases"], t["n_bases"][:5])


def test_integer_array_cells_with_a_null(tmp_path):
    t = Table()
    t.add_column("flags", np.array([[1, 99], [99, 3]], dtype=np.int32), null=99)
    path = tmp_path / "t.h5"
    write_table(t, str(path))
    back = read_table(str(path))
    np.testing.assert_array_equal(back["flags"], t["flags"])
    assert back.info["flags"].null == 99
    a = strict_astropy_read(path)
    assert a["flags"].mask.tolist() == [[False, True], [True, False]]


def test_empty_table(tmp_path):
    path = tmp_path / "t.h5"
    write_table(spectra_table(0), str(path))
    back = read_table(str(path))
    assert len(back) == 0 and back.colnames == spectra_table(0).colnames
    assert len(strict_astropy_read(path)) == 0


def test_reads_the_old_one_dataset_per_column_layout(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["columns"] = json.dumps(["source_id", "flux", "n", "name"])
        f.attrs["WAVEMIN"] = 336.0
        f.attrs["XPTCMD"] = "xptools sample a.fits -o old.h5"
        f.attrs["HISTORY"] = ["one", "two"]
        f.create_dataset("name", data=np.char.encode(np.array(["a", "bé"]), "utf-8"))
        f.create_dataset("source_id", data=np.array([1, 2], dtype=np.int64))
        d = f.create_dataset("flux", data=np.ones((2, 3), np.float32), maxshape=(None, 3),
                             chunks=(1, 3))
        d.attrs["unit"] = "W m-2 nm-1"
        d.attrs["description"] = "sampled flux"
        d = f.create_dataset("n", data=np.array([5, -1], dtype=np.int16))
        d.attrs["null"] = -1
    back = read_table(str(path))
    assert back.colnames == ["source_id", "flux", "n", "name"]
    assert back.info["flux"].unit == "W m-2 nm-1"
    assert back.info["flux"].description == "sampled flux"
    assert back.info["n"].null == -1 and list(back["n"]) == [5, -1]
    assert list(back["name"]) == ["a", "bé"]
    assert back["flux"].shape == (2, 3)
    assert back.meta == {"WAVEMIN": 336.0, "XPTCMD": "xptools sample a.fits -o old.h5"}
    assert back.history == ["one", "two"]


def test_reads_what_astropy_writes(tmp_path):
    from astropy.table import Column, MaskedColumn
    from astropy.table import Table as AstropyTable

    a = AstropyTable(meta={"ORIGIN": "astropy", "HISTORY": ["made by astropy"]})
    a["id"] = Column([1, 2, 3], dtype=np.int64, description="an id")
    a["n"] = MaskedColumn(np.array([4, 5, 6], dtype=np.int32), mask=[False, True, False])
    a["x"] = MaskedColumn([1.5, 2.5, 3.5], mask=[True, False, False], unit="km/s")
    a["s"] = Column([b"p", b"q", b"r"])
    path = tmp_path / "a.h5"
    a.write(str(path), path="grp/table", serialize_meta=True)
    back = read_table(str(path))
    assert back.colnames == ["id", "n", "x", "s"]
    assert back.info["id"].description == "an id" and back.info["x"].unit == "km / s"
    assert back["n"][1] == back.info["n"].null and list(back["n"][[0, 2]]) == [4, 6]
    assert np.isnan(back["x"][0]) and list(back["x"][1:]) == [2.5, 3.5]
    assert list(back["s"]) == ["p", "q", "r"]
    assert back.meta == {"ORIGIN": "astropy"} and back.history == ["made by astropy"]
    # astropy without serialize_meta: keywords as dataset attributes, no units
    b = AstropyTable({"id": [1, 2]}, meta={"ORIGIN": "plain"})
    b.write(str(tmp_path / "b.h5"), path="data")
    back = read_table(str(tmp_path / "b.h5"))
    assert list(back["id"]) == [1, 2] and back.meta == {"ORIGIN": "plain"}


def fits_and_h5_sizes(tmp_path, t):
    write_table(t, str(tmp_path / "t.fits"))
    write_table(t, str(tmp_path / "t.h5"))
    return os.path.getsize(tmp_path / "t.fits"), os.path.getsize(tmp_path / "t.h5")


def test_200_rows_are_no_bigger_than_fits(tmp_path):
    rng = np.random.default_rng(1)
    t = Table()
    t.add_column("source_id", rng.integers(0, 2**62, 200))
    t.add_column("g", rng.normal(15, 2, 200).astype(np.float32), unit="mag")
    shape = np.exp(-((np.linspace(336, 1020, 343) - 600) / 200) ** 2)
    flux = shape * rng.lognormal(0, 1, (200, 1)) * (1 + rng.normal(0, 0.01, (200, 343)))
    t.add_column("flux", flux.astype(np.float32), unit="W m-2 nm-1")
    t.add_column("flux_error", (flux * 0.02).astype(np.float32), unit="W m-2 nm-1")
    fits, h5 = fits_and_h5_sizes(tmp_path, t)
    assert h5 < fits, (h5, fits)  # 0.8x; the one-dataset-per-column layout was 6x FITS


def test_200_narrow_rows_are_no_bigger_than_fits(tmp_path):
    rng = np.random.default_rng(2)
    t = Table()
    t.add_column("source_id", rng.integers(0, 2**62, 200))
    for name in ("teff", "logg", "fe_h", "alpha_m", "snr"):
        t.add_column(name, rng.normal(0, 1, 200).astype(np.float32))
    t.add_column("apogee_id", np.array([f"2M{i:08d}+{i:07d}" for i in range(200)]))
    fits, h5 = fits_and_h5_sizes(tmp_path, t)
    assert h5 < fits, (h5, fits)  # 0.6x; the one-dataset-per-column layout: over 100x


def test_pandas_recipe(tmp_path):
    """The recipe in docs/io.md: astropy reads the file, scalar columns go to pandas."""
    pytest.importorskip("pandas")
    path = tmp_path / "spectra.h5"
    t = write_in_pieces(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # --- as in docs/io.md
        from astropy.table import Table as AstropyTable

        table = AstropyTable.read(str(path))
        table.convert_bytestring_to_unicode()
        scalars = [name for name in table.colnames if table[name].ndim == 1]
        df = table[scalars].to_pandas()
        df["flux"] = list(table["flux"])  # array cells: one numpy array per row
        # ---
    assert list(df.columns) == ["source_id", "g", "n_bases", "name", "ok", "flux"]
    assert df["name"].tolist() == list(t["name"])
    assert df["n_bases"].isna().tolist() == [i % 3 == 1 for i in range(9)]
    assert str(df["n_bases"].dtype) == "Int16"
    np.testing.assert_array_equal(df["flux"][3], t["flux"][3])
    np.testing.assert_array_equal(df["source_id"], t["source_id"])


def test_h5py_recipe(tmp_path):
    """The h5py lines in docs/io.md."""
    path = tmp_path / "spectra.h5"
    t = write_in_pieces(path)
    with h5py.File(path) as f:
        flux = f["__astropy_table__"]["flux"]
        first = f["__astropy_table__"][:1000]
    np.testing.assert_array_equal(flux, t["flux"])
    np.testing.assert_array_equal(first["source_id"], t["source_id"])


def test_bad_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\nnot really")
    with pytest.raises(UserError, match="junk.h5: not a readable HDF5 file"):
        read_table(str(junk))
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("a")
        f.create_group("b")
    with pytest.raises(UserError, match="empty.h5: HDF5 file holds no table"):
        read_table(str(tmp_path / "empty.h5"))
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["t1"] = np.zeros(2, dtype=[("a", "f4")])
        f["t2"] = np.zeros(2, dtype=[("b", "f4")])
    with pytest.raises(UserError, match="two.h5: HDF5 file holds 2 tables"):
        read_table(str(tmp_path / "two.h5"))
    with h5py.File(tmp_path / "yaml.h5", "w") as f:
        f["__astropy_table__"] = np.zeros(2, dtype=[("a", "f4")])
        f["__astropy_table__.__table_column_meta__"] = np.array([b"datatype: [unclosed"])
    with pytest.raises(UserError, match="yaml.h5: unreadable table header"):
        read_table(str(tmp_path / "yaml.h5"))


def test_too_many_columns_is_one_clear_line(tmp_path):
    t = Table()
    for i in range(1500):
        t.add_column(f"column_number_{i}", np.arange(3.0))
    with pytest.raises(UserError, match="1500 columns are more than one HDF5 table"):
        write_table(t, str(tmp_path / "wide.h5"))
    assert os.listdir(tmp_path) == []
