"""A calibration as a model directory holds it (config.json's ``calibration`` section), and
what `xptools infer --model DIR` does with it.

Per label, on the model's raw outputs (median m, error e, quantiles q16, q84):

    m'   = a m + b                      values mapped (--fit linear; a = 1, b = 0 for scale)
    e'   = s e                          errors scaled
    q16' = m' - s (m - q16)             quantile half-widths scaled
    q84' = m' + s (q84 - m)

and a prediction whose raw m lies outside the label's calibrated range (the 0.5..99.5
percentiles of the raw predictions the calibration was fitted on) gets infer_flag
`FLAG_OUTSIDE_CALIBRATION`. Only numpy here: infer imports this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from xptools.flags import FLAG_OUTSIDE_CALIBRATION

FITS = ("scale", "linear")
RANGE_PERCENTILES = (0.5, 99.5)


@dataclass
class LabelCalibration:
    s: float = 1.0
    s_error: float = 0.0
    a: float = 1.0
    a_error: float = 0.0
    b: float = 0.0
    b_error: float = 0.0
    ab_correlation: float = 0.0
    range: list[float] = field(default_factory=lambda: [-np.inf, np.inf])  # raw predictions
    n: int = 0
    note: str = ""

    def check(self, label: str) -> None:
        for name in ("s", "a", "b"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{label}: {name} = {value!r} is not a finite number")
        if self.s <= 0:
            raise ValueError(f"{label}: s = {self.s!r} must be positive")
        if self.a == 0:
            raise ValueError(f"{label}: a = 0 maps every value to b")
        if len(self.range) != 2 or not self.range[0] <= self.range[1]:
            raise ValueError(f"{label}: range {self.range!r} is not [low, high]")


@dataclass
class Calibration:
    """What `xptools calibrate -o` fitted, per label; `apply` is what infer does with it."""

    fit: str
    labels: dict[str, LabelCalibration]
    scale_target: str = "mad"                       # how s was chosen (`fit.SCALE_TARGETS`)
    reference: dict = field(default_factory=dict)   # file, sha256, columns
    labeled: dict = field(default_factory=dict)     # file, sha256, rows used
    fit_where: str | None = None
    made_by: dict = field(default_factory=dict)     # xptools version, command, date, seed

    def to_dict(self) -> dict:
        return {"fit": self.fit, "scale_target": self.scale_target,
                "labels": {k: asdict(v) for k, v in self.labels.items()},
                "range_percentiles": list(RANGE_PERCENTILES), "reference": self.reference,
                "labeled": self.labeled, "fit_where": self.fit_where, "made_by": self.made_by}

    @classmethod
    def from_dict(cls, d: dict, model_labels: list[str]) -> "Calibration":
        """Raises ValueError (or KeyError, TypeError) on a section that does not make sense
        for a model predicting ``model_labels``."""
        if d.get("fit") not in FITS:
            raise ValueError(f"fit {d.get('fit')!r} is not one of {', '.join(FITS)}")
        labels = {}
        for label, values in d["labels"].items():
            if label not in model_labels:
                raise ValueError(f"label {label!r} is not one of the model's "
                                 f"({', '.join(model_labels)})")
            labels[label] = LabelCalibration(**values)
            labels[label].range = [float(v) for v in labels[label].range]
            labels[label].check(label)
        return cls(d["fit"], labels, d.get("scale_target", "mad"), d.get("reference", {}),
                   d.get("labeled", {}), d.get("fit_where"), d.get("made_by", {}))

    @property
    def id(self) -> str:
        """The start of the SHA-256 of what infer applies: the fit and per label s, a, b and
        the range (header keyword XPTCALIB). Provenance is left out, so the same numbers
        fitted again have the same id."""
        applied = {"fit": self.fit,
                   "labels": {label: [c.s, c.a, c.b, list(c.range)]
                              for label, c in sorted(self.labels.items())}}
        text = json.dumps(applied, sort_keys=True, default=float)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def apply(self, label: str, median, error, q16, q84):
        """The calibrated (median, error, q16, q84) of raw ones, and where the raw median is
        outside the calibrated range (NaN: not outside)."""
        c = self.labels[label]
        median, error = np.asarray(median, np.float64), np.asarray(error, np.float64)
        mapped = c.a * median + c.b
        out = (mapped, c.s * error,
               None if q16 is None else mapped - c.s * (median - np.asarray(q16, np.float64)),
               None if q84 is None else mapped + c.s * (np.asarray(q84, np.float64) - median))
        with np.errstate(invalid="ignore"):
            outside = (median < c.range[0]) | (median > c.range[1])
        return out, outside

    def invert(self, label: str, median, error, q16, q84):
        """The raw (median, error, q16, q84) of calibrated ones (`apply` undone)."""
        c = self.labels[label]
        mapped, error = np.asarray(median, np.float64), np.asarray(error, np.float64)
        raw = (mapped - c.b) / c.a
        return (raw, error / c.s,
                None if q16 is None else raw - (mapped - np.asarray(q16, np.float64)) / c.s,
                None if q84 is None else raw + (np.asarray(q84, np.float64) - mapped) / c.s)

    def apply_predictions(self, pred: dict) -> np.ndarray:
        """Calibrate a model's ``predict`` output in place (label -> [median, error, q16,
        q84]); returns the infer_flag bits it adds."""
        flags = np.zeros(len(pred["flag"]), np.int64)
        for label in self.labels:
            if label not in pred:
                continue
            values, outside = self.apply(label, *pred[label])
            pred[label] = list(values)
            flags |= np.where(outside, FLAG_OUTSIDE_CALIBRATION, 0)
        return flags

    def summary(self) -> str:
        """One line per label: what infer does (for the card and the stderr table)."""
        lines = []
        for label, c in self.labels.items():
            mapped = "" if self.fit == "scale" else f", value -> {c.a:.5g} x value + {c.b:.5g}"
            lines.append(f"{label}: errors x {c.s:.4g}{mapped}; calibrated for raw values "
                         f"{c.range[0]:.5g} .. {c.range[1]:.5g}")
        return "\n".join(lines)
