"""XP spectra from the Gaia DR3 bulk files: a folder of gzip-compressed ECSV files, one per
range of level-8 HEALPix pixels, with their MD5 checksums.

    https://cdn.gea.esac.esa.int/Gaia/gdr3/Spectroscopy/xp_continuous_mean_spectrum/
        XpContinuousMeanSpectrum_000000-003111.csv.gz   pixels 0 to 3111, both included
        ...
        _MD5SUM.txt                                     "<md5>  <file name>" per line

(xp_sampled_mean_spectrum/ holds XpSampledMeanSpectrum_*.csv.gz in the same way.) Despite the
.csv name each file is ECSV: a '# %ECSV' YAML header with the column types, then CSV rows, array
cells as quoted strings "[a,b,...]" and missing values as 'null' (Gaia DR3 documentation,
chapter 18; the cdn folder's README). The level-8 pixel of a source is source_id >> 43
(`xptools.fetch.ids`), so a list of ids or a pixel range names the files to read.

A remote folder is read through its _MD5SUM.txt (the file list and the checksums); each file
needed is downloaded into the cache (resuming a partial download), its MD5 compared with the
listed one, and a mismatch downloaded once more before the run fails. Only then is the file
moved into place, so a file in the cache is always a good one. A local folder is read in place;
its files are checked against its _MD5SUM.txt when it has one.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from xptools.errors import UserError
from xptools.fetch.http import Http
from xptools.fetch.ids import healpix8
from xptools.fetch.store import folder, key, replace_with

PREFIXES = {"XP_CONTINUOUS": "XpContinuousMeanSpectrum", "XP_SAMPLED": "XpSampledMeanSpectrum"}
CHECKSUMS = "_MD5SUM.txt"
_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(\S+)\s*$")
_BLOCK = 20_000  # data lines filtered at a time


@dataclass
class BulkFile:
    name: str
    first: int          # level-8 HEALPix pixels covered, both included
    last: int
    md5: str | None


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def covering(files: list[BulkFile], pixels: np.ndarray) -> list[BulkFile]:
    """The files holding any of these level-8 pixels."""
    pixels = np.unique(pixels)
    firsts = np.array([f.first for f in files])
    lasts = np.array([f.last for f in files])
    at = np.searchsorted(firsts, pixels, side="right") - 1
    ok = (at >= 0) & (pixels <= lasts[np.maximum(at, 0)])
    return [files[i] for i in np.unique(at[ok])]


def overlapping(files: list[BulkFile], first: int, last: int) -> list[BulkFile]:
    return [f for f in files if f.first <= last and f.last >= first]


class Bulk:
    """One folder of bulk files, remote (URL) or local."""

    def __init__(self, location: str, product: str, http: Http, cache: str):
        self.remote = location.startswith(("http://", "https://"))
        self.location = location if not self.remote or location.endswith("/") else location + "/"
        self.product = product
        self.http = http
        self.downloaded = 0   # files downloaded by this run (the others came from the cache)
        if not self.remote and not os.path.isdir(location):
            raise UserError(f"--bulk {location}: no such folder (give a folder of bulk files "
                            f"or a URL)")
        self._pattern = re.compile(rf"^{PREFIXES[product]}_(\d{{6}})-(\d{{6}})\.csv\.gz$")
        self._cache = folder(cache, "bulk", key(self.location),
                             f"xptools fetch: bulk files from {self.location}; <file>.md5 holds "
                             f"the checksum it was verified against") if self.remote else None

    def files(self) -> list[BulkFile]:
        """The folder's bulk files of this product, in pixel order."""
        if self.remote:
            text = self.http.get_bytes(self.location + CHECKSUMS).decode("utf-8", "replace")
            listed = self._checksums(text, self.location + CHECKSUMS)
        else:
            path = os.path.join(self.location, CHECKSUMS)
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    listed = self._checksums(f.read(), path)
            else:
                listed = {n: None for n in os.listdir(self.location)}
        files = []
        for name, md5 in listed.items():
            m = self._pattern.match(name)
            if m:
                files.append(BulkFile(name, int(m.group(1)), int(m.group(2)), md5))
        if not files:
            raise UserError(f"--bulk {self.location}: no {PREFIXES[self.product]}_NNNNNN-NNNNNN"
                            f".csv.gz files listed there")
        files.sort(key=lambda f: f.first)
        return files

    @staticmethod
    def _checksums(text: str, where: str) -> dict[str, str]:
        out = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            m = _LINE.match(line)
            if not m:
                raise UserError(f"{where}: line {number}: expected '<md5>  <file name>'")
            out[os.path.basename(m.group(2))] = m.group(1).lower()
        return out

    def local_path(self, f: BulkFile, progress: Callable[[int], None] | None = None) -> str:
        """A verified local copy of a bulk file (downloaded into the cache if remote)."""
        if not self.remote:
            path = os.path.join(self.location, f.name)
            if not os.path.exists(path):
                raise UserError(f"{path}: listed in {CHECKSUMS} but not there")
            if f.md5 is not None and _md5(path) != f.md5:
                raise UserError(f"{path}: MD5 differs from {CHECKSUMS} (the file is damaged)")
            return path
        path = os.path.join(self._cache, f.name)
        stamp = path + ".md5"
        if os.path.exists(path) and os.path.exists(stamp):
            with open(stamp) as s:
                if s.read().strip() == f.md5:
                    return path
        part = path + ".part"
        self.downloaded += 1
        for _ in range(2):
            self.http.download(self.location + f.name, part, progress)
            got = _md5(part)
            if got == f.md5:
                os.replace(part, path)
                replace_with(stamp, f.md5.encode())
                return path
            os.remove(part)  # damaged on the way, or on the server: once more, from zero
        raise UserError(f"{self.location}{f.name}: MD5 {got} differs from {f.md5} in "
                        f"{CHECKSUMS}, twice; the file is damaged at the source (files "
                        f"already verified stay in the cache)")

    def extract(self, path: str, keep: Callable[[np.ndarray], np.ndarray], dest: str) -> np.ndarray:
        """Copy the header and the rows whose source_id ``keep`` accepts (a boolean mask per
        block of ids) to the ECSV file ``dest``; returns the kept ids in file order."""
        kept: list[np.ndarray] = []
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="") as src, \
                    open(dest, "w", encoding="utf-8", newline="") as out:
                line = src.readline()
                while line.startswith("#"):
                    out.write(line)
                    line = src.readline()
                names = next(csv.reader([line]), [])
                if "source_id" not in names:
                    raise UserError(f"{path}: no source_id column in the header line")
                out.write(line)
                column = names.index("source_id")
                block: list[str] = []
                for line in src:
                    if line.strip():
                        block.append(line)
                    if len(block) >= _BLOCK:
                        kept.append(self._filter(block, column, keep, out, path))
                        block = []
                kept.append(self._filter(block, column, keep, out, path))
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: broken gzip data ({e})") from e
        return np.concatenate(kept)

    @staticmethod
    def _filter(lines: list[str], column: int, keep, out, path: str) -> np.ndarray:
        if not lines:
            return np.zeros(0, np.int64)
        ids = np.empty(len(lines), np.int64)
        for i, line in enumerate(lines):
            fields = line.split(",", column + 1)
            if any('"' in v for v in fields[:column + 1]):
                fields = next(csv.reader([line]))
            try:
                ids[i] = int(fields[column])
            except (ValueError, IndexError):
                raise UserError(f"{path}: a row without a valid source_id "
                                f"({line[:60].strip()!r})") from None
        mask = keep(ids)
        out.writelines(line for line, k in zip(lines, mask) if k)
        return ids[mask]


def pixel_filter(ids: np.ndarray | None, first: int | None = None, last: int | None = None):
    """A ``keep`` function for `Bulk.extract`: the rows of these ids, or of a pixel range."""
    if ids is None:
        return lambda block: (healpix8(block) >= first) & (healpix8(block) <= last)
    wanted = np.sort(ids)

    def keep(block: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(wanted, block), len(wanted) - 1)
        return wanted[at] == block

    return keep
