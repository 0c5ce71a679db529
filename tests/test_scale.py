"""Row-wise commands over HATS catalogues (xptools.scale): hats-import, file == catalogue ==
Dask (a local cluster, and a real `dask scheduler` with `dask worker`s on 127.0.0.1),
resuming after SIGKILL, the Multimodal Universe's nested schema, bad input."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from conftest import run, synthetic_continuous, synthetic_sampled
from xptools.io import Table, concat, read_table, write_table

pytest.importorskip("hats")
pytest.importorskip("distributed")

N = 240


def placed(t: Table, seed=0) -> Table:
    """``t`` with sky positions spread over a few HEALPix partitions."""
    rng = np.random.default_rng(seed)
    t.columns.pop("ra", None)
    t.info.pop("ra", None)
    t.add_column("ra", rng.uniform(40, 70, len(t)), unit="deg")
    t.add_column("dec", rng.uniform(-20, 10, len(t)), unit="deg")
    return t


def with_photometry(t: Table, seed=1) -> Table:
    rng = np.random.default_rng(seed)
    g = rng.uniform(11, 15, len(t))
    for name, value in (("phot_g_mean_mag", g), ("phot_bp_mean_mag", g + 0.4),
                        ("phot_rp_mean_mag", g - 0.6)):
        t.add_column(name, value.astype(np.float32), unit="mag")
    return t


def partitions(folder) -> list[str]:
    return sorted(glob.glob(os.path.join(str(folder), "dataset", "Norder=*", "Dir=*",
                                         "Npix=*.parquet")))


def paired(a, b) -> list[tuple[str, str]]:
    """The partition files of two catalogues, which must have the same partitions."""
    first, second = partitions(a), partitions(b)
    assert first and [os.path.relpath(p, str(a)) for p in first] == \
        [os.path.relpath(p, str(b)) for p in second]
    return list(zip(first, second))


def catalogue_table(folder) -> Table:
    """Every row of a catalogue, in source_id order."""
    t = concat([read_table(p) for p in partitions(folder)])
    return t.rows(np.argsort(t["source_id"], kind="stable"))


def assert_equal_tables(a: Table, b: Table, rtol=0.0):
    """Same columns (b may have the catalogue's extra ones) and values; floats within rtol
    of the row's largest value (0: bit for bit)."""
    for name in a.colnames:
        x, y = a[name], b[name]
        assert x.shape == y.shape, name
        if x.dtype.kind == "f" and rtol:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # rows of NaN only
                scale = np.nanmax(np.abs(x.reshape(len(x), -1)), axis=1).reshape(
                    (len(x),) + (1,) * (x.ndim - 1))
                close = (x == y) | (np.abs(x - y) <= rtol * scale) | (np.isnan(x) & np.isnan(y))
            assert close.all(), f"{name}: {np.count_nonzero(~close)} values differ"
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def ok(result):
    assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A file of continuous spectra with positions and photometry, its catalogue, and a
    sampled file (with errors) and its catalogue."""
    root = tmp_path_factory.mktemp("scale")
    continuous = with_photometry(placed(synthetic_continuous(n=N, missing_bp=(3,))))
    write_table(continuous, str(root / "continuous.fits"))
    sampled = placed(synthetic_sampled(n=N), seed=2)
    write_table(sampled, str(root / "sampled.fits"))
    for name in ("continuous", "sampled"):
        ok(run("hats-import", root / f"{name}.fits", "-o", root / f"{name}_cat",
               "--max-rows", "60", "-q"))
    return root


def test_hats_import_makes_a_catalogue_lsdb_and_hats_read(tables):
    import hats
    import lsdb

    folder = tables / "continuous_cat"
    parts = partitions(folder)
    assert len(parts) >= 4
    for p in parts:
        t = read_table(p)
        assert 0 < len(t) <= 60
        assert np.all(np.diff(t["_healpix_29"]) >= 0)   # sorted by the spatial index
    cat = hats.read_hats(str(folder))
    assert cat.catalog_info.total_rows == N
    assert len(cat.get_healpix_pixels()) == len(parts)
    frame = lsdb.open_catalog(str(folder)).compute()
    assert sorted(frame["source_id"]) == sorted(read_table(str(tables / "continuous.fits"))
                                                ["source_id"])
    # the array columns, units and descriptions come through
    back = catalogue_table(folder)
    source = read_table(str(tables / "continuous.fits"))
    assert_equal_tables(source.rows(np.argsort(source["source_id"])), back)
    assert back.info["ra"].unit == "deg"


def test_hats_import_from_source_id(tmp_path):
    """Gaia bulk files have no positions: source_id's HEALPix level-12 pixel places them."""
    t = synthetic_continuous(n=50)
    t.columns.pop("ra"), t.info.pop("ra")
    pixels = np.random.default_rng(3).integers(0, 12 * 4 ** 12, 50)
    t.columns["source_id"] = (pixels << 35) + 7
    write_table(t, str(tmp_path / "bulk.fits"))
    ok(run("hats-import", tmp_path / "bulk.fits", "-o", tmp_path / "cat", "--order", "2",
           "--positions-from-source-id", "-q"))
    import cdshealpix.nested

    back = catalogue_table(tmp_path / "cat")
    lon, lat = cdshealpix.nested.healpix_to_lonlat(back["source_id"] >> 35, 12)
    np.testing.assert_allclose(back["ra"], lon.to_value("deg"))
    np.testing.assert_allclose(back["dec"], lat.to_value("deg"))
    assert "not its position" in back.info["ra"].description
    for p in partitions(tmp_path / "cat"):   # each row in the partition of its pixel
        npix = int(p.split("Npix=")[1].split(".")[0])
        assert np.all(read_table(p)["source_id"] >> 35 >> 20 == npix)


COMMANDS = {   # command, input, options
    "sample": ("continuous", ()),
    "photometry": ("continuous", ("--system", "JKC_Std")),
    "infer": ("continuous", ()),
    "embed": ("sampled", ()),
    "generate": ("sampled", ("--reconstruct",)),
    "flag": ("sampled", ()),
}
# float outputs of a file and of partitions differ in the last bits only: BLAS and torch
# round differently for different batch sizes (1e-15 in float64, 1e-6 in float32)
RTOL = {"sample": 1e-12, "photometry": 1e-12}
# ... and torch for different thread counts: one process computes with both cores, a worker
# of the two-worker cluster with one (flag's reconstruction chi2, a sum of squared
# differences, moves by up to 1e-5)
TORCH_THREADS = {"infer", "flag"}


def tolerance(command, threads_differ=False):
    return 1e-4 if threads_differ and command in TORCH_THREADS else RTOL.get(command, 1e-5)


def file_output(tables, command):
    """The command's output for the whole file, in source_id order."""
    kind, options = COMMANDS[command]
    out = tables / f"{command}.fits"
    if not out.exists():
        ok(run(command, tables / f"{kind}.fits", "-o", out, "-q", *options))
    t = read_table(str(out))
    return t.rows(np.argsort(t["source_id"], kind="stable"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_catalogue_in_one_process_equals_the_file(tables, tmp_path, command):
    kind, options = COMMANDS[command]
    out = tmp_path / "out"
    ok(run(command, tables / f"{kind}_cat", "-o", out, "-q", *options))
    assert os.path.exists(out / "hats.properties")
    assert_equal_tables(file_output(tables, command), catalogue_table(out),
                        rtol=tolerance(command))
    # and each partition is exactly what the command makes of that partition as a file
    first = partitions(tables / f"{kind}_cat")[0]
    ok(run(command, first, "-o", tmp_path / "one.parquet", "-q", *options))
    target = partitions(out)[0]
    assert_equal_tables(read_table(str(tmp_path / "one.parquet")), read_table(target))
    properties = open(out / "hats.properties").read()
    assert f"xptools_command=xptools {command}" in properties
    assert "hats_nrows=240" in properties


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real scheduler and two one-thread workers (`dask scheduler`, `dask worker`) on
    127.0.0.1, stopped at the end."""
    folder = tmp_path_factory.mktemp("dask")
    file = folder / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", "0",
                                         "--no-dashboard", "--scheduler-file", str(file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = None
    try:
        for _ in range(300):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                    address, "--nworkers", "2", "--nthreads", "1",
                                    "--host", "127.0.0.1", "--no-dashboard",
                                    "--local-directory", str(folder)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield address
    finally:
        for process in (workers, scheduler):
            if process is not None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_dask_scheduler_and_workers_equal_one_process(tables, tmp_path, dask_cluster, command):
    """--scheduler: the partitions on two worker processes give the catalogue that one
    process gives (bit for bit with the same threads), and the file's values."""
    kind, options = COMMANDS[command]
    ok(run(command, tables / f"{kind}_cat", "-o", tmp_path / "dask", "-q", "--scheduler",
           dask_cluster, *options))
    ok(run(command, tables / f"{kind}_cat", "-o", tmp_path / "here", "-q", *options))
    for a, b in paired(tmp_path / "here", tmp_path / "dask"):
        assert_equal_tables(read_table(a), read_table(b),
                            rtol=tolerance(command, True) if command in TORCH_THREADS else 0.0)
    assert_equal_tables(file_output(tables, command), catalogue_table(tmp_path / "dask"),
                        rtol=tolerance(command, True))


def test_local_workers(tables, tmp_path):
    ok(run("sample", tables / "continuous_cat", "-o", tmp_path / "w2", "--workers", "2", "-q"))
    ok(run("sample", tables / "continuous_cat", "-o", tmp_path / "w0", "-q"))
    for a, b in paired(tmp_path / "w0", tmp_path / "w2"):
        assert_equal_tables(read_table(a), read_table(b))


def test_killed_runs_resume_to_the_same_catalogue(tables, tmp_path):
    """SIGKILL a run (all its processes) at random moments: while the cluster starts, just
    after the first partition is written, half way; every partition on disk is whole at each
    moment, and the rerun ends with the uninterrupted run's catalogue."""
    source = tables / "continuous_cat"
    ok(run("infer", source, "-o", tmp_path / "whole", "-q", "--workers", "2", "--chunk-rows",
           "7"))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "xptools", "infer", str(source), "-o", str(out), "-q",
               "--workers", "2", "--chunk-rows", "7"]
    rng = np.random.default_rng(0)
    kills = 0
    for written in (None, 1, len(partitions(tmp_path / "whole")) // 2):
        process = subprocess.Popen(command, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if written is None:
            time.sleep(rng.uniform(0.5, 2.5))
        while written and len(partitions(out)) < written and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        for p in partitions(out):   # anything under a partition's name is complete
            assert len(read_table(p)) > 0
    assert kills == 3
    # in one process (with the first run's threads)
    ok(run("infer", source, "-o", out, "-q", "--chunk-rows", "7"))
    assert not glob.glob(str(out / "dataset" / "**" / ".*.part"), recursive=True)
    for a, b in paired(tmp_path / "whole", out):
        assert_equal_tables(read_table(a), read_table(b))
    # a finished catalogue is not run again, nor replaced without --overwrite
    r = run("infer", source, "-o", out)
    assert r.returncode == 1 and b"exists" in r.stderr


def dying_job(marker: str):
    """A job for the test below: the first process to run a partition dies in the middle of
    writing it (after one chunk), as a worker killed by the kernel would."""
    from xptools.sampling import prepare

    sample = prepare()

    def run_it(src, out, quiet, warn):
        if not os.path.exists(marker):
            open(marker, "w").close()
            first = next(src.chunks(5))
            out.write(first)                # the partition is half written ...
            os._exit(1)                     # ... when the worker dies
        return sample(src, out, quiet, warn)
    return run_it


def test_a_worker_that_dies_mid_partition_is_replaced(tables, tmp_path):
    from xptools import scale

    sys.path.insert(0, os.path.dirname(__file__))   # the workers import this module
    marker = str(tmp_path / "died")
    job = scale.Job("sample", "test_scale:dying_job", {"marker": marker})
    scale.run(job, str(tables / "continuous_cat"), str(tmp_path / "out"), quiet=True,
              workers=2)
    assert os.path.exists(marker)
    assert not glob.glob(str(tmp_path / "out" / "dataset" / "**" / ".*.part"), recursive=True)
    ok(run("sample", tables / "continuous_cat", "-o", tmp_path / "plain", "-q"))
    for a, b in paired(tmp_path / "plain", tmp_path / "out"):
        assert_equal_tables(read_table(a), read_table(b))


def mmu_partition(path, n=12, seed=0):
    """A partition in the Multimodal Universe's Gaia schema: object_id, nested
    spectral_coefficients (coeff, coeff_error: BP's 55 then RP's) and photometry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = synthetic_continuous(n=n, seed=seed, correlations=False)
    coeff = np.hstack([t["bp_coefficients"], t["rp_coefficients"]]).astype(np.float32)
    error = np.hstack([t["bp_coefficient_errors"], t["rp_coefficient_errors"]])
    lists = lambda a: pa.array(list(a.astype(np.float32)), pa.list_(pa.float32()))
    table = pa.table({
        "object_id": pa.array(t["source_id"]),
        "spectral_coefficients": pa.StructArray.from_arrays([lists(coeff), lists(error)],
                                                            names=["coeff", "coeff_error"]),
        "photometry": pa.StructArray.from_arrays([pa.array(np.full(n, 12.0, np.float32))],
                                                 names=["phot_g_mean_mag"]),
        "ra": pa.array(np.linspace(10, 11, n)), "dec": pa.array(np.linspace(5, 6, n))})
    pq.write_table(table, path)
    return t


def test_multimodal_universe_schema_samples_with_diagonal_errors(tmp_path):
    t = mmu_partition(tmp_path / "mmu.parquet")
    ok(run("sample", tmp_path / "mmu.parquet", "-o", tmp_path / "mmu_out.fits", "-q"))
    for band in ("bp", "rp"):   # the same coefficients in the archive's layout
        t.columns[f"{band}_coefficients"] = t[f"{band}_coefficients"].astype(np.float32)
        t.columns[f"{band}_coefficient_errors"] = t[f"{band}_coefficient_errors"] \
            .astype(np.float32)
    write_table(t, str(tmp_path / "archive.fits"))
    ok(run("sample", tmp_path / "archive.fits", "-o", tmp_path / "archive_out.fits", "-q"))
    mmu, archive = (read_table(str(tmp_path / f)) for f in ("mmu_out.fits",
                                                           "archive_out.fits"))
    np.testing.assert_array_equal(mmu["flux"], archive["flux"])
    np.testing.assert_array_equal(mmu["flux_error"], archive["flux_error"])
    assert np.all(mmu["sample_flag"] & 4)            # diagonal errors: the flag bit ...
    assert mmu.meta["XPERRCOR"] == "diagonal"        # ... and the header
    assert "phot_g_mean_mag" in mmu.colnames and "coeff" not in mmu.colnames
    r = ok(run("photometry", tmp_path / "mmu.parquet", "-s", "JKC_Std", "-o",
               tmp_path / "phot.fits"))
    assert b"diagonal" in r.stderr
    assert np.all(read_table(str(tmp_path / "phot.fits"))["photometry_flag"] & 8)


def test_bad_catalogues_are_one_line_and_leave_nothing(tables, tmp_path):
    # a folder that is not a catalogue
    (tmp_path / "notcat").mkdir()
    (tmp_path / "notcat" / "x.txt").write_text("hello")
    r = run("sample", tmp_path / "notcat", "-o", tmp_path / "o1")
    assert r.returncode == 1 and b"not a HATS catalogue" in r.stderr
    assert len(r.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "o1").exists()
    # a partition with a broken schema: the error names it; the others are kept to resume
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tables / "continuous_cat", broken)
    import hats
    from hats.io import paths

    last = hats.read_hats(str(broken)).get_healpix_pixels()[-1]   # run after the others
    bad = str(paths.pixel_catalog_file(str(broken), last))
    t = read_table(bad)
    t.columns.pop("bp_coefficients"), t.info.pop("bp_coefficients")
    os.remove(bad)
    write_table(t, bad)
    r = run("sample", broken, "-o", tmp_path / "o2")
    assert r.returncode == 1 and b"bp_coefficient" in r.stderr and os.path.basename(bad) \
        .encode() in r.stderr
    assert not (tmp_path / "o2" / "hats.properties").exists()
    assert not glob.glob(str(tmp_path / "o2" / "dataset" / "**" / ".*.part"), recursive=True)
    written = partitions(tmp_path / "o2")
    assert written and all(len(read_table(p)) for p in written)
    # the same folder for another job is refused
    r = run("sample", broken, "-o", tmp_path / "o2", "--band", "rp")
    assert r.returncode == 1 and b"another run" in r.stderr
    # files and folders do not mix without a catalogue
    r = run("sample", tables / "continuous.fits", "-o", tmp_path / "o3/")
    assert r.returncode == 1 and b"hats-import" in r.stderr
    r = run("sample", tables / "continuous.fits", "-o", tmp_path / "o4.fits", "--workers", "2")
    assert r.returncode == 1 and b"hats-import" in r.stderr


def test_catalogue_into_one_file(tables, tmp_path):
    ok(run("sample", tables / "continuous_cat", "-o", tmp_path / "all.fits", "-q"))
    back = read_table(str(tmp_path / "all.fits"))
    back = back.rows(np.argsort(back["source_id"], kind="stable"))
    assert_equal_tables(file_output(tables, "sample"), back, rtol=1e-12)


def test_a_catalogue_by_url(tables, tmp_path):
    """A catalogue served over HTTP (here by a server on 127.0.0.1): its partitions are
    downloaded by the tasks that run them."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tables))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/continuous_cat"
        ok(run("sample", url, "-o", tmp_path / "out", "-q"))
    finally:
        server.shutdown()
        server.server_close()
    ok(run("sample", tables / "continuous_cat", "-o", tmp_path / "local", "-q"))
    for a, b in paired(tmp_path / "local", tmp_path / "out"):
        assert_equal_tables(read_table(a), read_table(b))


def test_ctrl_c_says_what_is_kept(tables, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "xptools", "infer",
                                str(tables / "continuous_cat"), "-o", str(out), "-q",
                                "--chunk-rows", "2"], stderr=subprocess.PIPE)
    while not partitions(out) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert b"partitions are in" in stderr and b"the same command resumes" in stderr
    assert not glob.glob(str(out / "dataset" / "**" / ".*.part"), recursive=True)
    ok(run("infer", tables / "continuous_cat", "-o", out, "-q", "--chunk-rows", "2"))
    assert (out / "hats.properties").exists()


def test_reruns_finish_what_is_left_and_refuse_what_differs(tables, tmp_path):
    import fcntl

    source, out = tables / "sampled_cat", tmp_path / "out"
    ok(run("embed", source, "-o", out, "-q"))
    whole = {p: open(p, "rb").read() for p in partitions(out)}
    # killed while writing the metadata: nothing left to compute, the metadata again
    for name in ("hats.properties", "properties", "partition_info.csv"):
        os.remove(out / name)
    r = ok(run("embed", source, "-o", out))
    assert b"partitions were written by an earlier run" in r.stderr
    assert (out / "hats.properties").exists()
    assert {p: open(p, "rb").read() for p in partitions(out)} == whole
    # the same input made into other partitions is another run's input
    os.remove(out / "hats.properties")
    other = tmp_path / "other_cat"
    ok(run("hats-import", tables / "sampled.fits", "-o", other, "--max-rows", "100", "-q"))
    import shutil

    moved = tmp_path / "moved"
    shutil.move(str(source), str(moved))   # (put back below)
    try:
        shutil.copytree(other, source)
        r = run("embed", source, "-o", out)
        assert r.returncode == 1 and b"another run" in r.stderr
    finally:
        shutil.rmtree(source)
        shutil.move(str(moved), str(source))
    # --overwrite with a model that does not load leaves the old catalogue alone
    ok(run("embed", source, "-o", out, "-q"))
    r = run("embed", source, "-o", out, "--overwrite", "--model", tmp_path / "no_model")
    assert r.returncode == 1 and (out / "hats.properties").exists()
    # two runs never write one catalogue at once
    lock = open(out / ".xptools.lock", "a")
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    try:
        r = run("embed", source, "-o", out, "--overwrite")
        assert r.returncode == 1 and b"another xptools run" in r.stderr
    finally:
        lock.close()
    assert {p: open(p, "rb").read() for p in partitions(out)} == whole
    # and --overwrite never removes a folder that is not a catalogue
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for command in (["embed", source], ["hats-import", tables / "sampled.fits"]):
        r = run(*command, "-o", tmp_path / "mine", "--overwrite")
        assert r.returncode == 1 and b"not a catalogue" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_relative_paths_reach_the_workers(tables, tmp_path, dask_cluster):
    """Workers run in their own folders: a relative input, output and model still work."""
    import shutil

    shutil.copytree(tables / "sampled_cat", tmp_path / "cat")
    from xptools import models

    shutil.copytree(models.default_path("embed"), tmp_path / "model")
    r = subprocess.run([sys.executable, "-m", "xptools", "embed", "cat", "-o", "out",
                        "--model", "model", "--scheduler", dask_cluster, "-q"],
                       cwd=tmp_path, capture_output=True, timeout=300)
    ok(r)
    ok(run("embed", tables / "sampled_cat", "-o", tmp_path / "here", "-q"))
    for a, b in paired(tmp_path / "here", tmp_path / "out"):
        assert_equal_tables(read_table(a), read_table(b))


def test_a_model_changed_in_its_folder_is_another_run(tables, tmp_path):
    """A rerun after the model was retrained in place would mix two models' partitions."""
    import shutil

    from xptools import models

    model = tmp_path / "model"
    shutil.copytree(models.default_path("embed"), model)
    source, out = tables / "sampled_cat", tmp_path / "out"
    ok(run("embed", source, "-o", out, "--model", model, "-q"))
    os.remove(out / "hats.properties")          # as if killed before the end
    config = json.loads((model / "config.json").read_text())
    config["card_note"] = "retrained"           # any change to config.json or weights
    (model / "config.json").write_text(json.dumps(config))
    r = run("embed", source, "-o", out, "--model", model)
    assert r.returncode == 1 and b"another run" in r.stderr


def test_info_describes_a_catalogue_and_the_packed_layout(tables, tmp_path):
    r = ok(run("info", tables / "continuous_cat", "--json"))
    report = json.loads(r.stdout)
    assert report["rows"] == N and report["format"].startswith("HATS catalogue, ")
    assert f"{len(partitions(tables / 'continuous_cat'))} partitions" in report["format"]
    assert "XP continuous (array columns" in report["layout"]
    mmu_partition(tmp_path / "mmu.parquet")
    r = ok(run("info", tmp_path / "mmu.parquet"))
    assert b"XP continuous (coeff/coeff_error, BP then RP" in r.stdout
