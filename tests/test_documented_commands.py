"""Every command line documented in README.md, docs/*.md and the examples/*.sh scripts they
name is run in a test, so that documented commands cannot rot (issue 23, item 3).

Collection (automatic: a newly documented command is picked up with no change here)
- README.md and docs/*.md: the lines of fenced code blocks (not those marked ``python`` or
  another non-shell language) and of indented code blocks (4 spaces or more), backslash
  continuations joined, shell comments dropped. A line is a command when one of its stages
  (split at ``|``, ``&&``, ``;``) starts with ``xptools WORD`` (WORD lower case, so the
  messages quoted in docs/fetch.md, ``xptools fetch: 10 of ...``, are not) or
  ``bash PATH.sh``. Installation stages (``pip ...``, ``python3 -m venv``, ``. .venv/...``)
  are left out of a line's run: `pip install ... && bash examples/x.sh` runs the script.
- examples/*.sh scripts that README.md or docs/ name (all of them where a doc links the
  folder, ``[examples/](examples/)``): each is a case run as
  ``bash examples/NAME.sh`` (with SCRIPT_ARGS), unless a documented line runs it already; each
  ``xptools`` line inside a script, commented examples included, is a parse-only case.
- Inline code in prose that holds more than ``xptools SUB`` (``xptools train --valid``,
  ``xptools info FILE``) is a case too, parse-only; and every inline ``xptools WORD`` must name
  a subcommand (test_subcommands_named_in_the_docs_exist).
- A case's id is FILE:LINE of its first line, e.g. ``docs/sample.md:100``.

What each case gets
1. Parsed, always (no data needed): every ``xptools SUB ...`` stage goes through the real
   click object, ``typer.main.get_command(xptools.cli.app)``: SUB must exist and its options
   and arguments must parse. Shell words of scripts (``"$out/xp.fits"``) parse as plain values;
   array expansions (``${a[@]+...}``), which may expand to nothing, are dropped.
   A usage synopsis is not a command. Rule: a line with an unquoted ``[`` or an ALLCAPS
   placeholder word (IN, OUT, FILE, DIR, MODEL_DIR, LATENTS, ...; ``XP_CONTINUOUS.fits`` is a
   file name, not a placeholder) is a synopsis, and its continuation lines (next lines that
   start with ``[`` or ``(``) belong to it; for a synopsis, and for inline code, only the
   subcommand and every option it names are checked.
2. Run, when cheap and ../shared/data is there: every case except synopses, inline code,
   commented script examples, the lines inside a script (its own case runs them), lines that
   elide a part with ``...`` and the PARSE_ONLY patterns (each with its reason). It runs through ``bash -o pipefail -c`` (every stage of a pipeline counts) in a
   fresh temporary mirror of the repository root, the folder README and docs commands are
   meant to run from (see ``case_dir``): ``../shared/data`` is a link to the real data, the
   example inputs the docs name (``XP_CONTINUOUS.fits``, ``stars.fits``, ``ids.txt``, ...) are
   small stand-ins (links to real files, or at most a few hundred real rows), ``my_model/`` and
   ``my_svae/`` are the shipped models. Fetch commands run against the stand-in archive of
   tests/archive_server.py (started alone, as docs/fetch.md shows, on a free port;
   XPTOOLS_DATALINK_URL / XPTOOLS_TAP_URL point there). REWRITES lists the only edits made to
   a documented line before it runs. The run must exit 0, and every ``-o FILE``,
   ``--missing FILE`` and ``> FILE`` must exist afterwards.
3. A documented command that is wrong is listed in DOC_BUGS: its run (or parse) is an
   expected failure (strict: once the doc is fixed the entry must go), reason "DOC BUG: ...".
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]

# Documented commands that are parsed but not run: (substring of the command, reason).
# GUARDS are for commands the docs may name one day (none is in a code block today).
GUARDS = [
    ("xptools train", "trains a model: minutes to hours (tests/test_models.py trains tiny ones)"),
    ("recipes/", "trains the shipped models from scratch (hours)"),
    ("benchmarks/", "a benchmark over the whole data set"),
]
PARSE_ONLY = GUARDS + [
    ("https://cdn.gea.esac.esa.int", "the real Gaia bulk files: no network in tests, and "
                                     "3,112 HEALPix pixels of them"),
    ("--bulk /data/", "a bulk mirror folder on the reader's own disk"),
    ("--columns phot_g_mean_mag,parallax", "the stand-in archive's gaia_source has no parallax"),
]

# The only edits made to a documented line before it runs: (documented text, replacement
# factory, reason). The factory gets the case's run context.
REWRITES = [
    ("http://127.0.0.1:8321", lambda run: run.archive_url,
     "docs/fetch.md's stand-in archive runs here on a free port, not on 8321"),
    ("/tmp/xp-offline", lambda run: str(run.tmp / "xp-offline"),
     "a cache inside the test's temporary folder, not in the machine's /tmp"),
]

# Arguments for scripts that need them, from their usage line.
SCRIPT_ARGS = {"examples/cron_fetch.sh": "ids.txt cron_out"}

# Documented commands known to be wrong: (file, substring of the command, "parse" or "run",
# reason starting with "DOC BUG:"); that test of the case is an expected failure (strict)
# until the doc is fixed.
DOC_BUGS: list[tuple[str, str, str, str]] = [
]

SETUP_STAGES = ("pip ", "python3 -m venv", "python -m venv", ". .venv/", "source ")
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console", "zsh", "text"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


@dataclasses.dataclass
class Case:
    source: str            # file the command is documented in
    line: int              # its first line there
    text: str              # the command line, continuations joined, comment dropped
    kind: str              # "command", "synopsis", "inline" (a `xptools ...` span in prose),
                           # "script" (run a whole example script)
    in_script: bool = False  # a line inside an example script (runs with its script)
    commented: bool = False  # a commented example inside a script
    suffix: str = ""         # tells apart two cases on one line

    @property
    def id(self) -> str:
        return f"{self.source}:{self.line}{self.suffix}"

    def stages(self) -> list[list[str]]:
        return stages(self.text)

    def xptools_stages(self) -> list[list[str]]:
        """The arguments after ``xptools`` of each xptools stage."""
        out = []
        for words in self.stages():
            if words[:1] == ["xptools"]:
                out.append(words[1:])
            elif words[:3] in (["python", "-m", "xptools"], ["python3", "-m", "xptools"]):
                out.append(words[3:])
        return out

    def run_text(self) -> str:
        """What runs: the line without its installation stages."""
        if self.kind == "script":
            return f"bash {self.source} {SCRIPT_ARGS.get(self.source, '')}".strip()
        parts = [p.strip() for p in re.split(r"\s&&\s", self.text)]
        return " && ".join(p for p in parts if not p.startswith(SETUP_STAGES))

    def why_not_run(self) -> str | None:
        if self.kind == "synopsis":
            return "a usage synopsis (placeholders), not a command"
        if self.kind == "inline":
            return "a mention in prose, not a whole command: subcommand and options checked"
        if self.commented:
            return "a commented example inside a script: parsed only"
        if self.in_script:
            return "runs as part of its script"
        if "..." in self.text:
            return "an elided part ('...'): an outline, not a command"
        for pattern, reason in PARSE_ONLY:
            if pattern in self.run_text():
                return reason
        if not self.run_text():
            return "installation only"
        return None

    def outputs(self) -> list[str]:
        """Files the command names as its outputs (-o, --missing, > FILE)."""
        found = []
        for words in self.stages():
            for i, word in enumerate(words[:-1]):
                if word in ("-o", "--output", "--missing") and words[i + 1] != "-":
                    found.append(words[i + 1])
        found += redirects(self.text)
        return [f for f in found if not f.startswith("$")]

    def doc_bug(self, test: str) -> str | None:
        for source, pattern, which, reason in DOC_BUGS:
            if source == self.source and pattern in self.text and which == test:
                return reason
        return None


def unquoted(text: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"", "''", text)


def tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def stages(text: str) -> list[list[str]]:
    """The words of each stage of a shell line (split at |, ||, &&, ;), redirections cut."""
    out, current, skip = [], [], False
    for word in tokens(text):
        if word in ("|", "||", "&&", ";", "&"):
            out.append(current)
            current, skip = [], False
        elif word in (">", ">>", "<", "2>"):
            skip = True
        elif not skip:
            current.append(word)
    out.append(current)
    return [s for s in out if s]


def redirects(text: str) -> list[str]:
    words = tokens(text)
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in (">", ">>")]


def is_command(text: str) -> bool:
    if not re.search(r"\b(xptools|bash)\b", text):
        return False
    try:
        words_of_stages = stages(text)
    except ValueError:  # not shell (unbalanced quotes): a script's heredoc, prose
        return False
    for words in words_of_stages:
        if words[:1] == ["xptools"] and len(words) > 1 and re.match(r"^[a-z][a-z-]*$", words[1]):
            return True
        if words[:3] in (["python", "-m", "xptools"], ["python3", "-m", "xptools"]):
            return True
        if words[:1] == ["bash"] and len(words) > 1 and words[1].endswith(".sh"):
            return True
    return False


def is_synopsis(text: str) -> bool:
    bare = re.sub(r"\$\{[^{}]*\}", "", unquoted(text))   # no ${a[@]} of scripts
    return "[" in bare or any(PLACEHOLDER.match(w) for w in bare.split())


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the shell code of a Markdown file."""
    out, fence, language = [], None, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence is None and m:
            fence, language = m.group(1), m.group(2).lower()
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            elif language in SHELL_LANGUAGES:
                out.append((number, line))
            continue
        if line.startswith("    ") and line.strip():
            out.append((number, line))
        else:
            out.append((number, ""))  # ends a block
    return out


def logical_lines(numbered: list[tuple[int, str]], comments: bool = False):
    """Join backslash continuations and (in Markdown, ``comments`` False) synopsis
    continuations; yield [first line, text, commented]; with ``comments``, the text of a
    comment line is yielded too, as commented."""
    pending: list[str] = []
    start = 0
    last: list | None = None   # the previous yielded synopsis, to extend
    for number, line in numbered:
        stripped = line.strip()
        commented = False
        if comments and stripped.startswith("#"):
            stripped = stripped.lstrip("#").strip()
            commented = True
        if not stripped:
            last = None
            continue
        if not pending and last is not None and stripped[:1] in "[(" and not comments:
            last[1] += " " + stripped
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].rstrip())
            continue
        pending.append(stripped)
        text = " ".join(pending)
        pending = []
        entry = [start, text, commented]
        yield entry
        last = entry if is_synopsis(text) else None


def drop_comment(text: str) -> str:
    """The line without a trailing shell comment (a '#' that starts a word, outside quotes)."""
    quote = None
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def collect() -> list[Case]:
    cases: list[Case] = []
    scripts: list[str] = []
    run_scripts: set[str] = set()
    for name in DOC_FILES:
        path = REPO / name
        text = path.read_text()
        scripts += re.findall(r"examples/[\w.-]+\.sh", text)
        if "](examples/)" in text:  # a link to the folder: every script in it
            scripts += sorted(str(p.relative_to(REPO)) for p in (REPO / "examples").glob("*.sh"))
        # logical_lines yields lists that a later synopsis line may still extend: keep them
        entries = list(logical_lines(code_lines(path)))
        for start, line, _ in entries:
            line = drop_comment(line)
            if not is_command(line):
                continue
            kind = "synopsis" if is_synopsis(line) else "command"
            cases.append(Case(name, start, line, kind))
            for words in stages(line):
                if words[:1] == ["bash"] and len(words) == 2:
                    run_scripts.add(words[1])
        code = {n for n, line in code_lines(path) if line}
        for m in re.finditer(r"(?<!`)`((?:python3? -m )?xptools [^`]+)`(?!`)", text):
            line = text.count("\n", 0, m.start()) + 1
            span = " ".join(m.group(1).split())
            if line not in code and is_command(span) and any(
                    len(words) > 2 for words in stages(span) if words[0] == "xptools"):
                cases.append(Case(name, line, span, "inline"))
    for script in dict.fromkeys(scripts):
        path = REPO / script
        if not path.exists():
            continue  # a missing script: test_scripts_named_by_the_docs_exist says so
        if script not in run_scripts:
            cases.append(Case(script, 1, f"bash {script}", "script"))
        numbered = list(enumerate(path.read_text().splitlines(), 1))
        for start, line, commented in logical_lines(numbered, comments=True):
            line = line if commented else drop_comment(line)
            if is_command(line) and not line.startswith("bash "):
                kind = "synopsis" if is_synopsis(line) else "command"
                cases.append(Case(script, start, line, kind, in_script=True,
                                  commented=commented))
    seen: dict[str, int] = {}
    for case in cases:  # two cases on one line: FILE:LINE, FILE:LINE+2, ...
        seen[case.id] = seen.get(case.id, 0) + 1
        if seen[case.id] > 1:
            case.suffix = f"+{seen[case.id]}"
    return cases


CASES = collect()
RUN_CASES = [c for c in CASES if c.why_not_run() is None]


def param(case: Case, test: str):
    marks = []
    reason = case.doc_bug(test)
    if reason:
        marks.append(pytest.mark.xfail(reason=reason, strict=True))
    return pytest.param(case, id=case.id, marks=marks)


# -- collection ------------------------------------------------------------------------------

def test_collector_finds_the_documented_commands():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "two cases with the same id"
    assert len(CASES) >= 50, f"only {len(CASES)} documented commands found"
    assert len(RUN_CASES) >= 35, f"only {len(RUN_CASES)} documented commands to run"
    by_file = {c.source for c in CASES}
    for name in ("README.md", "docs/sample.md", "docs/infer.md", "docs/crossmatch.md",
                 "docs/fetch.md", "docs/embed.md", "docs/generate.md", "docs/plot.md",
                 "examples/label_a_table.sh", "examples/label_with_apogee.sh",
                 "examples/cron_fetch.sh"):
        assert name in by_file, f"no command found in {name}"
    used = {c.xptools_stages()[0][0] for c in CASES if c.xptools_stages()}
    assert {"sample", "infer", "crossmatch", "fetch", "embed", "generate", "plot", "info",
            "train"} <= used


def test_collector_rules():
    """The rules of the docstring, on made-up lines."""
    assert not is_command("xptools fetch: 10 of 12000 ids have no XP_CONTINUOUS")
    assert not is_command("xptools: warning: http://x: HTTP 503")
    assert not is_command("xptools/")
    assert is_command('pip install -e ".[test]" && bash examples/label_a_table.sh')
    assert is_synopsis("xptools sample IN [-o OUT]")
    assert is_synopsis("xptools train TRAIN -o MODEL_DIR")
    assert not is_synopsis("xptools sample XP_CONTINUOUS.fits | xptools infer - -o a.fits")
    assert not is_synopsis('xptools plot a.fits --where "teff < 4000" -o b.png')
    assert drop_comment("xptools fetch --ids ids.txt -o xp.fits   # DataLink") == \
        "xptools fetch --ids ids.txt -o xp.fits"
    assert drop_comment("xptools fetch --query 'a # b'") == "xptools fetch --query 'a # b'"
    lines = [(1, "    xptools crossmatch A B \\"), (2, "        --on id -o x.fits"),
             (3, ""), (4, "    xptools sample IN [-o OUT]"), (5, "        [--strict]")]
    assert [e[:2] for e in list(logical_lines(lines))] == [
        [1, "xptools crossmatch A B --on id -o x.fits"],
        [4, "xptools sample IN [-o OUT] [--strict]"]]
    case = Case("x", 1, "xptools plot a.fits --rows 0 -o - > first.png && xptools info b.fits "
                        "-o c.fits", "command")
    assert case.outputs() == ["c.fits", "first.png"]
    assert Case("x", 1, 'pip install -e ".[test]" && bash examples/a.sh', "command").run_text() \
        == "bash examples/a.sh"


def test_scripts_named_by_the_docs_exist():
    """The example scripts the docs name, and every script a documented line runs
    (``python benchmarks/x.py``, ``bash recipes/y.sh``, prose included), exist."""
    for name in DOC_FILES:
        text = (REPO / name).read_text()
        named = re.findall(r"examples/[\w.-]+\.sh", text) + re.findall(
            r"(?:python3?|bash) ((?:benchmarks|recipes|examples|tests|docs)/[\w./-]+"
            r"\.(?:py|sh))\b", text)
        for script in named:
            assert (REPO / script).exists(), f"{name} names {script}, which does not exist"


def test_exception_lists_are_current():
    """Every PARSE_ONLY, REWRITES and DOC_BUGS entry still matches a documented command, so a
    fixed doc does not leave a stale exception behind."""
    texts = [c.text for c in CASES] + [(REPO / c.source).read_text() for c in CASES
                                       if c.kind == "script"]
    for pattern, *_ in PARSE_ONLY[len(GUARDS):] + REWRITES:
        assert any(pattern in t for t in texts), f"no documented command has {pattern!r}"
    for source, pattern, _, _ in DOC_BUGS:
        assert any(c.source == source and pattern in c.text for c in CASES), \
            f"DOC_BUGS entry {source}: {pattern!r} matches no command: remove it"


# -- parse -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli():
    import typer.main

    import xptools.cli

    return typer.main.get_command(xptools.cli.app)


def parse(cli, args: list[str]):
    """Parse ``xptools ARGS`` with the real click objects; returns the subcommand."""
    group = cli.make_context("xptools", list(args), resilient_parsing=False)
    name, command, rest = cli.resolve_command(group, list(args))
    command.make_context(name, rest, parent=group)
    return command


def test_parse_catches_wrong_commands(cli):
    parse(cli, ["sample", "x.fits", "--band", "rp", "-o", "y.h5"])
    parse(cli, ["generate", "--z", "-2:2:1,0,0,0,0,0", "-o", "w.fits"])
    for args in (["sampel", "x.fits"], ["sample", "x.fits", "--bands", "rp"],
                 ["sample", "x.fits", "--chunk-rows", "N"], ["sample"], ["info", "a", "b"]):
        with pytest.raises(Exception):
            parse(cli, args)


def option_names(command) -> set[str]:
    names = {"-h", "--help"}
    for p in command.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def check_options(cli, name: str, text: str) -> None:
    """Subcommand ``name`` exists and has every option that ``text`` names."""
    assert name in cli.commands, f"xptools has no subcommand {name!r}"
    unknown = sorted(set(OPTION.findall(text)) - option_names(cli.commands[name]))
    assert not unknown, f"xptools {name} has no option {', '.join(unknown)}"


def test_subcommands_named_in_the_docs_exist(cli):
    """Every inline `xptools WORD ...` of README.md and docs/ names a subcommand."""
    for name in DOC_FILES:
        text = (REPO / name).read_text()
        for m in re.finditer(r"`(?:python3? -m )?xptools ([a-z][a-z-]*)\b(?![:.-])", text):
            line = text.count("\n", 0, m.start()) + 1
            assert m.group(1) in cli.commands, \
                f"{name}:{line}: xptools {m.group(1)} is not a subcommand"


@pytest.mark.parametrize("case", [param(c, "parse") for c in CASES])
def test_documented_command_parses(case, cli):
    stages_ = case.xptools_stages()
    if case.kind == "script":
        assert (REPO / case.source).exists()
        return
    if not stages_:
        assert "bash " in case.text
        script = next(w[1] for w in case.stages() if w[:1] == ["bash"])
        assert (REPO / script).exists(), f"{script} does not exist"
        return
    if case.kind == "synopsis" or is_synopsis(case.text):  # one subcommand, placeholders
        check_options(cli, stages_[0][0], unquoted(case.text).split(stages_[0][0], 1)[1])
        return
    if case.kind == "inline":  # a part of a command: what it names must exist
        for args in stages_:
            check_options(cli, args[0], " ".join(args[1:]))
        return
    for args in stages_:
        # in scripts, an array expansion may expand to nothing
        args = [a for a in args if not re.match(r"^\$\{\w+\[@\]", a)]
        try:
            parse(cli, args)
        except Exception as e:  # click's UsageError, BadParameter, NoSuchOption, ...
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            pytest.fail(f"xptools {shlex.join(args)}: {message}")


# -- run -------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunContext:
    tmp: Path
    archive_url: str = "http://127.0.0.1:9"   # set when the stand-in archive runs


@pytest.fixture(scope="module")
def standins(shared, tmp_path_factory):
    """The example inputs the docs name, as small stand-ins made from ../shared/data and
    examples/data (links, or at most a few hundred real rows); one folder for the module."""
    from xptools.io import open_table, read_table, write_table

    folder = tmp_path_factory.mktemp("standins")
    data = Path(shared)
    continuous_raw = data / "gaiaxpy_reference" / "xp_continuous"
    links = {
        # the archive's own DataLink XP_CONTINUOUS files (2 sources; one without BP)
        "XP_CONTINUOUS.fits": continuous_raw / "XP_CONTINUOUS_RAW.fits",
        "xp_continuous.csv": continuous_raw / "XP_CONTINUOUS_RAW_with_missing_BP.csv",
        "my_model": REPO / "xptools" / "data" / "msa-apogee",
        "my_svae": REPO / "xptools" / "data" / "svae-apogee",
    }
    for name, target in links.items():
        (folder / name).symlink_to(target)

    # XP spectra with photometry and APOGEE labels: 60 stars of examples/data; in stars.fits
    # the ids are in a column gaia_id, as docs/fetch.md's `--ids stars.fits --id-column
    # gaia_id` has them (fetch adds source_id)
    stars = read_table(str(REPO / "examples" / "data" / "apogee_xp_200.fits")).rows(slice(0, 60))
    write_table(stars, str(folder / "stars.vot"))
    star_ids = np.asarray(stars["source_id"])
    stars.columns = {("gaia_id" if k == "source_id" else k): v for k, v in stars.columns.items()}
    stars.info = {("gaia_id" if k == "source_id" else k): v for k, v in stars.info.items()}
    write_table(stars, str(folder / "stars.fits"))
    # the archive's XP_SAMPLED product (2 sources)
    sampled_raw = read_table(str(data / "gaiaxpy_reference" / "xp_sampled_raw.fits"))
    write_table(sampled_raw, str(folder / "XP_SAMPLED.vot"))
    # the first 300 spectra of the APOGEE x Gaia XP library
    with open_table(str(data / "apogee_xp" / "xp_sampled.fits")) as t:
        library = next(iter(t.chunks(rows=300)))
    write_table(library, str(folder / "xp_sampled.fits"))
    # coefficients, one column per coefficient: the first 100 of xp_continuous_2000.fits and
    # the two of them that the APOGEE library has too
    overlap = np.load(str(data / "xp_continuous" / "overlap_with_apogee_xp.npz"))["source_id"]
    coefficients = read_table(str(data / "xp_continuous" / "xp_continuous_2000.fits"))
    keep = np.flatnonzero((np.arange(len(coefficients)) < 100)
                          | np.isin(coefficients["source_id"], overlap))
    write_table(coefficients.rows(keep), str(folder / "xp_continuous.fits"))
    # APOGEE labels of all of these stars (every entry of stars observed twice)
    labels = read_table(str(data / "apogee_xp" / "apogee_labels.fits"))
    ids = np.concatenate([star_ids, library["source_id"], overlap])
    labels = labels.rows(np.flatnonzero(np.isin(labels["source_id"], ids)))
    write_table(labels, str(folder / "apogee_labels.fits"))
    write_table(labels, str(folder / "apogee.fits"))
    # labels without spectra (docs/transformer.md: log g from Teff and [Fe/H])
    (folder / "two_stars.csv").write_text("teff,fe_h\n4800,-0.2\n5800,0.0\n")
    # positions for the sky match of docs/crossmatch.md: Gaia-like rows (epoch 2016) and a
    # 2MASS-like table at epoch 2000 (raj2000, dej2000, j_m, h_m, k_m); made up, 50 rows
    from xptools.io import Table

    rng = np.random.default_rng(23)
    n = 50
    ra, dec = rng.uniform(10, 11, n), rng.uniform(-30, -29, n)
    pmra, pmdec = rng.normal(0, 20, n), rng.normal(0, 20, n)
    xp = Table()
    xp.add_column("source_id", np.asarray(library["source_id"][:n]))
    xp.add_column("ra", ra, unit="deg")
    xp.add_column("dec", dec, unit="deg")
    xp.add_column("pmra", pmra, unit="mas/yr")
    xp.add_column("pmdec", pmdec, unit="mas/yr")
    write_table(xp, str(folder / "xp.fits"))
    tmass = Table()
    tmass.add_column("raj2000", ra - 16 * pmra / 3.6e6 / np.cos(np.radians(dec)), unit="deg")
    tmass.add_column("dej2000", dec - 16 * pmdec / 3.6e6, unit="deg")
    for band in ("j_m", "h_m", "k_m"):
        tmass.add_column(band, rng.uniform(8, 14, n).astype(np.float32))
    write_table(tmass, str(folder / "tmass.fits"))
    # the ids of docs/fetch.md's offline example: two the stand-in archive has, one it has not
    (folder / "ids.txt").write_text("5853498713190525696\n505171240162594560\n12345\n")
    return folder


@pytest.fixture(scope="module")
def archive(shared):
    """tests/archive_server.py run alone (as docs/fetch.md shows), on a free port; its URL."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "archive_server.py"), "--port", "0",
         "--shared", str(shared)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, said, m = time.monotonic() + 180, "", None
        while not m and time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                said += process.stdout.readline()
                m = re.search(r"archive at (http://127\.0\.0\.1:\d+)", said)
        assert m, f"the stand-in archive did not start: {said!r}"
        yield m.group(1)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def case_dir(tmp_path: Path, standins: Path, shared: str, case: Case) -> Path:
    """A fresh mirror of the repository root, beside ``shared/data``: the stand-in inputs
    (except those the command writes), examples/ (the scripts and examples/data, linked) and
    an empty docs/ (plot writes its figures there)."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(Path(shared).resolve())
    root = tmp_path / "repo"
    root.mkdir()
    outputs = {os.path.normpath(o) for o in case.outputs()}
    for entry in standins.iterdir():
        if entry.name not in outputs:
            (root / entry.name).symlink_to(entry.resolve() if entry.is_symlink() else entry)
    (root / "examples").mkdir()
    for entry in (REPO / "examples").iterdir():
        if entry.name == "data" or entry.suffix == ".sh":
            (root / "examples" / entry.name).symlink_to(entry)
    (root / "docs").mkdir()
    return root


def uses_fetch(case: Case) -> bool:
    """Whether the command, or a script it runs, fetches."""
    text = case.run_text()
    for script in re.findall(r"\bbash\s+(\S+\.sh)", text):
        if (REPO / script).exists() and "xptools fetch" in (REPO / script).read_text():
            return True
    return "xptools fetch" in text


@pytest.mark.parametrize("case", [param(c, "run") for c in RUN_CASES])
def test_documented_command_runs(case, shared, standins, basis_cache, tmp_path, request):
    run = RunContext(tmp_path)
    env = dict(os.environ, XPTOOLS_CACHE=basis_cache, XPTOOLS_THREADS="1", MPLBACKEND="Agg",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if uses_fetch(case):
        run.archive_url = request.getfixturevalue("archive")
        env["XPTOOLS_DATALINK_URL"] = run.archive_url + "/data-server/data"
        env["XPTOOLS_TAP_URL"] = run.archive_url + "/tap-server/tap"
    command = case.run_text()
    for old, new, _ in REWRITES:
        command = command.replace(old, new(run))
    root = case_dir(tmp_path, standins, shared, case)
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    print(f"$ {command}\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}")  # shown on failure
    assert result.returncode == 0, (
        f"{case.id}: `{command}` exited {result.returncode}\n{result.stderr[-3000:]}")
    for name in case.outputs():
        assert (root / name).exists(), f"{case.id}: `{command}` did not write {name}"
    shutil.rmtree(root)  # passed: free the space (README's crossmatch writes 100 MB)
