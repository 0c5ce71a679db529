"""The flag bits of the model commands are defined once (xptools.flags): --help lists them,
the user docs list the same values, and output columns point to --help, not to docs an
installed wheel does not ship. Outputs read silently in astropy (no 'dex' unit warnings)."""

import os
import re
import warnings

import numpy as np
import pytest

from conftest import run, synthetic_sampled
from xptools import flags
from xptools.io import read_table, write_table

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


@pytest.mark.parametrize("command", sorted(flags.BITS))
def test_help_lists_every_bit(command):
    r = run(command, "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.decode().split())
    for value, meaning in flags.BITS[command].items():
        assert f"{value} = {' '.join(meaning.split()[:3])}" in text, (value, text)


def _doc_bits(page: str, heading: str) -> set[int]:
    text = open(os.path.join(DOCS, page)).read()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return {int(m) for m in re.findall(r"^\| \d+ \| (\d+)\s*\|", section, re.M)}


def test_docs_list_the_same_bits():
    assert _doc_bits("infer.md", "infer_flag") == set(flags.BITS["infer"])
    assert _doc_bits("embed.md", "embed_flag") == set(flags.BITS["embed"])
    assert _doc_bits("flag.md", "xp_flag") == set(flags.BITS["flag"])
    # generate.md lists what it adds to embed's bits
    assert _doc_bits("generate.md", "generate_flag") | set(flags.BITS["embed"]) == \
        set(flags.BITS["generate"])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    d = tmp_path_factory.mktemp("labelled")
    t = synthetic_sampled(20)
    t.remove_columns(["teff", "teff_err", "logg", "logg_err"])
    write_table(t, str(d / "in.fits"))
    return d


@pytest.mark.parametrize("ext", ["fits", "vot", "ecsv", "h5"])
def test_infer_output_reads_silently_in_astropy(labelled, ext):
    from astropy.table import Table

    out = labelled / f"labels.{ext}"
    r = run("infer", labelled / "in.fits", "-o", out)
    assert r.returncode == 0, r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Table.read(str(out))
    assert str(t["teff"].unit) == "K" and t["logg"].unit in (None, "")
    ours = read_table(str(out))
    if ext != "fits":  # (FITS keeps descriptions as TCOMM, which astropy does not read)
        assert "in dex" in t["fe_h"].description
    assert "in dex" in ours.info["fe_h"].description
    assert ours.info["infer_flag"].description == "bitmask; the bits: xptools infer --help"
    assert np.isfinite(ours["teff"]).all()


@pytest.mark.parametrize("ext", ["fits", "vot", "ecsv", "h5"])
def test_flag_output_reads_silently_in_astropy(labelled, ext):
    """xptools flag with the shipped models: its columns read without warnings, xp_flag as
    int32 pointing to --help."""
    from astropy.table import Table

    out = labelled / f"flags.{ext}"
    r = run("flag", labelled / "in.fits", "-o", out)
    assert r.returncode == 0, r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Table.read(str(out))
    assert t["xp_flag"].dtype.kind == "i" and t["xp_flag"].dtype.itemsize == 4
    ours = read_table(str(out))
    assert ours.info["xp_flag"].description == "bitmask; the bits: xptools flag --help"
    assert np.isfinite(ours["ood_mahalanobis_pct"]).all()
