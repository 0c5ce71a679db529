"""The bits of the per-row flag columns of the model commands (``infer_flag``, ``embed_flag``,
``generate_flag``), defined once: the models set them, ``xptools CMD --help`` lists them and
the column descriptions point there. No numpy here, so that ``--help`` stays instant.
"""

from __future__ import annotations

# from the inputs ...
FLAG_NO_XP = 1
FLAG_PARTIAL_XP = 2
FLAG_NO_PHOTOMETRY = 4
FLAG_PARTIAL_PHOTOMETRY = 8
FLAG_G_FROM_XP = 16
# ... from the model
FLAG_OUT_OF_RANGE = 32   # a prediction outside the training labels' 0.5..99.5 percentiles
FLAG_UNUSABLE = 64       # nothing to predict from: the outputs are NaN
FLAG_NO_ERRORS = 128     # XP errors missing, NaN or not positive: no chi2 for the row
# ... and from the table's G, BP and RP magnitudes: |C*| > FLUX_EXCESS_LIMIT sigma_C*(G), a
# BP/RP flux excess (`xptools.photometry`); the XP spectrum holds light G does not (a neighbour)
FLAG_FLUX_EXCESS = 256
FLUX_EXCESS_LIMIT = 3.0  # in units of sigma_C*(G)
# ... and from a calibrated model (`xptools calibrate -o`): a raw prediction outside the range
# the calibration was fitted on
FLAG_OUTSIDE_CALIBRATION = 512

_XP = {
    FLAG_NO_XP: "no usable XP spectrum (missing, or its flux not positive as a whole)",
    FLAG_PARTIAL_XP: "partial XP spectrum (e.g. BP or RP missing, NaN samples)",
    FLAG_G_FROM_XP: "no phot_g_mean_mag: G estimated from the XP spectrum",
}
_EXCESS = {FLAG_FLUX_EXCESS: f"BP/RP flux excess: |C*| > {FLUX_EXCESS_LIMIT:g} sigma_C*(G) "
                             f"(Riello et al. 2021): the XP spectrum holds light that G does "
                             f"not, usually a neighbour's"}
_LATENT = {**_XP,
           FLAG_UNUSABLE: "the spectrum is missing or incomplete: the latent outputs are NaN",
           **_EXCESS}

BITS = {
    "infer": {
        FLAG_NO_XP: "no usable XP spectrum (missing, or its flux not positive as a whole): "
                    "labels from photometry alone",
        FLAG_PARTIAL_XP: _XP[FLAG_PARTIAL_XP],
        FLAG_NO_PHOTOMETRY: "no photometry",
        FLAG_PARTIAL_PHOTOMETRY: "some photometry missing",
        FLAG_G_FROM_XP: _XP[FLAG_G_FROM_XP],
        FLAG_OUT_OF_RANGE: "a prediction outside the training labels' 0.5..99.5 percentile "
                           "range",
        FLAG_UNUSABLE: "nothing usable: the labels are NaN",
        **_EXCESS,
        FLAG_OUTSIDE_CALIBRATION: "a prediction outside the range the model's calibration "
                                  "was fitted on (xptools calibrate -o): its calibrated value "
                                  "and error are extrapolated",
    },
    "embed": _LATENT,
    "generate": {**_LATENT,
                 FLAG_UNUSABLE: "no finite z, or (--reconstruct) the spectrum is missing or "
                                "incomplete: the outputs are NaN",
                 FLAG_NO_ERRORS: "(--reconstruct) flux errors missing, NaN or not positive: "
                                 "chi2 and outlier_percentile are NaN"},
}


def help_text(command: str) -> str:
    """The bits of ``command``'s flag column, for its --help (one paragraph per bit)."""
    bits = sorted(BITS[command].items())
    return "\n\n".join([f"{command}_flag, a sum of these bits:"]
                       + [f"{value} = {meaning}" for value, meaning in bits])


def description(command: str) -> str:
    """The flag column's description in output files, which an installed wheel can follow."""
    return f"bitmask; the bits: xptools {command} --help"


# photometry_flag of `xptools photometry` (xptools.synthetic): bits 1 and 2 are sample_flag's
PHOTOMETRY_NO_BP = 1
PHOTOMETRY_NO_RP = 2
PHOTOMETRY_NO_MAGNITUDE = 4
BITS["photometry"] = {
    PHOTOMETRY_NO_BP: "no usable BP spectrum (missing, or NaN/infinite coefficients or "
                      "errors): every magnitude, flux and flux error of the row is NaN, as in "
                      "GaiaXPy",
    PHOTOMETRY_NO_RP: "no usable RP spectrum: as for BP, the whole row's photometry is NaN",
    PHOTOMETRY_NO_MAGNITUDE: "a band's flux is zero or negative (its magnitude is NaN; the "
                             "flux and error are kept), or a colour-corrected band (JKC_Std "
                             "U, SDSS_Std u) lacks its colour (all three NaN)",
}
