"""xptools fetch against a stand-in Gaia archive on 127.0.0.1 (tests/archive_server.py) that
answers in the archive's formats, built from the real DR3 data in ../shared/data, and injects
faults. Every test checks the content of what was written, not only the exit code."""

import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from archive_server import (ArchiveServer, Faults, bulk_sources, full_schema_sources,
                            kill_when_held, repeated, write_bulk_folder)
from conftest import run
from test_sample import FLUX_RTOL, ERROR_RTOL, max_relative, reference
from xptools.io import read_table, write_table

FAST = ("--backoff", "0.01", "--retries", "20")  # retries without long waits


def fetch(*args, cache, stdin=None):
    return run("fetch", *args, "--cache", cache, *FAST, stdin=stdin)


def ok(result):
    assert result.returncode == 0, result.stderr.decode()
    return result


def write_ids(path, ids):
    path.write_text("\n".join(str(int(i)) for i in ids) + "\n")
    return path


def assert_rows_equal(out, expected, rows, columns=None):
    """Rows ``rows`` of ``out`` hold exactly the values of ``expected`` (NaN equal to NaN)."""
    for name in columns or expected.colnames:
        np.testing.assert_array_equal(out[name][rows], expected[name], err_msg=name)


@pytest.fixture(scope="module")
def continuous(shared):
    """The 7 real sources with the archive's full XP_CONTINUOUS schema."""
    return full_schema_sources(shared)


@pytest.fixture(scope="module")
def bulk(shared, tmp_path_factory):
    """20 bulk files of the 2,000 real sources of xp_continuous_2000.fits, and the sources."""
    sources = bulk_sources(shared)
    folder = tmp_path_factory.mktemp("bulk")
    names = write_bulk_folder(sources, str(folder), 20)
    sources = sources.rows(np.argsort(sources["source_id"], kind="stable"))
    return folder, names, sources


# -- DataLink ---------------------------------------------------------------------------------

def test_12000_ids_are_3_datalink_batches_and_unanswered_ids_are_reported(tmp_path, continuous):
    known = repeated(continuous, 11_990, 10 ** 15)
    unknown = 10 ** 15 + 50_000 + np.arange(10)
    ids = np.concatenate([known["source_id"], unknown])
    np.random.default_rng(1).shuffle(ids)
    id_file = write_ids(tmp_path / "ids.txt", ids)
    out, missing = tmp_path / "out.fits", tmp_path / "missing.csv"
    with ArchiveServer(tmp_path, continuous=known) as server:
        r = ok(fetch("--ids", id_file, "--datalink-url", server.datalink_url, "-o", out,
                     "--missing", missing, cache=tmp_path / "cache"))
        asked = [s.ids for s in server.served("/data-server/data", "POST")]
    assert asked == [5000, 5000, 2000]
    t = read_table(str(out))
    np.testing.assert_array_equal(t["source_id"], ids)      # every id once, in request order
    position = {int(v): i for i, v in enumerate(ids)}
    rows = np.array([position[int(v)] for v in known["source_id"]])
    assert_rows_equal(t, known, rows)
    assert (t["fetch_flag"][rows] == 0).all()
    lost = np.array([position[int(v)] for v in unknown])
    assert (t["fetch_flag"][lost] == 1).all()
    assert np.isnan(t["bp_coefficients"][lost]).all()
    assert (t["bp_n_relevant_bases"][lost] == t.info["bp_n_relevant_bases"].null).all()
    report = read_table(str(missing))
    assert sorted(report["source_id"]) == sorted(unknown)
    assert set(report["missing"]) == {"XP_CONTINUOUS"}
    assert "10 of 12000 ids have no XP_CONTINUOUS" in r.stderr.decode()


def test_fetch_pipes_into_sample_and_matches_gaiaxpy(tmp_path, shared, continuous):
    ref = reference(shared, "calibrator_solution", "with_missing_calibrator_solution.csv")
    id_file = write_ids(tmp_path / "ids.txt", ref["source_id"])
    with ArchiveServer(tmp_path, continuous=continuous) as server:
        fetched = ok(fetch("--ids", id_file, "--datalink-url", server.datalink_url, "-o", "-",
                           cache=tmp_path / "cache"))
    sampled = ok(run("sample", "-", "-o", "-", stdin=fetched.stdout))
    (tmp_path / "s.fits").write_bytes(sampled.stdout)
    out = read_table(str(tmp_path / "s.fits"))
    np.testing.assert_array_equal(out["source_id"], ref["source_id"])
    assert max_relative(out["flux"], ref["flux"]) <= FLUX_RTOL
    assert max_relative(out["flux_error"], ref["flux_error"]) <= ERROR_RTOL
    assert list(out["sample_flag"]) == [0, 1, 0]       # the second source has no BP spectrum
    assert list(out["fetch_flag"]) == [0, 0, 0]


def test_interrupted_datalink_fetch_resumes_at_batch_level(tmp_path, continuous):
    known = repeated(continuous, 700, 10 ** 15)
    id_file = write_ids(tmp_path / "ids.txt", known["source_id"][::-1])
    out, cache = tmp_path / "out.fits", tmp_path / "cache"
    with ArchiveServer(tmp_path, continuous=known) as server:
        args = ["fetch", "--ids", id_file, "--datalink-url", server.datalink_url, "-o", out,
                "--batch-size", "200", "--cache", cache, "--timeout", "60"]
        server.hold("/data-server/data", nbytes=1000, after=2)     # the third request hangs
        assert kill_when_held(server, args), "the third DataLink request never came"
        assert not out.exists()
        before = server.served("/data-server/data")
        ok(run(*args))
        after = server.served("/data-server/data")[len(before):]
    assert [s.ids for s in before] == [200, 200, 200]
    assert [s.ids for s in after] == [200, 100]     # batches 1 and 2 were not asked again
    t = read_table(str(out))
    np.testing.assert_array_equal(t["source_id"], known["source_id"][::-1])
    assert_rows_equal(t, known.rows(slice(None, None, -1)), slice(None))


def test_rerun_asks_only_for_new_ids(tmp_path, continuous):
    """A daily job whose list grows: ids answered (or known to be missing) are not asked again."""
    known = repeated(continuous, 30, 10 ** 15)
    old = np.concatenate([known["source_id"][:20], [7]])        # 7: no spectrum
    new = known["source_id"][20:]
    cache = tmp_path / "cache"
    with ArchiveServer(tmp_path, continuous=known) as server:
        ok(fetch("--ids", write_ids(tmp_path / "a.txt", old), "--datalink-url",
                 server.datalink_url, "-o", tmp_path / "a.fits", cache=cache))
        ok(fetch("--ids", write_ids(tmp_path / "b.txt", np.concatenate([new, old])),
                 "--datalink-url", server.datalink_url, "-o", tmp_path / "b.fits", cache=cache))
        ok(fetch("--ids", tmp_path / "b.txt", "--datalink-url", server.datalink_url,
                 "-o", tmp_path / "c.fits", "--retry-missing", cache=cache))
        asked = [s.ids for s in server.served("/data-server/data")]
    assert asked == [21, 10, 1]        # first run, the 10 new ids, then id 7 once more
    a, b, c = (read_table(str(tmp_path / f"{x}.fits")) for x in "abc")
    assert_rows_equal(b, a, slice(10, None))
    assert_rows_equal(c, b, slice(None))
    assert list(b["fetch_flag"]).count(1) == 1


@pytest.mark.parametrize("quiet", [False, True])
def test_server_errors_give_up_with_a_clear_message(tmp_path, continuous, quiet):
    id_file = write_ids(tmp_path / "ids.txt", continuous["source_id"])
    faults = Faults(rate=1.0, kinds=("503",))
    with ArchiveServer(tmp_path, continuous=continuous, faults=faults) as server:
        r = run("fetch", "--ids", id_file, "--datalink-url", server.datalink_url, "-o",
                tmp_path / "out.fits", "--cache", tmp_path / "cache", "--retries", "2",
                "--backoff", "0", *(["--quiet"] if quiet else []))
        tries = len(server.served("/data-server/data"))
        url = server.datalink_url
    err = r.stderr.decode()
    retries = [] if quiet else [   # each retry, as it happens: what failed and the wait
        f"xptools: warning: {url}: HTTP 503 Service Unavailable; trying again in 0.00 s "
        f"(retry {n} of 2)" for n in (1, 2)]
    assert r.returncode == 1 and err.splitlines() == retries + [
        f"xptools fetch: error: {url}: HTTP 503 Service Unavailable (gave up after 2 retries)"], err
    assert tries == 3
    assert not (tmp_path / "out.fits").exists()


def test_each_retry_is_reported_with_its_wait(tmp_path, continuous):
    id_file = write_ids(tmp_path / "ids.txt", continuous["source_id"])
    faults = Faults(rate=0.5, kinds=("503",), seed=1)    # 503, 503, then an answer
    with ArchiveServer(tmp_path, continuous=continuous, faults=faults) as server:
        r = ok(run("fetch", "--ids", id_file, "--datalink-url", server.datalink_url, "-o",
                   tmp_path / "out.fits", "--cache", tmp_path / "cache", "--backoff", "0.2"))
        url = server.datalink_url
    lines = r.stderr.decode().splitlines()
    reported = [re.fullmatch(rf"xptools: warning: {re.escape(url)}: HTTP 503 Service "
                             rf"Unavailable; trying again in (\d\.\d\d) s \(retry (\d) of 8\)",
                             line) for line in lines[:2]]
    assert all(reported), lines
    waits = [float(m.group(1)) for m in reported]
    assert [m.group(2) for m in reported] == ["1", "2"]
    assert 0.1 <= waits[0] <= 0.2 and 0.2 <= waits[1] <= 0.4    # d/2 + uniform(0, d/2)
    assert "xptools fetch: 2 requests failed and were tried again" in lines
    assert len(read_table(str(tmp_path / "out.fits"))) == len(continuous)


def test_a_refused_connection_is_named_in_plain_words(tmp_path):
    with socket.socket() as s:     # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data-server/data"
    r = run("fetch", "--ids", write_ids(tmp_path / "ids.txt", [4295806720]), "--datalink-url",
            url, "-o", tmp_path / "out.fits", "--cache", tmp_path / "cache", "--retries", "1",
            "--backoff", "0")
    assert r.returncode == 1 and r.stderr.decode().splitlines() == [
        f"xptools: warning: {url}: connection refused by 127.0.0.1:{port}; trying again in "
        f"0.00 s (retry 1 of 1)",
        f"xptools fetch: error: {url}: connection refused by 127.0.0.1:{port} (gave up after "
        f"1 retry)"], r.stderr.decode()


# A machine without network, in the xptools process: every host name but 127.0.0.1 fails to
# resolve (as glibc says when no name server can be reached), so no query leaves the process;
# each name looked up is appended to the file given as the first argument.
OFFLINE = """
import runpy, socket, sys
real, log = socket.getaddrinfo, open(sys.argv.pop(1), "a")
def getaddrinfo(host, *args, **kwargs):
    log.write(f"{host}\\n")
    log.flush()
    if host in ("127.0.0.1", "localhost"):
        return real(host, *args, **kwargs)
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
socket.getaddrinfo = getaddrinfo
runpy.run_module("xptools", run_name="__main__", alter_sys=True)
"""
CDN = "https://cdn.gea.esac.esa.int/Gaia/gdr3/Spectroscopy/xp_continuous_mean_spectrum/"
MIRROR = "archive-mirror.invalid"   # RFC 6761: never resolves


@pytest.mark.parametrize("args, host, message", [
    ((), "gea.esac.esa.int", "no network: cannot resolve gea.esac.esa.int (check the "
     "connection, or give --datalink-url/--tap-url for a mirror)"),
    (("--query", "SELECT source_id FROM gaiadr3.gaia_source"), "gea.esac.esa.int",
     "no network: cannot resolve gea.esac.esa.int (check the connection, or give "
     "--datalink-url/--tap-url for a mirror)"),
    (("--bulk", CDN, "--healpix-range", "0-1"), "cdn.gea.esac.esa.int",
     "no network: cannot resolve cdn.gea.esac.esa.int (check the connection, or give --bulk a "
     "mirror or a local folder)"),
    (("--datalink-url", f"http://{MIRROR}/data-server/data"), MIRROR,
     f"cannot resolve {MIRROR} (in http://{MIRROR}/data-server/data): a wrong host name, or no "
     f"network"),
    (("--query", "SELECT source_id FROM t", "--tap-url", f"http://{MIRROR}/tap"), MIRROR,
     f"cannot resolve {MIRROR} (in http://{MIRROR}/tap/async): a wrong host name, or no "
     f"network"),
], ids=["datalink", "tap", "bulk", "datalink-mirror", "tap-mirror"])
def test_a_host_name_that_does_not_resolve_fails_at_once(tmp_path, args, host, message):
    """Issue 23: offline, fetch waited 148 s in silence through 8 retries, then printed a line
    cut mid-word ('(Caused by Name)'). A name that does not resolve is not retried."""
    if "--query" not in args and "--bulk" not in args:
        args += ("--ids", write_ids(tmp_path / "ids.txt", [4295806720]))
    lookups = tmp_path / "lookups.txt"
    env = {k: v for k, v in os.environ.items()
           if k not in ("XPTOOLS_DATALINK_URL", "XPTOOLS_TAP_URL") and "proxy" not in k.lower()}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", OFFLINE, str(lookups), "fetch", *map(str, args),
                        "-o", str(tmp_path / "out.fits"), "--cache", str(tmp_path / "cache"),
                        "--retries", "3", "--backoff", "4"],   # retried: at least 14 s of waits
                       capture_output=True, env=env, timeout=300)
    elapsed = time.monotonic() - start
    assert r.returncode == 1, r.stderr.decode()
    assert r.stderr.decode() == f"xptools fetch: error: {message}\n"   # one whole line
    assert lookups.read_text().split() == [host]                       # asked once
    assert elapsed < 10
    assert not (tmp_path / "out.fits").exists()


def test_a_host_that_answered_and_stops_resolving_is_retried(tmp_path, monkeypatch):
    """A name that resolved earlier in the run is a blip (a Wi-Fi reconnect), not an outage."""
    from xptools.fetch.http import Http, RetryPolicy, Unresolvable

    failing = [0]
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if failing[0]:
            failing[0] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    (tmp_path / "xp").mkdir()
    (tmp_path / "xp" / "_MD5SUM.txt").write_text("d41d8cd98f00b204e9800998ecf8427e  a.csv.gz\n")
    with ArchiveServer(tmp_path) as server:
        url = server.add_bulk("xp", tmp_path / "xp") + "_MD5SUM.txt"
        notes = []
        http = Http(RetryPolicy(retries=3, backoff=0), notes.append)
        failing[0] = 1
        with pytest.raises(Unresolvable, match=r"^cannot resolve 127\.0\.0\.1 \(in "):
            http.get_bytes(url)                      # never answered: not retried
        assert notes == [] and not server.served()
        listing = http.get_bytes(url)
        failing[0] = 2
        assert http.get_bytes(url) == listing
    assert notes == [f"{url}: cannot resolve host 127.0.0.1; trying again in 0.00 s "
                     f"(retry {n} of 3)" for n in (1, 2)]


def test_long_messages_are_shortened_to_whole_words():
    from xptools.fetch.http import clip

    text = "HTTPSConnectionPool(host='gea.esac.esa.int', port=443): Max retries exceeded " \
           "with url: /data-server/data (Caused by NameResolutionError(...))"
    assert clip(text, 200) == text
    assert clip(text, 120) == ("HTTPSConnectionPool(host='gea.esac.esa.int', port=443): Max "
                               "retries exceeded with url: /data-server/data (Caused by ...")
    assert clip("a\n  b ", 10) == "a b"


# -- bulk files ---------------------------------------------------------------------------------

def test_20_bulk_files_with_30_percent_faults_equal_a_fault_free_run(tmp_path, bulk):
    folder, names, sources = bulk
    faults = Faults(rate=0.3, seed=3, prefix="/bulk/", stall=1.0)
    outputs = {}
    for label, f in (("faulty", faults), ("clean", Faults())):
        with ArchiveServer(tmp_path, faults=f) as server:
            url = server.add_bulk("xp", folder)
            ok(fetch("--bulk", url, "--healpix-range", "0-100", "-o", tmp_path / f"{label}.fits",
                     "--timeout", "0.5", cache=tmp_path / f"cache-{label}"))
            served = server.served("/bulk/")
        files = {s.path.rsplit("/", 1)[1] for s in served}
        assert files == set(names) | {"_MD5SUM.txt"}
        if label == "faulty":
            kinds = [s.fault for s in served if s.fault]
            assert len(kinds) >= 0.2 * len(served) and {"500", "503", "cut", "stall"} <= set(kinds)
        outputs[label] = read_table(str(tmp_path / f"{label}.fits"))
    faulty, clean = outputs["faulty"], outputs["clean"]
    assert faulty.colnames == clean.colnames
    assert_rows_equal(faulty, clean, slice(None))
    assert_rows_equal(clean, sources, slice(None))
    assert (clean["fetch_flag"] == 0).all()


def test_bulk_ids_read_only_the_files_they_need(tmp_path, bulk):
    folder, names, sources = bulk
    pixels = [0, 30, 31, 74]
    pick = np.flatnonzero(np.isin(sources["source_id"] >> 43, pixels))
    rng = np.random.default_rng(2)
    ids = np.concatenate([sources["source_id"][rng.permutation(pick)], [2 ** 43 * 500]])
    with ArchiveServer(tmp_path) as server:
        url = server.add_bulk("xp", folder)
        ok(fetch("--bulk", url, "--ids", write_ids(tmp_path / "ids.txt", ids), "-o",
                 tmp_path / "out.fits", "--missing", tmp_path / "missing.csv",
                 cache=tmp_path / "cache"))
        files = sorted({s.path.rsplit("/", 1)[1] for s in server.served("/bulk/")})
    covering = [n for n in names if any(int(n[25:31]) <= p <= int(n[32:38]) for p in pixels)]
    assert files == sorted(covering + ["_MD5SUM.txt"])
    t = read_table(str(tmp_path / "out.fits"))
    np.testing.assert_array_equal(t["source_id"], ids)
    order = np.searchsorted(sources["source_id"], ids[:-1])
    assert_rows_equal(t, sources.rows(order), slice(0, -1))
    assert list(read_table(str(tmp_path / "missing.csv"))["source_id"]) == [2 ** 43 * 500]


def test_interrupted_bulk_fetch_does_not_download_finished_work_again(tmp_path, bulk):
    folder, names, sources = bulk
    sizes = {n: os.path.getsize(folder / n) for n in names}
    out, cache = tmp_path / "out.fits", tmp_path / "cache"
    with ArchiveServer(tmp_path) as server:
        url = server.add_bulk("xp", folder)
        args = ["fetch", "--bulk", url, "--healpix-range", "0-100", "-o", out, "--cache", cache,
                "--timeout", "60"]
        held = sizes[names[7]] // 2
        server.hold(f"/bulk/xp/{names[7]}", held)
        part = lambda: next((cache / "bulk").iterdir()) / f"{names[7]}.part"
        assert kill_when_held(server, args, lambda: part().exists()
                              and part().stat().st_size == held), "the 8th file never came"
        before = len(server.served("/bulk/"))
        ok(run(*args))
        again = [s for s in server.served("/bulk/")[before:] if s.path.endswith(".csv.gz")]
    asked = [s.path.rsplit("/", 1)[1] for s in again]
    assert asked == names[7:]                       # files 1-7 were not downloaded again
    assert again[0].range_start == held            # the eighth resumed where it stopped
    served = sum(s.body_bytes for s in again)
    assert served == sum(sizes.values()) - sum(sizes[n] for n in names[:7]) - held
    t = read_table(str(out))
    assert_rows_equal(t, sources, slice(None))


def test_damaged_file_is_downloaded_twice_then_named_and_good_files_stay(tmp_path, bulk):
    folder, names, sources = bulk
    cache = tmp_path / "cache"
    args = ["--healpix-range", "0-14", "-o", tmp_path / "out.fits"]
    with ArchiveServer(tmp_path) as server:
        url = server.add_bulk("xp", folder)
        server.corrupt.add(names[2])
        r = fetch("--bulk", url, *args, cache=cache)
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, err
        assert names[2] in err and "MD5" in err
        damaged = [s for s in server.served(f"/bulk/xp/{names[2]}")]
        assert len(damaged) == 2 and all(s.range_start is None for s in damaged)
        assert not (tmp_path / "out.fits").exists()
        kept = next((cache / "bulk").iterdir())
        for n in names[:2]:                         # verified before the failure, still there
            assert (kept / n).read_bytes() == (folder / n).read_bytes()
        assert not (kept / names[2]).exists() and not (kept / f"{names[2]}.part").exists()
        server.corrupt.clear()
        before = len(server.served("/bulk/"))
        ok(fetch("--bulk", url, *args, cache=cache))
        again = {s.path.rsplit("/", 1)[1] for s in server.served("/bulk/")[before:]}
    assert not again & set(names[:2])
    t = read_table(str(tmp_path / "out.fits"))
    expected = sources.rows(np.flatnonzero((sources["source_id"] >> 43) <= 14))
    assert_rows_equal(t, expected, slice(None))


def test_download_restarts_when_the_server_ignores_range(tmp_path, bulk):
    folder, names, sources = bulk
    cache = tmp_path / "cache"
    with ArchiveServer(tmp_path) as server:
        server.ranges = False
        url = server.add_bulk("xp", folder)
        place = cache / "bulk"
        ok(fetch("--bulk", url, "--healpix-range", "0-0", "-o", tmp_path / "a.fits", cache=cache))
        stored = next(place.iterdir())
        (stored / names[0]).unlink()
        (stored / f"{names[0]}.part").write_bytes(b"junk that is not the start of the file")
        ok(fetch("--bulk", url, "--healpix-range", "0-0", "-o", tmp_path / "b.fits", cache=cache))
        last = server.served(f"/bulk/xp/{names[0]}")[-1]
    assert last.status == 200 and last.body_bytes == os.path.getsize(folder / names[0])
    assert_rows_equal(read_table(str(tmp_path / "b.fits")), read_table(str(tmp_path / "a.fits")),
                      slice(None))


def test_local_bulk_folder_is_read_in_place(tmp_path, bulk):
    folder, names, sources = bulk
    r = ok(fetch("--bulk", folder, "--healpix-range", "70-74", "-o", "-", "--format", "ecsv",
                 cache=tmp_path / "cache"))
    (tmp_path / "out.ecsv").write_bytes(r.stdout)
    t = read_table(str(tmp_path / "out.ecsv"))
    expected = sources.rows(np.flatnonzero((sources["source_id"] >> 43) >= 70))
    assert_rows_equal(t, expected, slice(None))
    assert not (tmp_path / "cache" / "bulk").exists()   # nothing copied


# -- TAP: --query and --columns ------------------------------------------------------------------

def test_query_sampled_and_gaia_columns(tmp_path, shared):
    from astropy.table import Table as AstropyTable

    library = read_table(os.path.join(shared, "apogee_xp", "xp_sampled.fits"))
    sampled = library.select(["source_id", "flux", "flux_error"]).rows(slice(0, 40))
    photometry = library.select(["source_id", "phot_g_mean_mag", "phot_rp_mean_mag"]).rows(
        slice(5, 60))
    ids = library["source_id"][:50][::-1]                        # 0-4: no photometry, 40-49: no
    query = "SELECT source_id, teff FROM user_table ORDER BY teff"  # spectrum
    with ArchiveServer(tmp_path, sampled=sampled, gaia_source=photometry,
                       faults=Faults(rate=0.3, kinds=("500", "503"), prefix="/tap-server/")) as server:
        server.queries[query] = AstropyTable({"source_id": ids, "teff": np.arange(50.0)})
        r = ok(fetch("--query", query, "--sampled", "--columns", "phot_g_mean_mag,phot_rp_mean_mag",
                     "--datalink-url", server.datalink_url, "--tap-url", server.tap_url,
                     "-o", tmp_path / "out.fits", "--missing", tmp_path / "missing.csv",
                     cache=tmp_path / "cache"))
    t = read_table(str(tmp_path / "out.fits"))
    assert t.colnames == ["source_id", "teff", "flux", "flux_error", "phot_g_mean_mag",
                          "phot_rp_mean_mag", "fetch_flag"]
    np.testing.assert_array_equal(t["source_id"], ids)
    np.testing.assert_array_equal(t["teff"], np.arange(50.0))
    have = np.arange(10, 50)                       # rows of ids 0..39 (reversed order)
    assert_rows_equal(t, sampled.rows(slice(39, None, -1)), have, ["flux", "flux_error"])
    assert np.isnan(t["flux"][:10]).all()
    rows = np.arange(0, 45)                         # ids 5..49
    assert_rows_equal(t, photometry.rows(slice(44, None, -1)), rows, ["phot_g_mean_mag"])
    assert np.isnan(t["phot_g_mean_mag"][45:]).all()
    expected_flags = np.zeros(50, int)
    expected_flags[:10] |= 1
    expected_flags[45:] |= 2
    np.testing.assert_array_equal(t["fetch_flag"], expected_flags)
    assert t.meta["WAVEMIN"] == 336.0 and t.meta["WAVEMAX"] == 1020.0
    report = read_table(str(tmp_path / "missing.csv"))
    assert len(report) == 15
    err = r.stderr.decode()
    assert "10 of 50 ids have no XP_SAMPLED" in err and "5 of 50 ids have no gaia_source" in err
    assert re.search(rf"xptools: warning: {re.escape(server.tap_url)}\S*: HTTP 50[03] .*; "
                     r"trying again in \d+\.\d+ s \(retry 1 of 20\)", err), err  # pyvo's too


def test_unknown_gaia_column_is_a_clear_error(tmp_path, continuous):
    from xptools.io import Table

    id_file = write_ids(tmp_path / "ids.txt", continuous["source_id"][:2])
    gaia = Table({"source_id": continuous["source_id"], "ra": np.zeros(len(continuous))})
    with ArchiveServer(tmp_path, continuous=continuous, gaia_source=gaia) as server:
        r = fetch("--ids", id_file, "--columns", "ra,no_such_column", "--datalink-url",
                  server.datalink_url, "--tap-url", server.tap_url, "-o", tmp_path / "out.fits",
                  cache=tmp_path / "cache")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert "no_such_column" in err and "query failed" in err


# -- the ids asked for ----------------------------------------------------------------------------

def test_ids_from_a_table_pass_its_columns_through(tmp_path, continuous):
    from xptools.io import Table

    stars = Table({"gaia_id": np.array(continuous["source_id"][[3, 1, 3, 0]]),
                   "label": np.array(["c", "b", "c again", "a"])})
    write_table(stars, str(tmp_path / "stars.fits"))
    with ArchiveServer(tmp_path, continuous=continuous) as server:
        r = ok(fetch("--ids", tmp_path / "stars.fits", "--id-column", "gaia_id",
                     "--datalink-url", server.datalink_url, "-o", tmp_path / "out.fits",
                     cache=tmp_path / "cache"))
    t = read_table(str(tmp_path / "out.fits"))
    assert t.colnames[:3] == ["gaia_id", "label", "source_id"]
    assert list(t["label"]) == ["c", "b", "a"]
    np.testing.assert_array_equal(t["source_id"], t["gaia_id"])
    assert "1 ids appear more than once" in r.stderr.decode()
    assert "row 0 and row 2" in r.stderr.decode()


@pytest.mark.parametrize("text, fragment", [
    ("source_id\n123\n12x4\n", "line 3: '12x4' is not a Gaia source_id"),
    ("123\n-5\n", "line 2: -5 is not a Gaia source_id"),
    ("ra\n123\n", "line 1: 'ra' is not a Gaia source_id"),
    ("# nothing\n", "no source_ids"),
])
def test_malformed_id_lists_are_one_line_errors(tmp_path, text, fragment):
    (tmp_path / "ids.txt").write_text(text)
    r = run("fetch", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "out.fits", "--cache",
            tmp_path / "cache", "--datalink-url", "http://127.0.0.1:9/unused")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert str(tmp_path / "ids.txt") in err and fragment in err
    assert not (tmp_path / "out.fits").exists()


def test_repeated_ids_are_fetched_and_written_once(tmp_path, continuous):
    a, b = continuous["source_id"][:2]
    id_file = tmp_path / "ids.txt"
    id_file.write_text(f"# my stars\ngaia_id\n{a}\n{b}\n\n{a}\n")
    with ArchiveServer(tmp_path, continuous=continuous) as server:
        r = ok(fetch("--ids", "-", "--id-column", "gaia_id", "--datalink-url",
                     server.datalink_url, "-o", tmp_path / "out.fits", cache=tmp_path / "cache",
                     stdin=id_file.read_bytes()))
        asked = [s.ids for s in server.served("/data-server/data")]
    assert asked == [2]
    t = read_table(str(tmp_path / "out.fits"))
    assert t.colnames[:2] == ["source_id", "solution_id"]
    assert list(t["source_id"]) == [a, b]
    assert f"e.g. {a} at line 3 and line 6" in r.stderr.decode()


@pytest.mark.parametrize("args, fragment", [
    ((), "give the stars with one of --ids"),
    (("--healpix-range", "1-2"), "give --bulk"),
    (("--bulk", ".", "--healpix-range", "9-2"), "need 0 <= A <= B"),
    (("--ids", "x", "--columns", "a;b"), "'a;b' is not a name"),
])
def test_option_errors(tmp_path, args, fragment):
    r = run("fetch", *args, "-o", tmp_path / "out.fits", "--cache", tmp_path / "cache")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and fragment in err, err


def test_cron_example_fetches_only_new_stars(tmp_path, continuous):
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "cron_fetch.sh")
    ids = tmp_path / "targets.txt"
    write_ids(ids, continuous["source_id"][:4])
    out = tmp_path / "xp"
    with ArchiveServer(tmp_path, continuous=continuous) as server:
        env = dict(os.environ, XPTOOLS_DATALINK_URL=server.datalink_url,
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        for extra in ([], [], [12345]):
            if extra:
                write_ids(ids, list(continuous["source_id"][:6]) + extra)
            r = subprocess.run(["bash", script, str(ids), str(out)], env=env,
                               capture_output=True, timeout=300)
            assert r.returncode == 0 and not r.stderr, r.stderr.decode()
        asked = [s.ids for s in server.served("/data-server/data")]
    assert asked == [4, 3]        # the second night had nothing new; the third 2 stars + 12345
    fetched = read_table(str(out / "xp_continuous.fits"))
    sampled = read_table(str(out / "xp_sampled.fits"))
    np.testing.assert_array_equal(fetched["source_id"], list(continuous["source_id"][:6]) + [12345])
    assert_rows_equal(fetched, continuous.rows(slice(0, 6)), slice(0, 6))
    np.testing.assert_array_equal(sampled["source_id"], fetched["source_id"])
    assert list(read_table(str(out / "missing.csv"))["source_id"]) == [12345]
