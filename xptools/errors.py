"""The errors a user can act on.

A `UserError` is printed as one line on stderr (``xptools CMD: error: ...``) and exits 1; its
message names the file, row or column and what is wrong. Anything else is a bug and is reported
the same way, with the traceback under ``--verbose``.
"""


class UserError(Exception):
    """Bad input, bad options or an environment problem the user can fix."""


class NotImplementedYet(Exception):
    """A registered subcommand or option that does not exist yet (exit code 2)."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run over many), or its
    type's name when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
