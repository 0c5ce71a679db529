"""The figures of `xptools fetch`'s acceptance checks, against the stand-in archive of the tests
(tests/archive_server.py) serving files built from the real DR3 data in ../shared/data.

    python benchmarks/bench_fetch_faults.py [--workdir DIR] [--seeds 5]

1. a 20-file bulk fetch whose requests fail with probability 30% (500, 503, body cut off
   halfway, stall past the timeout), in several runs, each compared with a fault-free run;
2. a bulk fetch killed (SIGKILL) in the middle of its eighth file and run again: the bytes
   served the second time, against what was left to download;
3. 12,000 ids through DataLink: the requests and their sizes, and the ids reported missing;
4. a damaged bulk file (MD5 mismatch): how often it was downloaded, the error, and the files
   kept in the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from archive_server import (ArchiveServer, Faults, bulk_sources,  # noqa: E402
                            full_schema_sources, kill_when_held, repeated, write_bulk_folder)

SHARED = os.environ.get("XPTOOLS_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
FAST = ["--backoff", "0.01", "--retries", "20"]


def xptools(*args, check=True):
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "xptools", *map(str, args)], capture_output=True)
    if check and r.returncode != 0:
        sys.exit(f"xptools {' '.join(map(str, args))} failed:\n{r.stderr.decode()}")
    return r, time.perf_counter() - start


def same(a_path: str, b_path: str) -> bool:
    from xptools.io import read_table

    a, b = read_table(a_path), read_table(b_path)
    return a.colnames == b.colnames and all(
        np.array_equal(a[c], b[c], equal_nan=a[c].dtype.kind == "f") for c in a.colnames)


def faults_bulk(work: str, folder: str, names: list[str], seeds: int) -> None:
    print(f"1. 20-file bulk fetch, each request failing with probability 30% ({seeds} runs "
          f"with different fault seeds), against a fault-free run")
    runs = [("clean", Faults())] + [(f"seed {seed}", Faults(rate=0.3, seed=seed, prefix="/bulk/",
                                                          stall=1.0))
                                    for seed in range(1, seeds + 1)]
    total = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    clean = os.path.join(work, "clean.fits")
    for label, faults in runs:
        with ArchiveServer(work, faults=faults) as server:
            url = server.add_bulk("xp", folder)
            out = clean if label == "clean" else os.path.join(work, "faulty.fits")
            _, seconds = xptools("fetch", "--bulk", url, "--healpix-range", "0-100", "-o", out,
                                 "--cache", os.path.join(work, f"cache-{label}"), "--overwrite",
                                 "--timeout", "0.5", *FAST)
            served = server.served("/bulk/")
        kinds = [s.fault for s in served if s.fault]
        counts = ", ".join(f"{k} x{kinds.count(k)}" for k in ("500", "503", "cut", "stall"))
        verdict = "" if label == "clean" else \
            f"; identical to the fault-free output: {'yes' if same(out, clean) else 'NO'}"
        print(f"   {label:7s}: {len(served)} requests, {len(kinds)} failed "
              f"({len(kinds) / len(served):.0%}: {counts}), "
              f"{sum(s.body_bytes for s in served):,} bytes served (files: {total:,}), "
              f"{seconds:.1f} s{verdict}")


def interrupted_bulk(work: str, folder: str, names: list[str]) -> None:
    print("2. bulk fetch killed in the middle of its 8th file, then run again")
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in names}
    cache, out = os.path.join(work, "cache-kill"), os.path.join(work, "resumed.fits")
    with ArchiveServer(work) as server:
        url = server.add_bulk("xp", folder)
        args = ["fetch", "--bulk", url, "--healpix-range", "0-100", "-o", out, "--cache", cache,
                "--timeout", "60"]
        held = sizes[names[7]] // 2
        server.hold(f"/bulk/xp/{names[7]}", held)
        part = lambda: os.path.join(cache, "bulk", os.listdir(os.path.join(cache, "bulk"))[0],
                                    names[7] + ".part")
        if not kill_when_held(server, args, lambda: os.path.exists(part())
                              and os.path.getsize(part()) == held):
            sys.exit("the 8th file was never asked for")
        run1 = [s for s in server.served("/bulk/") if s.path.endswith(".csv.gz")]
        xptools(*args)
        run2 = [s for s in server.served("/bulk/") if s.path.endswith(".csv.gz")][len(run1):]
    total = sum(sizes.values())
    left = total - sum(sizes[n] for n in names[:7]) - held
    print(f"   run 1 (killed): {len(run1)} file requests, {sum(s.body_bytes for s in run1):,} "
          f"bytes; the 8th file had {held:,} of {sizes[names[7]]:,} bytes on disk")
    print(f"   run 2: {len(run2)} file requests, first at Range bytes={run2[0].range_start}-; "
          f"{sum(s.body_bytes for s in run2):,} bytes served, {left:,} were left to download "
          f"(total {total:,})")
    repeated_files = {s.path for s in run2} & {s.path for s in run1[:-1]}
    print(f"   finished files downloaded again: {len(repeated_files)}; output identical to the "
          f"fault-free run: {'yes' if same(out, os.path.join(work, 'clean.fits')) else 'NO'}")


def datalink_12000(work: str) -> None:
    print("3. 12,000 ids through DataLink")
    known = repeated(full_schema_sources(SHARED), 11_990, 10 ** 15)
    unknown = 10 ** 15 + 50_000 + np.arange(10)
    ids = np.concatenate([known["source_id"], unknown])
    np.random.default_rng(1).shuffle(ids)
    id_file = os.path.join(work, "ids.txt")
    with open(id_file, "w") as f:
        f.write("\n".join(map(str, ids)) + "\n")
    missing = os.path.join(work, "missing.csv")
    with ArchiveServer(work, continuous=known) as server:
        r, seconds = xptools("fetch", "--ids", id_file, "--datalink-url", server.datalink_url,
                             "-o", os.path.join(work, "dl.fits"), "--missing", missing,
                             "--cache", os.path.join(work, "cache-dl"), *FAST)
        asked = [s.ids for s in server.served("/data-server/data")]
    from xptools.io import read_table

    report = read_table(missing)
    print(f"   DataLink requests: {len(asked)}, ids per request {asked}, {seconds:.1f} s")
    print(f"   ids the server did not return: {len(unknown)}; in --missing: {len(report)} "
          f"(same ids: {'yes' if sorted(report['source_id']) == sorted(unknown) else 'NO'})")
    for line in r.stderr.decode().splitlines():
        print(f"   stderr: {line}")


def damaged_file(work: str, folder: str, names: list[str]) -> None:
    print("4. a damaged bulk file (MD5 mismatch)")
    cache = os.path.join(work, "cache-md5")
    with ArchiveServer(work) as server:
        url = server.add_bulk("xp", folder)
        server.corrupt.add(names[2])
        r, _ = xptools("fetch", "--bulk", url, "--healpix-range", "0-14", "-o",
                       os.path.join(work, "md5.fits"), "--cache", cache, *FAST, check=False)
        tries = len(server.served(f"/bulk/xp/{names[2]}"))
        kept = os.path.join(cache, "bulk", os.listdir(os.path.join(cache, "bulk"))[0])
        good = [n for n in names[:2] if open(os.path.join(kept, n), "rb").read()
                == open(os.path.join(folder, n), "rb").read()]
        server.corrupt.clear()
        before = len(server.served("/bulk/"))
        xptools("fetch", "--bulk", url, "--healpix-range", "0-14", "-o",
                os.path.join(work, "md5.fits"), "--cache", cache, *FAST)
        again = sorted({s.path.rsplit("/", 1)[1] for s in server.served("/bulk/")[before:]})
    print(f"   downloads of the damaged file: {tries}; exit code {r.returncode}")
    print(f"   stderr: {r.stderr.decode().strip()}")
    print(f"   good files verified before the failure and still in the cache: {len(good)} of 2")
    print(f"   after the source was repaired, the rerun downloaded: {', '.join(again)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seeds", type=int, default=5, help="faulty runs (fault seeds 1..N)")
    args = parser.parse_args()
    if not os.path.isdir(SHARED):
        sys.exit(f"shared data not found at {SHARED}")
    work = args.workdir or tempfile.mkdtemp(prefix="bench-fetch-")
    os.makedirs(work, exist_ok=True)
    try:
        folder = os.path.join(work, "bulk")
        names = write_bulk_folder(bulk_sources(SHARED), folder, 20)
        faults_bulk(work, folder, names, args.seeds)
        interrupted_bulk(work, folder, names)
        datalink_12000(work)
        damaged_file(work, folder, names)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
