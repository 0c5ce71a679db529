"""Sky positions for the sky match: validation, unit vectors, proper motions, and the KD-tree.

Positions become unit vectors u = (cos d cos a, cos d sin a, sin d). Two sources at angular
separation theta are a chord c = |u1 - u2| = 2 sin(theta / 2) apart, so "within theta" is a
Euclidean ball query of radius c in a KD-tree (scipy.spatial.cKDTree), with no trouble at
RA = 0/360 or at the poles. The separation reported is 2 arcsin(c / 2), computed from the two
unit vectors, which keeps full precision for small angles (where 1 - cos theta would not).

Proper motions (``--pm``) move a position from epoch t0 to t along a straight line in space,
with parallax and radial velocity taken as zero:

    u(t) = (u0 + (t - t0) (pmra* p + pmdec q)) / |u0 + (t - t0) (pmra* p + pmdec q)|

with p = (-sin a, cos a, 0) and q = (-sin d cos a, -sin d sin a, cos d) the directions of
increasing RA and Dec. This is the rigorous propagation of ESA (1997), The Hipparcos and Tycho
Catalogues, Vol. 1, Sect. 1.5.5, with zero parallax and radial velocity (its f = (1 + mu^2
tau^2)^-1/2 is the normalisation), i.e. what astropy's SkyCoord.apply_space_motion (ERFA
pmsafe) does for coordinates without distance or radial velocity. Unlike a linear step in
RA cos(Dec) and Dec it stays exact near the poles.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

from xptools.errors import UserError

ARCSEC = np.pi / (180 * 3600)        # radians per arcsecond
MAS = ARCSEC / 1000


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cos_dec = np.cos(dec)
    return np.column_stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)])


def chord(arcsec: float) -> float:
    """The chord between unit vectors that are ``arcsec`` apart."""
    return 2.0 * np.sin(arcsec * ARCSEC / 2.0)


def separation_arcsec(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angles between rows of two (n, 3) unit-vector arrays, arcsec."""
    c = np.sqrt(np.sum((u - v) ** 2, axis=1))
    return 2.0 * np.arcsin(np.minimum(c / 2.0, 1.0)) / ARCSEC


def valid_positions(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where RA is in [0, 360] and Dec in [-90, 90] (so not NaN either) degrees."""
    with np.errstate(invalid="ignore"):
        return (ra >= 0) & (ra <= 360) & (dec >= -90) & (dec <= 90)


def in_unit(data: np.ndarray, unit: str | None, target: str, what: str) -> np.ndarray:
    """A 1-D column of numbers as float64 in ``target`` units, converted from its own unit
    (a column without a unit is taken to be in ``target`` already)."""
    if data.ndim != 1 or data.dtype.kind not in "iuf":
        raise UserError(f"{what} must be a column of numbers, not {data.dtype}"
                        f"{list(data.shape[1:]) if data.ndim > 1 else ''}")
    values = data.astype(np.float64)
    degrees = target == "deg" and unit and unit.strip().lower() in ("deg", "degree", "degrees")
    if not unit or degrees:
        return values
    import astropy.units as u

    try:
        return values * u.Unit(unit).to(target)
    except (ValueError, u.UnitsError):
        raise UserError(f"{what} has unit {unit!r}, which cannot be converted to {target}") \
            from None


def propagated(ra_deg: np.ndarray, dec_deg: np.ndarray, pmra_mas_yr: np.ndarray,
               pmdec_mas_yr: np.ndarray, years: float) -> np.ndarray:
    """Unit vectors of positions moved by their proper motions over ``years`` (the module
    docstring's formula); rows with a NaN proper motion stay where they are."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    sin_ra, cos_ra, sin_dec, cos_dec = np.sin(ra), np.cos(ra), np.sin(dec), np.cos(dec)
    u0 = np.column_stack([cos_dec * cos_ra, cos_dec * sin_ra, sin_dec])
    p = np.column_stack([-sin_ra, cos_ra, np.zeros_like(ra)])
    q = np.column_stack([-sin_dec * cos_ra, -sin_dec * sin_ra, cos_dec])
    step = years * MAS * (pmra_mas_yr[:, None] * p + pmdec_mas_yr[:, None] * q)
    moved = u0 + np.where(np.isfinite(step), step, 0.0)
    return moved / np.linalg.norm(moved, axis=1)[:, None]


class SkyIndex:
    """The right table's valid positions in a KD-tree; finds every source within a radius."""

    NEIGHBOURS = 4  # asked of the tree per source; sources with more fall back to a ball query

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, radius_arcsec: float):
        """``vectors`` of the right rows ``rows`` (the right table's row numbers)."""
        from scipy.spatial import cKDTree

        self.vectors = vectors
        self.rows = rows
        self.radius = float(radius_arcsec)
        # a hair wider than the radius: the exact cut is made on the separation itself
        self._chord = chord(self.radius) * (1 + 1e-9)
        # sliding-midpoint splits build in half the time of median splits and query as fast
        self._tree = cKDTree(vectors, balanced_tree=False, compact_nodes=False) \
            if len(vectors) else None

    def pairs(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (left, right, separation) with separation <= radius, where ``left`` indexes
        ``vectors`` and ``right`` is a right-table row; sorted by left, then separation."""
        from scipy.spatial import cKDTree

        n = len(vectors)
        if self._tree is None or n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        # querying in spatial order (that of a tree built on the chunk) keeps the right
        # tree's nodes in cache: several times faster than file order on an all-sky table
        order = cKDTree(vectors, balanced_tree=False, compact_nodes=False).indices
        k = min(self.NEIGHBOURS, len(self.vectors))
        found_chord, found_index = np.empty((n, k)), np.empty((n, k), np.int64)
        d, i = self._tree.query(vectors[order], k=k, distance_upper_bound=self._chord,
                                workers=-1)
        found_chord[order], found_index[order] = d.reshape(n, k), i.reshape(n, k)
        found = np.isfinite(found_chord)  # each row's neighbours, nearest first
        crowded = found[:, -1].copy() if k == self.NEIGHBOURS else np.zeros(n, bool)  # more?
        found[crowded] = False
        left = np.repeat(np.arange(n, dtype=np.int64), found.sum(axis=1))
        right = found_index[found]
        separation = 2.0 * np.arcsin(found_chord[found] / 2.0) / ARCSEC
        if crowded.any():
            rows = np.flatnonzero(crowded)
            many = self._tree.query_ball_point(vectors[rows], self._chord, workers=-1)
            lengths = np.fromiter((len(m) for m in many), np.int64, len(many))
            extra_left = np.repeat(rows, lengths)
            extra_right = np.fromiter(chain.from_iterable(many), np.int64, int(lengths.sum()))
            extra = separation_arcsec(vectors[extra_left], self.vectors[extra_right])
            left, right, separation = (np.concatenate(pair) for pair in (
                (left, extra_left), (right, extra_right), (separation, extra)))
            by = np.lexsort((separation, left))
            left, right, separation = left[by], right[by], separation[by]
        inside = separation <= self.radius
        return left[inside], self.rows[right[inside]], separation[inside]
