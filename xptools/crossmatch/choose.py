"""Which candidate pairs to keep when a left row matches several right rows.

Candidates arrive as parallel arrays (left row, right row, ...) sorted by left row, and within
a left row in order of preference: by separation for a sky match, in right-table file order
for an id join. ``--nearest`` keeps the first of each left row, ``--best COL`` the one with the
highest COL (NaN counts as lowest; ties go to the earlier candidate), ``--all`` every pair.
"""

from __future__ import annotations

import numpy as np

NEAREST, BEST, ALL, UNIQUE = "nearest", "best", "all", "unique"


def first_of_each(left: np.ndarray) -> np.ndarray:
    """Positions of the first pair of every left row (``left`` sorted)."""
    return np.flatnonzero(np.r_[True, left[1:] != left[:-1]]) if len(left) else \
        np.zeros(0, np.int64)


def best_of_each(left: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positions of the highest-scoring pair of every left row (ties and NaN: the first)."""
    score = np.where(np.isnan(score), -np.inf, score.astype(np.float64))
    order = np.lexsort((np.arange(len(left)), -score, left))
    return order[first_of_each(left[order])]


def kept(rule: str, left: np.ndarray, score: np.ndarray | None = None) -> np.ndarray | slice:
    """The pairs ``rule`` keeps, as positions into the candidate arrays."""
    if rule in (ALL, UNIQUE):
        return slice(None)
    if rule == NEAREST:
        return first_of_each(left)
    return best_of_each(left, score)
