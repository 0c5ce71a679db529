"""Signals, pipes and output files: what cron jobs, shell pipelines and shared disks rely on
(issue 23, items 1, 2, 5 and 6)."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SHARED, run, synthetic_continuous, synthetic_sampled
from xptools.errors import UserError
from xptools.io import TableWriter, atomic, concat, write_table
from xptools.io.pipeline import BehindWriter, ReadAhead

XPTOOLS = [sys.executable, "-m", "xptools"]


# -- the read-ahead and write-behind threads stop when asked -----------------------------------

def test_read_ahead_stops_while_its_queue_is_full():
    def endless():
        while True:
            yield np.zeros(10)

    items = iter(ReadAhead(endless()))
    next(items)
    time.sleep(0.2)  # the thread has filled the queue and waits to put the next item
    start = time.monotonic()
    items.close()    # what an exception in the consumer does (it used to wait forever)
    assert time.monotonic() - start < 2.0


def test_read_ahead_hands_errors_to_the_consumer():
    def broken():
        yield 1
        raise ValueError("bad chunk")

    with pytest.raises(ValueError, match="bad chunk"):
        list(ReadAhead(broken()))


def test_behind_writer_cancel_drops_queued_writes():
    written = []

    def slow(item):
        time.sleep(0.3)
        written.append(item)

    writer = BehindWriter(slow)
    for i in range(2):
        writer.write(i)
    start = time.monotonic()
    writer.cancel()  # waits for the write in flight (0.3 s), drops the queued one
    assert time.monotonic() - start < 1.5 and written == [0]


# -- signals: stop quickly, say so, exit 128 + N, leave nothing ---------------------------------

@pytest.fixture(scope="module")
def slow_input(tmp_path_factory):
    """A sampled table that takes `infer` several seconds: the real APOGEE file, else a
    synthetic one."""
    real = os.path.join(SHARED, "apogee_xp", "xp_sampled.fits")
    if os.path.exists(real):
        return real
    path = str(tmp_path_factory.mktemp("slow") / "big.fits")
    write_table(concat([synthetic_sampled(2000, seed=s) for s in range(10)]), path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_infer_within_two_seconds_and_leaves_no_file(tmp_path, slow_input,
                                                                    signum):
    out = tmp_path / "labels.fits"
    proc = subprocess.Popen([*XPTOOLS, "infer", slow_input, "-o", str(out),
                             "--chunk-rows", "2000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(n.endswith(".part") and os.path.getsize(tmp_path / n) > 0
                  for n in os.listdir(tmp_path)):  # wait until it is writing
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    start = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 2.0
    assert proc.returncode == 128 + signum
    assert err.decode().strip().splitlines()[-1] == \
        "xptools infer: error: interrupted; no output written"
    assert os.listdir(tmp_path) == []


def test_a_signal_while_reading_stdin_leaves_no_spool(tmp_path):
    spools = lambda: {n for n in os.listdir(tmp_path) if n.startswith("xptools-")}
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([*XPTOOLS, "sample", "-", "-o", str(tmp_path / "out.fits")],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(b"SIMPLE  =" + b" " * 1000)  # a FITS file that never ends
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not spools():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143 and b"interrupted; no output written" in err
    assert os.listdir(tmp_path) == []


# -- a reader that stops early is not an error -------------------------------------------------

@pytest.mark.parametrize("command", [["info"], ["sample"]])
def test_a_reader_that_stops_early_is_not_an_error(tmp_path, command):
    path = tmp_path / "in.fits"
    write_table(concat([synthetic_continuous(200, seed=s) for s in range(5)]), str(path))
    # what 'xptools info FILE | head -c 10' does: read a little, then close the pipe
    proc = subprocess.Popen([*XPTOOLS, *command, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == b""


# -- output files -----------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["fits", "h5", "csv", "ecsv", "vot", "fits.gz"])
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(tmp_path, ext, umask):
    src = tmp_path / "in.fits"
    write_table(synthetic_continuous(), str(src))
    out = tmp_path / f"out.{ext}"
    result = subprocess.run([*XPTOOLS, "sample", str(src), "-o", str(out), "-q"],
                            capture_output=True, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask


def test_model_directories_follow_the_umask(tmp_path):
    from xptools import models

    out = tmp_path / "model"
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"model": "svae", "hyperparameters": {"widths": [8], "epochs": 1}}')
    data = tmp_path / "train.fits"
    write_table(synthetic_sampled(100), str(data))
    result = subprocess.run([*XPTOOLS, "train", str(data), "--recipe", str(recipe), "-o",
                             str(out), "-q"], capture_output=True,
                            preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert {os.stat(out / n).st_mode & 0o777 for n in os.listdir(out)} == {0o644}
    assert models.load(str(out)).kind == "svae"


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_temporary_files_of_killed_runs_are_removed(tmp_path):
    src = tmp_path / "in.fits"
    write_table(synthetic_continuous(), str(src))
    stale = f".out.fits.{atomic.HOST}-{_dead_pid()}.abcd1234.part"
    running = f".out.fits.{atomic.HOST}-{os.getpid()}.abcd1234.part"   # a live process
    elsewhere = f".out.fits.otherhost-{_dead_pid()}.abcd1234.part"   # can't tell: kept
    for name in (stale, running, elsewhere):
        (tmp_path / name).write_bytes(b"partial")
    result = run("sample", src, "-o", tmp_path / "out.fits", "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["in.fits", "out.fits", running, elsewhere])


class _FullDisk:
    """A table backend whose second write finds the disk full."""

    def __init__(self, path):
        self.path, self.calls = path, 0

    def write(self, table):
        self.calls += 1
        with open(self.path, "ab") as f:
            f.write(b"x" * 100)
        if self.calls > 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        pass


@pytest.mark.parametrize("behind", [False, True])
def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, behind):
    import xptools.io as io

    monkeypatch.setattr(io, "_writer", lambda fmt, path: _FullDisk(path))
    table = synthetic_continuous()
    with pytest.raises(UserError) as e:
        with TableWriter(str(tmp_path / "out.fits"), write_behind=behind) as out:
            for _ in range(3):
                out.write(table)
    assert "no space left on the disk holding" in str(e.value)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def _small_disk(tmp_path, script):
    """Run ``script`` (bash) with a 3 MB tmpfs mounted at tmp_path/disk, or skip."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a small disk")
    result = subprocess.run(["unshare", "-m", "bash", "-c",
                             f"mount -t tmpfs -o size=3m none {disk} || exit 99; {script}"],
                            capture_output=True)
    if result.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    return disk, result


@pytest.mark.parametrize("ext", ["fits", "h5", "csv"])
def test_a_real_full_disk(tmp_path, ext):
    src = tmp_path / "in.fits"
    write_table(concat([synthetic_continuous(500, seed=s) for s in range(4)]), str(src))
    out = tmp_path / "disk" / f"out.{ext}"
    cmd = " ".join([*XPTOOLS, "sample", str(src), "-o", str(out), "-q"])
    disk, result = _small_disk(tmp_path, f"{cmd}; echo rc=$?; ls -A {tmp_path / 'disk'}")
    lines = result.stdout.decode().split()
    assert lines[0] == "rc=1" and lines[1:] == [], result.stdout  # nothing left on the disk
    err = result.stderr.decode().strip()
    assert err.count("\n") == 0 and "no space left on the disk holding" in err, err
    assert "internal error" not in err


# -- a pipe given as a file name (bash's <(command), a FIFO) is read once ------------------------

def _fifo_with(tmp_path, data: bytes, name="pipe"):
    import threading

    path = str(tmp_path / name)
    os.mkfifo(path)

    def feed():
        with open(path, "wb") as f:
            f.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return path


def test_a_table_from_a_pipe(tmp_path):
    src = tmp_path / "in.fits"
    write_table(synthetic_continuous(), str(src))
    result = run("info", _fifo_with(tmp_path, src.read_bytes()))
    assert result.returncode == 0, result.stderr
    assert b"rows:     5" in result.stdout and b"(FITS)" in result.stdout


@pytest.mark.parametrize("data", [b"source_id\n4295806720\n12345\n", "table"])
def test_fetch_ids_from_a_pipe(tmp_path, data):
    from xptools.fetch.ids import read_ids
    from xptools.io import Table

    if data == "table":
        table = Table()
        table.add_column("source_id", np.array([4295806720, 12345], np.int64))
        write_table(table, str(tmp_path / "ids.fits"))
        data = (tmp_path / "ids.fits").read_bytes()
    request = read_ids(_fifo_with(tmp_path, data))
    assert list(request.ids) == [4295806720, 12345]
    assert sorted(os.listdir(tmp_path)) in (["pipe"], ["ids.fits", "pipe"])
