"""Row filters: the safe ``--where`` / ``--quality`` expressions of `xptools plot`,
`xptools calibrate` and `xptools flag` (`RowFilter`), parsed once, applied chunk by chunk,
never evaluated as code.
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from xptools.errors import UserError
from xptools.io import Table
from xptools.xp import preview_columns

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![A-Za-z_])
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | `(?P<quoted>[^`]+)`
    | (?P<string>'[^']*'|"[^"]*")
    | (?P<op><=|>=|==|!=|<|>|=)
    | (?P<paren>[()])
    )""", re.VERBOSE)
_KEYWORDS = ("and", "or", "not")
_COMPARE = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
            "==": np.equal, "=": np.equal, "!=": np.not_equal}


class RowFilter:
    """A row filter such as ``teff<5000``, ``logg > 4 and fe_h < -1`` or
    ``not (3500 <= teff < 5000) or source_id == 4295806720``, parsed once and applied to chunks.

    Grammar: comparisons joined by ``and``, ``or`` and ``not`` (that precedence; parentheses
    group). A comparison is OPERAND OP OPERAND [OP OPERAND ...] with OP one of
    ``< <= > >= == != =``, a chain meaning each neighbouring pair holds (``0 < x < 1``); an
    operand is a number, a column name (in backquotes when it is not a plain identifier, e.g.
    `` `j-k` ``), or a quoted string (``==``/``!=`` on text columns only). Nothing is evaluated
    as code. A row whose compared value is NaN or null never satisfies a comparison, ``!=``
    included, so ``not (teff < 5000)`` also keeps rows without a teff. Integer columns compare
    exactly (source_ids); other numbers as float64.

        where = RowFilter("teff < 5000 and logg > 4")
        where.check(src.schema, src.name)     # the columns exist and are scalar
        mask = where(chunk)                   # one bool per row
    """

    def __init__(self, text: str, option: str = "--where"):
        self.text, self.option = text, option
        self._tokens = self._tokenize(text)
        self._at = 0
        if not self._tokens:
            raise self._error("empty filter")
        self._tree = self._disjunction()
        if self._at < len(self._tokens):
            raise self._error(f"unexpected {self._tokens[self._at][1]!r}")
        self.columns = sorted(set(self._names(self._tree)))

    # parsing
    def _error(self, what: str) -> UserError:
        return UserError(f"{self.option} {self.text!r}: {what} (expected comparisons such as "
                         f"'teff < 5000' joined by and, or, not)")

    def _tokenize(self, text: str) -> list[tuple[str, object]]:
        tokens, at = [], 0
        while at < len(text):
            if text[at:].strip() == "":
                break
            match = _TOKEN.match(text, at)
            if match is None:
                raise self._error(f"cannot read {text[at:].strip()[:12]!r}")
            kind = match.lastgroup
            value = match.group(kind)
            if kind == "number":
                number = float(value)
                integer = re.fullmatch(r"[+-]?\d+", value) is not None
                tokens.append(("number", int(value) if integer else number))
            elif kind == "name" and value.lower() in _KEYWORDS:
                tokens.append((value.lower(), value))
            elif kind in ("name", "quoted"):
                tokens.append(("column", value))
            elif kind == "string":
                tokens.append(("string", value[1:-1]))
            else:
                tokens.append((kind, value))
            at = match.end()
        return tokens

    def _peek(self) -> tuple[str, object] | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _take(self) -> tuple[str, object]:
        token = self._peek()
        if token is None:
            raise self._error("it ends too early")
        self._at += 1
        return token

    def _disjunction(self):
        terms = [self._conjunction()]
        while self._peek() and self._peek()[0] == "or":
            self._take()
            terms.append(self._conjunction())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def _conjunction(self):
        terms = [self._negation()]
        while self._peek() and self._peek()[0] == "and":
            self._take()
            terms.append(self._negation())
        return terms[0] if len(terms) == 1 else ("and", terms)

    def _negation(self):
        token = self._peek()
        if token and token[0] == "not":
            self._take()
            return ("not", self._negation())
        if token and token == ("paren", "("):
            self._take()
            tree = self._disjunction()
            if self._peek() != ("paren", ")"):
                raise self._error("a '(' is not closed")
            self._take()
            return tree
        return self._comparison()

    def _operand(self):
        kind, value = self._take()
        if kind not in ("number", "column", "string"):
            raise self._error(f"expected a column or a number, found {value!r}")
        return (kind, value)

    def _comparison(self):
        operands, ops = [self._operand()], []
        while self._peek() and self._peek()[0] == "op":
            ops.append(self._take()[1])
            operands.append(self._operand())
        if not ops:
            what = operands[0][1]
            raise self._error(f"{what!r} is not compared with anything")
        if not any(kind == "column" for kind, _ in operands):
            raise self._error("a comparison needs a column")
        pairs = []
        for op, left, right in zip(ops, operands, operands[1:]):
            if "string" in (left[0], right[0]) and op not in ("==", "=", "!="):
                raise self._error(f"text can only be compared with == or !=, not {op}")
            pairs.append(("compare", op, left, right))
        return pairs[0] if len(pairs) == 1 else ("and", pairs)

    def _names(self, tree):
        if tree[0] == "compare":
            return [v for kind, v in tree[2:] if kind == "column"]
        if tree[0] == "not":
            return self._names(tree[1])
        return [n for t in tree[1] for n in self._names(t)]

    # use
    def check(self, schema: Table, name: str) -> None:
        """Each column the filter names exists, with one value per row."""
        for column in self.columns:
            if column not in schema:
                near = [c for c in schema.colnames if c.lower() == column.lower()] or \
                    [c for c in schema.colnames if c.lower().endswith("_" + column.lower())] or \
                    difflib.get_close_matches(column, schema.colnames, 1)
                hint = f" (did you mean {near[0]!r}?)" if near else \
                    f" (columns: {preview_columns(schema.colnames)})"
                raise UserError(f"{self.option} {self.text!r}: {name} has no column "
                                f"{column!r}{hint}")
            data = schema[column]
            if data.ndim != 1:
                raise UserError(f"{self.option} {self.text!r}: column {column!r} of {name} "
                                f"holds an array per row, not one value")

    def __call__(self, chunk: Table) -> np.ndarray:
        return np.broadcast_to(self._evaluate(self._tree, chunk), (len(chunk),)).copy()

    def _evaluate(self, tree, chunk: Table) -> np.ndarray:
        kind = tree[0]
        if kind == "and":
            return np.logical_and.reduce([self._evaluate(t, chunk) for t in tree[1]])
        if kind == "or":
            return np.logical_or.reduce([self._evaluate(t, chunk) for t in tree[1]])
        if kind == "not":
            return ~self._evaluate(tree[1], chunk)
        _, op, left, right = tree
        (a, a_ok), (b, b_ok) = self._value(left, chunk), self._value(right, chunk)
        text = [isinstance(v, str) or isinstance(v, np.ndarray) and v.dtype.kind in "US"
                for v in (a, b)]
        if text[0] != text[1]:
            side = 0 if left[0] == "column" else 1
            column = (left, right)[side][1]
            raise UserError(f"{self.option} {self.text!r}: column {column!r} holds "
                            f"{'text' if text[side] else 'numbers'}; compare it with "
                            f"{'a quoted string' if text[side] else 'a number'}")
        if not any(text):  # integers (source_ids) exactly, other numbers as float64
            exact = all(isinstance(v, int) and abs(v) < 2**63 or
                        isinstance(v, np.ndarray) and v.dtype.kind in "iub" for v in (a, b))
            dtype = np.int64 if exact else np.float64
            a, b = np.asarray(a).astype(dtype), np.asarray(b).astype(dtype)
        with np.errstate(invalid="ignore"):
            return _COMPARE[op](a, b) & a_ok & b_ok

    def _value(self, operand, chunk: Table):
        """(values, known) of an operand: a column's values and where they are not NaN/null."""
        kind, value = operand
        if kind != "column":
            return value, True
        data = np.asarray(chunk[value])
        if data.dtype.kind == "S":
            data = np.char.decode(data, "utf-8", errors="replace")
        if data.dtype.kind in "US":
            return np.char.strip(data), np.ones(len(data), bool)
        if data.dtype.kind not in "iufb":
            raise UserError(f"{self.option} {self.text!r}: column {value!r} is neither numbers "
                            f"nor text")
        known = np.ones(len(data), bool)
        if data.dtype.kind == "f":
            known = ~np.isnan(data)
        null = chunk.info[value].null if value in chunk.info else None
        if null is not None:
            known &= data != null
        return data, known
