"""Files that appear whole or not at all: the one mechanism behind every xptools output (tables,
model directories, caches).

- A file is written under a hidden temporary name beside its target,
  ``.NAME.HOST-PID.XXXXXXXX.part``, and renamed into place when complete.
- It gets the mode an ordinary new file would get (0666 less the umask), so collaborators on a
  shared disk can read outputs, as they could read a file made by ``cp``.
- The process remembers its temporary paths, so an interrupt can remove them even when it
  cannot unwind normally (`remove_temporaries`).
- A process killed outright (SIGKILL, a power cut) cannot clean up: the next run writing to the
  same target removes the temporary files that dead processes of this host left for it
  (`remove_stale`). Files of other hosts, or of running processes, are left alone.
- A write that fails for want of space becomes one line naming the disk (`no_space`).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile

HOST = socket.gethostname().split(".")[0].replace("-", "_") or "host"
LOW_SPACE = 16 << 20  # bytes: a failed write with less than this free is taken as a full disk

_temporaries: set[str] = set()


def new_file_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open(path, "w")`` would create."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _prefix(path: str) -> str:
    return f".{os.path.basename(os.path.abspath(path))}."


def temporary_beside(path: str, suffix: str = ".part", folder: bool = False) -> str:
    """A new temporary file (or folder) beside ``path`` for it to be renamed to ``path``
    later; stale ones of dead processes are removed first."""
    parent = os.path.dirname(os.path.abspath(path))
    remove_stale(path, suffix)
    prefix = f"{_prefix(path)}{HOST}-{os.getpid()}."
    if folder:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
        os.chmod(tmp, new_file_mode(0o777))
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.fchmod(fd, new_file_mode())
        os.close(fd)
    _temporaries.add(tmp)
    return tmp


def temporary_file(prefix: str) -> str:
    """A new temporary file in the system's temporary folder (stdin spools, stdout buffers)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix)
    os.close(fd)
    return track(tmp)


def track(tmp: str) -> str:
    """Remember ``tmp`` as ours, to be removed on an interrupt unless `done_with`."""
    _temporaries.add(tmp)
    return tmp


def done_with(tmp: str) -> None:
    """``tmp`` was renamed into place or removed: no longer ours to clean up."""
    _temporaries.discard(tmp)


def discard(tmp: str | None) -> None:
    """Remove a temporary file or folder of ours, if it is still there."""
    if tmp:
        _remove(tmp)
        done_with(tmp)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except OSError:
            pass


def remove_temporaries() -> None:
    """Remove every temporary file and folder this process still has (on an interrupt)."""
    for tmp in list(_temporaries):
        discard(tmp)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(path: str, suffix: str = ".part") -> list[str]:
    """Remove the temporary files for ``path`` that processes of this host left when they were
    killed; returns their names."""
    parent = os.path.dirname(os.path.abspath(path))
    mine = f"{_prefix(path)}{HOST}-"
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(mine) and name.endswith(suffix)):
            continue
        pid = name[len(mine):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            _remove(os.path.join(parent, name))
            removed.append(name)
    return removed


def no_space(error: BaseException, path: str) -> str | None:
    """The one-line message for a write to ``path`` that failed because its disk is full (or
    the user's quota is spent), else None. Libraries that write through C (fitsio, HDF5) lose
    the errno, so a failed write on a disk with almost no space left counts as well."""
    if not isinstance(error, OSError):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if error.errno not in (errno.ENOSPC, errno.EDQUOT) and (free is None or free >= LOW_SPACE):
        return None
    what = "quota exceeded" if error.errno == errno.EDQUOT else "no space left"
    left = f", {free / 1e6:.1f} MB free" if free is not None else ""
    return f"{what} on the disk holding {folder}{left}; nothing was written"


def write_file(path: str, data: str | bytes, overwrite: bool) -> None:
    """A file written atomically ('-': stdout)."""
    from xptools.errors import UserError

    if path == "-":
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data)
        return
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path} exists; use --overwrite to replace it")
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
        done_with(tmp)
    except BaseException as e:
        discard(tmp)
        message = no_space(e, path) if isinstance(e, OSError) else None
        if message:
            raise UserError(f"{path}: {message}") from e
        raise


def check_folder(folder: str, names, overwrite: bool, option: str) -> None:
    """Refuse, before any work, a folder of outputs (``option``, e.g. --plots) that cannot be
    made, or whose files ``names`` exist without --overwrite."""
    from xptools.errors import UserError

    if os.path.isfile(folder):
        raise UserError(f"{folder}: is a file; {option} names a folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(folder) and not os.path.isdir(parent):
        raise UserError(f"{folder}: folder {parent} does not exist ({option})")
    if not overwrite:
        for name in names:
            if os.path.exists(os.path.join(folder, name)):
                raise UserError(f"{os.path.join(folder, name)} exists; use --overwrite to "
                                f"replace it")
