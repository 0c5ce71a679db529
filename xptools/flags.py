"""The bits of the per-row flag columns (``infer_flag``, ``embed_flag``, ``generate_flag``,
``photometry_flag`` and flag's ``xp_flag``), defined once: the commands set them, ``xptools CMD
--help`` lists them and the column descriptions point there. No numpy here, so that ``--help`` stays instant.
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
# ... and from the per-star fits of a forward model (ZGR23 Table 2, recomputed for the model)
FLAG_FIT_CHI2 = 1024         # chi2/dof above the model's chi2_limit (2)
FLAG_LOW_PRIOR = 2048        # ln_prior below the value enclosing 99.9% of the prior's mass
FLAG_PARALLAX_TENSION = 4096  # fitted parallax more than 10 sigma from the table's
FLAG_NOT_CONVERGED = 8192    # the fit did not converge, or its Fisher matrix is not positive
FLAG_EXT_AT_BOUND = 16384    # E at the bound of the fit (1e-3 or 5)

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
        FLAG_NO_XP: "no usable XP spectrum (missing, or its flux not positive as a whole; "
                    "transformer models: none given): labels from the other inputs",
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
        FLAG_FIT_CHI2: "(forward models) chi2/dof > 2: the forward model does not explain "
                       "the spectrum",
        FLAG_LOW_PRIOR: "(forward models) ln_prior below the value that encloses 99.9% of the "
                        "label prior's mass: labels unlike the training stars'",
        FLAG_PARALLAX_TENSION: "(forward models, absolute) the fitted parallax is more than 10 "
                               "sigma from the table's parallax",
        FLAG_NOT_CONVERGED: "(forward models) the fit did not converge, or its Fisher matrix "
                            "is not positive definite: errors unreliable",
        FLAG_EXT_AT_BOUND: "(forward models) ext at a bound of the fit (0.001 or 5)",
    },
    "embed": _LATENT,
    "generate": {**_LATENT,
                 FLAG_UNUSABLE: "no finite z, or (--reconstruct) the spectrum is missing or "
                                "incomplete, or (transformer models) no token to give, or "
                                "(--inpaint) no G to scale the prediction by: the outputs "
                                "are NaN",
                 FLAG_NO_ERRORS: "(--reconstruct) flux errors missing, NaN or not positive: "
                                 "chi2 and outlier_percentile are NaN"},
}


def help_text(command: str) -> str:
    """The bits of ``command``'s flag column, for its --help (one paragraph per bit)."""
    bits = sorted(BITS[command].items())
    column = COLUMNS.get(command, f"{command}_flag")
    return "\n\n".join([f"{column}, a sum of these bits:"]
                       + [f"{value} = {meaning}" for value, meaning in bits])


def description(command: str) -> str:
    """The flag column's description in output files, which an installed wheel can follow."""
    return f"bitmask; the bits: xptools {command} --help"


# sample_flag of `xptools sample` (xptools.sampling)
SAMPLE_NO_BP = 1
SAMPLE_NO_RP = 2
SAMPLE_DIAGONAL = 4
_DIAGONAL = ("the input has no coefficient correlations (e.g. the Multimodal Universe's "
             "coeff/coeff_error): the flux errors use the diagonal of the coefficient "
             "covariance only, as the header's XPERRCOR = 'diagonal' says")
BITS["sample"] = {
    SAMPLE_NO_BP: "no usable BP spectrum (missing, or NaN/infinite coefficients or errors): "
                  "NaN where BP contributes",
    SAMPLE_NO_RP: "no usable RP spectrum: NaN where RP contributes",
    SAMPLE_DIAGONAL: _DIAGONAL,
}

# photometry_flag of `xptools photometry` (xptools.synthetic): bits 1 and 2 are sample_flag's
PHOTOMETRY_NO_BP = 1
PHOTOMETRY_NO_RP = 2
PHOTOMETRY_NO_MAGNITUDE = 4
PHOTOMETRY_DIAGONAL = 8
BITS["photometry"] = {
    PHOTOMETRY_NO_BP: "no usable BP spectrum (missing, or NaN/infinite coefficients or "
                      "errors): every magnitude, flux and flux error of the row is NaN, as in "
                      "GaiaXPy",
    PHOTOMETRY_NO_RP: "no usable RP spectrum: as for BP, the whole row's photometry is NaN",
    PHOTOMETRY_NO_MAGNITUDE: "a band's flux is zero or negative (its magnitude is NaN; the "
                             "flux and error are kept), or a colour-corrected band (JKC_Std "
                             "U, SDSS_Std u) lacks its colour (all three NaN)",
    PHOTOMETRY_DIAGONAL: _DIAGONAL,
}


COLUMNS = {"flag": "xp_flag"}   # a flag column not named COMMAND_flag

# xp_flag of `xptools flag` (xptools.flag): ordered by severity, so that the recommended cut
# `xp_flag < XP_BASIC_CUT` keeps the stars of basic reliability (as ZGR23's quality_flags < 8)
# and `xp_flag == 0` the strict sample
XP_LABEL_ERROR = 1
XP_LABEL_EDGE = 2
XP_RUWE = 4
XP_FEW_OBSERVATIONS = 8
XP_FEW_BASES = 16
XP_OOD_IFOREST = 32
XP_BASIC_CUT = 64           # a bit below this keeps a star in the basic sample; from it up, not
XP_OOD_MAHALANOBIS = 64
XP_OOD_GMM = 128
XP_RECONSTRUCTION = 256
XP_PHOTOMETRY = 512
XP_FLUX_EXCESS = 1024
XP_QUALITY = 2048
XP_PARTIAL = 4096
XP_NO_XP = 8192
XP_NOT_SCORED = 16384
RUWE_LIMIT = 1.4            # Lindegren et al. 2018 (GAIA-C3-TN-LU-LL-124-01); DR3 docs
TRANSITS_LIMIT = 15         # DR3 published XP for sources with more than 15 transits
G_OBS_LIMIT = 135           # 15 transits x 9 astrometric-field CCDs, the same bar for G
BASES_LIMIT = 10            # fewer relevant bases in BP or RP: a low-information spectrum
BITS["flag"] = {
    XP_LABEL_ERROR: "a label's error above --sigma-max (default teff 150 K, logg 0.2, "
                    "fe_h 0.1 dex)",
    XP_LABEL_EDGE: "a label outside the model's training labels' 1st..99th percentile",
    XP_RUWE: f"ruwe > {RUWE_LIMIT:g}: a poor single-star astrometric fit, often an unresolved "
             f"binary (Lindegren et al. 2018, 2021)",
    XP_FEW_OBSERVATIONS: f"bp_n_transits or rp_n_transits <= {TRANSITS_LIMIT} (DR3 published XP "
                         f"spectra with more, bar a few special classes) or phot_g_n_obs < "
                         f"{G_OBS_LIMIT}",
    XP_FEW_BASES: f"bp_n_relevant_bases or rp_n_relevant_bases < {BASES_LIMIT}: few "
                  f"coefficients above the noise (a faint, low-information spectrum)",
    XP_OOD_IFOREST: "out of distribution by the Isolation Forest: ood_iforest_pct below its "
                    "cut (--cuts, default 2.5)",
    XP_OOD_MAHALANOBIS: "out of distribution by the Mahalanobis distance: "
                        "ood_mahalanobis_pct above its cut (default 99.5)",
    XP_OOD_GMM: "out of distribution by the Gaussian mixture: ood_gmm_pct below its cut "
                "(default 0.5)",
    XP_RECONSTRUCTION: "the svae cannot reproduce the spectrum: recon_chi2_pct above its cut "
                       "(default 99)",
    XP_PHOTOMETRY: "the XP spectrum disagrees with the BP or RP magnitude: xp_phot_pct above "
                   "its cut (default 99.5; xptools.ood.PhotometricConsistency)",
    XP_FLUX_EXCESS: _EXCESS[FLAG_FLUX_EXCESS],
    XP_QUALITY: "the --quality condition is not true for the row (a comparison with an "
                "unknown value is false)",
    XP_PARTIAL: "partial XP spectrum (BP or RP missing, NaN samples)",
    XP_NO_XP: "no usable XP spectrum",
    XP_NOT_SCORED: "could not be scored: a detector or the reconstruction percentile is NaN "
                   "(no usable or a partial spectrum, no flux errors of a row, ...)",
}
