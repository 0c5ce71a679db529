"""The data-driven forward model of Zhang, Green & Rix (2023, MNRAS 524, 1855; "ZGR23").

An XP spectrum (and 2MASS J, H, Ks) as a physical product (ZGR23 Eq. 1 / 8):

    f(lambda) = f_abs(lambda | Teff, logg, [Fe/H]) * parallax^2 * exp(-E R(lambda))

Read top to bottom:

1. data vector    - XP flux at 392..992 nm in 10 nm steps (61 samples, a subset of GaiaXPy's
                    default grid) and J, H, Ks as monochromatic f_lambda (Eq. 5); every value
                    divided by the star's mean XP flux, so that numbers are of order one.
2. covariance     - the XP covariance (the sampled one when the table has ``flux_covariance``,
                    else the diagonal errors) plus the Eq. 2 terms: 0.5% per sample, a 0.5%
                    overall zero point, 0.1% BP and RP zero points; eigenvalues floored at
                    1e-9 (Eq. 3); chi2 (Eq. 4) through the whitening W with W^T W = C^-1.
3. ForwardNetwork - 3 tanh layers of 32 units, labels -> ln f_abs at every data point, and
                    ln R, one free value per data point (Sec. 3).
4. two modes      - absolute (the paper's, a table with parallax and parallax_error): f_abs is
                    the flux at 1 kpc; relative (no parallax): a per-star amplitude, profiled
                    in closed form, replaces parallax^2, so luminosity and R's grey part are
                    not identified (R is reported as R(lambda) - R(Ks)).
5. training       - per-star latents (labels, ln E, ln parallax) fitted jointly with the
                    network, tied by Gaussian terms to the measured labels, the E prior and the
                    parallax, with the Jacobian terms of Eq. 13-14; the stages of Table 1.
6. per-star fits  - Eq. 17-23: chi2 + parallax term - 2 ln p_GMM - 2 ln parallax - 2 ln E,
                    started from the best of a grid of GMM draws x geometric E, then batched
                    Levenberg-Marquardt; errors from the Fisher matrix without the prior.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from xptools import models
from xptools.errors import UserError
from xptools.flags import (FLAG_EXT_AT_BOUND, FLAG_FIT_CHI2, FLAG_FLUX_EXCESS, FLAG_LOW_PRIOR,
                           FLAG_NOT_CONVERGED, FLAG_OUT_OF_RANGE, FLAG_PARALLAX_TENSION,
                           FLAG_PARTIAL_XP, FLAG_UNUSABLE)
from xptools.io import Table
from xptools.models.features import (FeatureSpec, XPSource, float_column, label_array,
                                     monitor_split)
from xptools.xp import sampled_grid, usable_flux

XP_WAVELENGTHS = np.arange(392.0, 993.0, 10.0)       # Sec. 2.1: 61 samples
BP_LIMIT = 640.0                                     # nm: BP's zero point below, RP's above
# 2MASS (Cohen, Wheaton & Megeath 2003): isophotal wavelengths (nm) and zero-magnitude
# f_lambda (W m-2 nm-1; their W cm-2 um-1 x 10), for Eq. 5: f = F0 10^(-0.4 m)
TWO_MASS = {"j_m": (1235.0, 3.129e-12), "h_m": (1662.0, 1.133e-12), "ks_m": (2159.0, 4.283e-13)}
TWO_MASS_ERRORS = {"j_m": "j_msigcom", "h_m": "h_msigcom", "ks_m": "ks_msigcom"}
MISSING_VARIANCE = 1.0       # a missing point's placeholder variance, on the data's scale
EIGENVALUE_FLOOR = 1e-9      # Eq. 3, in (normalised flux)^2
MAG_PER_NEPER = 2.5 / math.log(10.0)   # exp(-E R) in magnitudes: A = 1.0857 E R
LABEL_NAMES = ("teff", "logg", "fe_h")


@dataclass
class Hyperparameters:
    hidden: int = 32                 # Sec. 3: 3 hidden layers of 32 units, tanh
    layers: int = 3
    photometry_error: float = 0.03   # mag, for 2MASS bands without *_msigcom columns
    label_error_floor: list[float] = field(default_factory=lambda: [10.0, 0.02, 0.01])
    ext_prior: str = "ak_targ"       # the column of the E prior
    ext_error_floor: float = 0.05    # E prior sigma = sqrt(floor^2 + (fraction E)^2)
    ext_error_fraction: float = 0.1
    ext_range: list[float] = field(default_factory=lambda: [-0.05, 3.0])  # usable prior values
    ext_bounds: list[float] = field(default_factory=lambda: [1e-3, 5.0])  # E in the fits
    high_quality_error: list[float] = field(default_factory=lambda: [100.0, 0.1, 0.05])
    clean_labels: float = 4.0        # stage 4: drop stars this many sigma from a label
    clean_flux: float = 4.0          # ... or with a flux residual this many sigma anywhere
    network_epochs: int = 300        # Table 1 stages
    joint_epochs: int = 150
    all_epochs: int = 200
    retrain_epochs: int = 500
    refine_epochs: int = 100
    batch_size: int = 1024
    lr: float = 3e-3
    patience: int = 30
    monitor_fraction: float = 0.05
    gmm_components: int = 16
    grid_draws: int = 128            # per-star fits: GMM draws x geometric E values
    grid_ext: int = 10
    iterations: int = 40             # Levenberg-Marquardt steps
    chi2_limit: float = 2.0          # Table 2: chi2/dof above this is flagged
    parallax_sigma: float = 10.0     # Table 2: parallax more than this many sigma from Gaia's


# -- 1-2. data vector and its covariance -----------------------------------------------------

def ccm89(wavelength_nm: np.ndarray, rv: float = 3.1) -> np.ndarray:
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989), Eq. 2-3, for 0.3..3.3 um^-1."""
    x = 1000.0 / np.asarray(wavelength_nm, float)
    a, b = np.empty_like(x), np.empty_like(x)
    ir = x < 1.1
    a[ir], b[ir] = 0.574 * x[ir] ** 1.61, -0.527 * x[ir] ** 1.61
    y = x[~ir] - 1.82
    a[~ir] = (1 + 0.17699 * y - 0.50447 * y ** 2 - 0.02427 * y ** 3 + 0.72085 * y ** 4
              + 0.01979 * y ** 5 - 0.77530 * y ** 6 + 0.32999 * y ** 7)
    b[~ir] = (1.41338 * y + 2.28305 * y ** 2 + 1.07233 * y ** 3 - 5.38434 * y ** 4
              - 0.62251 * y ** 5 + 5.30260 * y ** 6 - 2.09002 * y ** 7)
    return a + b / rv


def covariance(flux: np.ndarray, xp_cov: np.ndarray, n_xp: int, bp: np.ndarray) -> np.ndarray:
    """Eq. 2: the data covariance (n, P, P) from the measured one plus 0.5% per point, a 0.5%
    XP zero point and 0.1% BP and RP zero points; ``flux`` (n, P) with missing points 0."""
    f = np.nan_to_num(flux)
    c = xp_cov + np.einsum("ni,ij->nij", (0.005 * f) ** 2, np.eye(f.shape[1]))
    xp = np.zeros(f.shape[1], bool)
    xp[:n_xp] = True
    for part, level in ((xp, 0.005), (np.r_[bp, np.zeros(f.shape[1] - n_xp, bool)], 0.001),
                        (np.r_[~bp, np.zeros(f.shape[1] - n_xp, bool)], 0.001)):
        v = f * part
        c = c + level ** 2 * v[:, :, None] * v[:, None, :]
    return c


def whitening(cov: np.ndarray) -> np.ndarray:
    """W (n, P, P) with W^T W = C^-1, C's eigenvalues floored at EIGENVALUE_FLOOR (Eq. 3)."""
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, EIGENVALUE_FLOOR)
    return np.swapaxes(vectors, 1, 2) / np.sqrt(values)[:, :, None]


# -- 3. the network --------------------------------------------------------------------------

class ForwardNetwork(nn.Module):
    """Standardised labels -> ln f_abs at every data point (Sec. 3), and ln R."""

    def __init__(self, n_labels: int, n_points: int, hidden: int, layers: int):
        super().__init__()
        dims = [n_labels] + [hidden] * layers
        blocks = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.Tanh()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(hidden, n_points))
        self.ln_r = nn.Parameter(torch.zeros(n_points))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.mlp(theta)

    def with_jacobian(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ln f_abs (n, P) and its derivatives d ln f_abs / d theta (n, P, L), by carrying
        the tangents of the L inputs through the layers (forward mode, by hand: cheaper than
        torch.func for 3 inputs)."""
        h = theta
        tangent = torch.eye(theta.shape[1], dtype=theta.dtype).expand(len(theta), -1, -1)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                h = layer(h)
                tangent = tangent @ layer.weight.T
            else:   # tanh: d tanh(z) = (1 - tanh^2) dz
                h = torch.tanh(h)
                tangent = tangent * (1 - h * h)[:, None, :]
        return h, tangent.transpose(1, 2)


class StarLatents(nn.Module):
    """Training's per-star latents: standardised labels, ln E and ln parallax (Sec. 3.2)."""

    def __init__(self, theta: torch.Tensor, ln_ext: torch.Tensor, ln_parallax: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.ln_ext = nn.Parameter(ln_ext.clone())
        self.ln_parallax = nn.Parameter(ln_parallax.clone())


class ForwardModel:
    """Hyperparameters in the constructor; label scalers, unit offset, GMM and network set by
    `fit` or loaded from a model directory."""

    kind = "forward"
    format_version = 1

    def __init__(self, labels: list[str] | None = None, hyper: Hyperparameters | None = None,
                 absolute: bool = False):
        self.labels = list(labels or LABEL_NAMES)
        self.hyper = hyper or Hyperparameters()
        self.absolute = absolute
        self.photometry = list(TWO_MASS)
        # XPSource reads the 61 samples; features.raw gives the input flags, g_magnitude G
        self.features = FeatureSpec(wavelengths=XP_WAVELENGTHS.tolist(), transform="linear",
                                    photometry=self.photometry)
        self.label_mean: list[float] | None = None
        self.label_std: list[float] | None = None
        self.label_range: list[list[float]] | None = None
        self.ln_unit = 0.0          # absolute mode: ln of the flux unit of f_abs
        self.ln_prior_cut: float | None = None
        self.provenance: dict = {}
        self.network = self._network()
        self.gmm = {"weights": torch.zeros(self.hyper.gmm_components, dtype=torch.float64),
                    "means": torch.zeros(self.hyper.gmm_components, len(self.labels),
                                         dtype=torch.float64),
                    "covariances": torch.eye(len(self.labels), dtype=torch.float64).repeat(
                        self.hyper.gmm_components, 1, 1)}
        self.path = None
        self.checksum = None

    @property
    def wavelengths(self) -> np.ndarray:
        """Every data point's wavelength (nm): XP samples, then J, H, Ks."""
        return np.r_[XP_WAVELENGTHS, [w for w, _ in TWO_MASS.values()]]

    @property
    def n_points(self) -> int:
        return len(XP_WAVELENGTHS) + len(self.photometry)

    def _network(self) -> ForwardNetwork:
        return ForwardNetwork(len(self.labels), self.n_points, self.hyper.hidden,
                              self.hyper.layers)

    # -- configuration and weights --------------------------------------------------------

    def to_config(self) -> dict:
        return {"kind": self.kind, "format_version": self.format_version,
                "labels": self.labels, "mode": "absolute" if self.absolute else "relative",
                "features": self.features.to_dict(), "hyperparameters": asdict(self.hyper),
                "label_mean": self.label_mean, "label_std": self.label_std,
                "label_range": self.label_range, "ln_unit": self.ln_unit,
                "ln_prior_cut": self.ln_prior_cut, "provenance": self.provenance}

    @classmethod
    def from_config(cls, config: dict) -> "ForwardModel":
        if config["mode"] not in ("absolute", "relative"):
            raise ValueError(f"mode {config['mode']!r}")
        model = cls(config["labels"], Hyperparameters(**config["hyperparameters"]),
                    config["mode"] == "absolute")
        model.features = FeatureSpec.from_dict(config["features"])
        model.label_mean, model.label_std = config["label_mean"], config["label_std"]
        model.label_range, model.ln_unit = config["label_range"], config["ln_unit"]
        model.ln_prior_cut = config["ln_prior_cut"]
        model.provenance = config.get("provenance", {})
        if model.label_mean is None or model.ln_prior_cut is None:
            raise ValueError("the config holds no fitted scalers (an untrained model?)")
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{f"network.{k}": v.float() for k, v in self.network.state_dict().items()},
                **{f"gmm.{k}": v for k, v in self.gmm.items()}}

    def load_tensors(self, tensors: dict[str, torch.Tensor], file: str) -> None:
        models.check_tensors(self.network, {k[8:]: v for k, v in tensors.items()
                                            if k.startswith("network.")}, file)
        for k in self.gmm:
            if f"gmm.{k}" not in tensors or tensors[f"gmm.{k}"].shape != self.gmm[k].shape:
                raise UserError(f"{file}: weights do not match the config (gmm.{k})")
            self.gmm[k] = tensors[f"gmm.{k}"].to(torch.float64)
        extra = [k for k in tensors if not k.startswith(("network.", "gmm."))]
        if extra:
            raise UserError(f"{file}: weights do not match the config (unexpected {extra[0]!r})")
        self.network.requires_grad_(False).double().eval()   # the fits run in float64

    # -- data -----------------------------------------------------------------------------

    def data(self, chunk: Table, name: str, source: XPSource | None = None) -> dict:
        """The data vector of each row, normalised by its mean XP flux: ``d`` (n, P) with 0
        where missing, ``observed`` (n, P), the whitening ``W`` (n, P, P), ``ln_scale`` (n,)
        (ln of the normalisation, W m-2 nm-1), G and the input flags."""
        n, n_xp = len(chunk), len(XP_WAVELENGTHS)
        source = source or XPSource(chunk, name, self.features, with_errors=True)
        if source.kind == "sampled" and "flux_error" not in chunk:
            raise UserError(f"{name}: no flux_error column (the fits weigh each sample by its "
                            f"error)")
        xp, xp_error = source(chunk)
        if xp_error is None:
            xp_error = np.full_like(xp, np.nan)
        cov_xp = None
        if source.kind == "sampled" and "flux_covariance" in chunk:
            index = np.searchsorted(sampled_grid(chunk, name), XP_WAVELENGTHS)
            cov_xp = np.asarray(chunk["flux_covariance"][:, index[:, None], index], np.float64)
        _, _, _, flags = self.features.raw(chunk, xp, xp_error)
        flux = np.empty((n, self.n_points))
        error = np.empty((n, self.n_points))
        flux[:, :n_xp], error[:, :n_xp] = xp, xp_error
        for j, (band, (_, zero)) in enumerate(TWO_MASS.items()):   # Eq. 5
            mag = float_column(chunk, band, n)
            sigma = float_column(chunk, TWO_MASS_ERRORS[band], n)
            sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, self.hyper.photometry_error)
            flux[:, n_xp + j] = zero * 10.0 ** (-0.4 * mag)
            error[:, n_xp + j] = flux[:, n_xp + j] * 0.4 * math.log(10.0) * sigma
        observed = np.isfinite(flux) & np.isfinite(error) & (error > 0)
        positive = observed[:, :n_xp] & (np.nan_to_num(flux[:, :n_xp]) > 0)
        with np.errstate(invalid="ignore", divide="ignore"):   # the mean positive XP flux
            scale = np.where(positive, flux[:, :n_xp], 0.0).sum(axis=1) / positive.sum(axis=1)
        # a spectrum: at least half the XP samples, its flux positive as a whole (usable_flux)
        usable = (np.isfinite(scale) & (observed[:, :n_xp].sum(axis=1) >= n_xp // 2)
                  & usable_flux(xp))
        scale = np.where(usable, scale, 1.0)
        observed &= usable[:, None]
        d = np.where(observed, flux / scale[:, None], 0.0)
        sigma = np.where(observed, error / scale[:, None], 0.0)
        cov = np.zeros((n, self.n_points, self.n_points))
        if cov_xp is not None:
            cov[:, :n_xp, :n_xp] = np.nan_to_num(cov_xp) / scale[:, None, None] ** 2
        else:
            cov[:, np.arange(n_xp), np.arange(n_xp)] = sigma[:, :n_xp] ** 2
        k = np.arange(n_xp, self.n_points)
        cov[:, k, k] = sigma[:, n_xp:] ** 2
        cov = covariance(d, cov, n_xp, XP_WAVELENGTHS < BP_LIMIT)
        cov = cov * observed[:, :, None] * observed[:, None, :]
        i = np.arange(self.n_points)
        cov[:, i, i] += np.where(observed, 0.0, MISSING_VARIANCE)
        # W's columns of missing points zeroed: W^T W is then C^-1 of the observed block,
        # and the missing points weigh nothing
        W = whitening(cov) * observed[:, None, :]
        flags = flags | np.where(usable, 0, FLAG_UNUSABLE)
        return {"d": d, "observed": observed, "W": W,
                "sigma": np.sqrt(np.diagonal(cov, axis1=1, axis2=2)),
                "ln_scale": np.log(scale), "flags": flags, "usable": usable}

    def parallax(self, chunk: Table) -> tuple[np.ndarray, np.ndarray]:
        n = len(chunk)
        plx, err = float_column(chunk, "parallax", n), float_column(chunk, "parallax_error", n)
        ok = np.isfinite(plx) & np.isfinite(err) & (err > 0)
        return np.where(ok, plx, np.nan), np.where(ok, err, np.nan)

    # -- 4. the model spectrum ------------------------------------------------------------

    def ln_flux(self, theta: torch.Tensor, ln_ext: torch.Tensor,
                ln_amplitude: torch.Tensor) -> torch.Tensor:
        """Eq. 1 / 8 in logarithms: ln f_abs(Theta) - E R + ln amplitude, where the
        amplitude is parallax^2 x unit / scale (absolute) or free (relative)."""
        r = torch.exp(self.network.ln_r)
        return self.network(theta) - torch.exp(ln_ext)[:, None] * r + ln_amplitude[:, None]

    def absolute_amplitude(self, ln_parallax: torch.Tensor,
                           ln_scale: torch.Tensor) -> torch.Tensor:
        """ln(parallax^2 x flux unit / normalisation): f_abs is the flux at 1 kpc, parallax
        in mas."""
        return 2 * ln_parallax + self.ln_unit - ln_scale

    @staticmethod
    def profiled(g_white: torch.Tensor, d_white: torch.Tensor) -> torch.Tensor:
        """The amplitude A minimising |d~ - A g~|^2, in closed form (relative mode)."""
        return ((g_white * d_white).sum(-1) / (g_white * g_white).sum(-1).clamp(min=1e-300)
                ).clamp(min=1e-30)

    # -- 5. training ----------------------------------------------------------------------

    @classmethod
    def create(cls, labels: list[str] | None, recipe: dict) -> "ForwardModel":
        try:
            hyper = Hyperparameters(**recipe.get("hyperparameters", {}))
        except TypeError as e:
            raise UserError(f"recipe: {e}") from None
        if labels and list(labels) != list(LABEL_NAMES):
            raise UserError(f"a forward model's labels are {','.join(LABEL_NAMES)} (ZGR23's "
                            f"Theta), not {','.join(labels)}")
        if recipe.get("ext_prior"):
            hyper.ext_prior = recipe["ext_prior"]
        return cls(LABEL_NAMES, hyper)

    def _ext_prior(self, table: Table, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The E prior of each training star from the ``ext_prior`` column: values outside
        ``ext_range`` (negative beyond noise, absurd) dropped, small negatives set to 0."""
        h = self.hyper
        if h.ext_prior not in table:
            raise UserError(f"{name}: no column {h.ext_prior!r} for the extinction prior "
                            f"(give --ext-prior COLUMN)")
        e = float_column(table, h.ext_prior, len(table))
        e = np.where((e >= h.ext_range[0]) & (e <= h.ext_range[1]), np.maximum(e, 0.0), np.nan)
        return e, np.sqrt(h.ext_error_floor ** 2 + (h.ext_error_fraction * e) ** 2)

    def fit_table(self, table: Table, name: str, trainer) -> dict:
        from xptools.train import Stage

        h = self.hyper
        y = label_array(table, self.labels, name)
        y_err = np.stack([float_column(table, f"{l}_err", len(table)) for l in self.labels], 1)
        y_err = np.maximum(np.where(np.isfinite(y_err), y_err, np.inf), h.label_error_floor)
        plx, plx_err = self.parallax(table)
        self.absolute = bool(np.isfinite(plx).sum() >= 20)
        e_obs, e_err = self._ext_prior(table, name)
        source = XPSource(table, name, self.features, with_errors=True)
        self.features.fit_zero_point(table, source(table)[0])   # for generate's G scaling
        data = self.data(table, name, source)
        keep = data["usable"] & np.isfinite(y).all(axis=1)
        if keep.sum() < 20:
            raise UserError(f"{name}: only {int(keep.sum())} rows with a usable spectrum and "
                            f"all of {', '.join(self.labels)}")
        self.label_range = [np.percentile(y[keep, j], [0.5, 99.5]).tolist()
                            for j in range(len(self.labels))]
        self.label_mean = y[keep].mean(axis=0).tolist()
        self.label_std = y[keep].std(axis=0).tolist()
        mean, std = np.asarray(self.label_mean), np.asarray(self.label_std)
        rows = np.flatnonzero(keep)
        t = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a)[rows], dtype=dtype)
        theta_obs = t((y - mean) / std)
        theta_err = t(y_err / std)
        e0 = np.where(np.isfinite(e_obs), np.maximum(e_obs, 0.01), 0.05)
        ext_obs, ext_err = t(np.nan_to_num(e_obs)), t(np.where(np.isfinite(e_obs), e_err, np.inf))
        W = t(data["W"])
        d_white = torch.einsum("nij,nj->ni", W, t(data["d"]))
        ln_scale = t(data["ln_scale"])
        plx_obs, plx_sigma = t(np.nan_to_num(plx, nan=1.0)), t(np.where(np.isfinite(plx),
                                                                       plx_err, np.inf))
        if self.absolute:   # the unit of f_abs: the median star's flux at 1 kpc
            ok = np.isfinite(plx[rows]) & (plx[rows] > 0)
            self.ln_unit = float(np.median(data["ln_scale"][rows][ok]
                                           - 2 * np.log(plx[rows][ok])))
        stars = StarLatents(theta_obs, t(np.log(e0)),
                            t(np.log(np.where(np.isfinite(plx) & (plx > 0), plx, 1.0))))
        torch.manual_seed(trainer.seed)
        self.network = self._network()
        with torch.no_grad():   # start: the mean spectrum, and R ~ lambda^-1.7 scaled to A_K
            ln_d = np.log(np.where(data["d"][rows] > 0, data["d"][rows], np.nan))
            if self.absolute:
                ln_d = ln_d - (2 * np.log(np.where(np.isfinite(plx[rows]) & (plx[rows] > 0),
                                                   plx[rows], np.nan)) + self.ln_unit
                               - data["ln_scale"][rows])[:, None]
            self.network.mlp[-1].bias.copy_(torch.as_tensor(np.nan_to_num(
                np.nanmedian(ln_d, axis=0)), dtype=torch.float32))
            self.network.ln_r.copy_(torch.as_tensor(np.log(
                (self.wavelengths / 2159.0) ** -1.7 / MAG_PER_NEPER), dtype=torch.float32))
        module = nn.ModuleDict({"network": self.network, "stars": stars})
        n_points = self.n_points

        def per_star(index: torch.Tensor, free: bool) -> tuple[torch.Tensor, torch.Tensor]:
            """chi2 (Eq. 4) and the training prior terms of stars ``index``: Gaussians
            tying the latents to the measured labels, E prior and parallax, and the Jacobian
            terms of the logarithmic latents (Eq. 13-14)."""
            theta = stars.theta[index] if free else theta_obs[index]
            ln_ext = stars.ln_ext[index]
            if not free:
                ln_ext = ln_ext.detach()
            if self.absolute:
                ln_plx = stars.ln_parallax[index] if free else stars.ln_parallax[index].detach()
                ln_a = self.absolute_amplitude(ln_plx, ln_scale[index])
            else:
                ln_a = torch.zeros(len(index))
            g = torch.exp(self.ln_flux(theta, ln_ext, ln_a))
            g_white = torch.einsum("nij,nj->ni", W[index], g)
            if not self.absolute:
                g_white = g_white * self.profiled(g_white, d_white[index])[:, None]
            chi2 = ((d_white[index] - g_white) ** 2).sum(-1)
            prior = torch.zeros_like(chi2)
            if free:
                ext = torch.exp(ln_ext)
                prior = (((theta - theta_obs[index]) / theta_err[index]) ** 2).sum(-1) \
                    + ((ext - ext_obs[index]) / ext_err[index]) ** 2 \
                    - 2 * ln_ext                            # the Jacobian of ln E (Eq. 13-14)
                if self.absolute:
                    plx_ = torch.exp(stars.ln_parallax[index])
                    prior = prior + ((plx_ - plx_obs[index]) / plx_sigma[index]) ** 2 \
                        - 2 * stars.ln_parallax[index]      # the Jacobian of ln parallax
            return chi2, prior

        def stage_loss(free: bool):
            def loss(batch, training):
                chi2, prior = per_star(batch["index"], free)
                value = (chi2 + prior).mean() / n_points
                return value, {"chi2": float(chi2.detach().mean())}
            return loss

        def trainable(network: bool, latents: bool) -> None:
            for p in self.network.parameters():
                p.requires_grad_(network)
            for p in stars.parameters():
                p.requires_grad_(latents)

        def stage(name, index, free, epochs, monitor=None):
            return trainer.run(Stage(name, module, stage_loss(free),
                                     {"index": torch.as_tensor(index)},
                                     {"index": torch.as_tensor(monitor)}
                                     if monitor is not None else None,
                                     epochs=epochs, batch_size=h.batch_size, lr=h.lr,
                                     weight_decay=0.0, patience=h.patience if monitor is not None
                                     else None))

        everyone = np.arange(len(rows))
        monitor = monitor_split(table.rows(rows), h.monitor_fraction, trainer.seed)
        good = ((y_err[rows] <= np.asarray(h.high_quality_error)).all(axis=1)
                & np.isfinite(e_obs[rows]))
        if self.absolute:   # stage 1 holds the latents at the measured values: a parallax
            good &= np.isfinite(plx[rows]) & (plx[rows] > 0)
        trainable(True, False)                          # 1. high-quality stars, network only
        stage("network", everyone[good & ~monitor], False, h.network_epochs,
              everyone[good & monitor])
        trainable(True, True)                           # 2. joint fit
        stage("joint", everyone[good], True, h.joint_epochs)
        stage("all", everyone, True, h.all_epochs)      # 3. all stars
        with torch.no_grad():                           # 4. self-cleaning
            pull = ((stars.theta - theta_obs) / theta_err).abs().amax(-1).numpy()
            residual = self._residual_sigmas(stars, torch.as_tensor(everyone), W, d_white,
                                             ln_scale, data, rows)
        clean = (pull <= h.clean_labels) & (residual <= h.clean_flux)
        stage("retrain", everyone[clean], True, h.retrain_epochs)   # 5. retrain
        trainable(False, True)                          # 6. final per-star refinement
        stage("refine", everyone, True, h.refine_epochs)
        self.network.requires_grad_(False).double().eval()   # fitted: the fits read it
        prior_rows = clean if clean.sum() >= 10 * h.gmm_components else np.ones_like(clean)
        self._fit_prior(y[rows][prior_rows], trainer.seed)
        return {"rows": int(len(table)), "fitted_rows": int(len(rows)),
                "high_quality_rows": int(good.sum()), "monitor_rows": int((good & monitor).sum()),
                "train_rows": int(len(rows)), "clean_rows": int(clean.sum()),
                "cleaned_fraction": round(float(1 - clean.mean()), 4),
                "cleaned_by_labels": round(float((pull > h.clean_labels).mean()), 4),
                "cleaned_by_flux": round(float((residual > h.clean_flux).mean()), 4),
                "mode": "absolute" if self.absolute else "relative"}

    def _residual_sigmas(self, stars, index, W, d_white, ln_scale, data, rows) -> np.ndarray:
        """Each star's largest |data - model| / sigma over its observed points (stage 4)."""
        if self.absolute:
            ln_a = self.absolute_amplitude(stars.ln_parallax[index], ln_scale[index])
        else:
            ln_a = torch.zeros(len(index))
        g = torch.exp(self.ln_flux(stars.theta[index], stars.ln_ext[index], ln_a))
        if not self.absolute:
            g = g * self.profiled(torch.einsum("nij,nj->ni", W[index], g), d_white[index])[:, None]
        z = np.abs(data["d"][rows] - g.numpy()) / data["sigma"][rows]
        return np.where(data["observed"][rows], z, 0.0).max(axis=1)

    def _fit_prior(self, labels: np.ndarray, seed: int) -> None:
        """The 16-component GMM of the clean training stars' measured labels (Sec. 4.1; all
        stars' when fewer than 10 per component are clean), in standardised labels, and the
        ln p that encloses 99.9% of its mass (Table 2)."""
        from sklearn.mixture import GaussianMixture

        mean, std = np.asarray(self.label_mean), np.asarray(self.label_std)
        gmm = GaussianMixture(self.hyper.gmm_components, covariance_type="full",
                              random_state=seed, reg_covar=1e-4).fit((labels - mean) / std)
        self.gmm = {"weights": torch.as_tensor(gmm.weights_), "means": torch.as_tensor(
            gmm.means_), "covariances": torch.as_tensor(gmm.covariances_)}
        draws = gmm.sample(100_000)[0]
        ln_p = self.ln_prior(torch.as_tensor(draws)).numpy()
        self.ln_prior_cut = float(np.quantile(ln_p, 0.001))

    # -- 6. per-star fits -----------------------------------------------------------------

    def ln_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """ln p_GMM of standardised labels (n, L), in standardised units."""
        w, mu, cov = self.gmm["weights"], self.gmm["means"], self.gmm["covariances"]
        dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
        return torch.logsumexp(dist.log_prob(theta.to(torch.float64)[:, None, :])
                               + torch.log(w), dim=1)

    def _prior_terms(self, theta: torch.Tensor):
        """-2 ln p_GMM: its gradient and Gauss-Newton Hessian (responsibility-weighted
        precisions), per star."""
        w, mu, cov = self.gmm["weights"], self.gmm["means"], self.gmm["covariances"]
        precision = torch.linalg.inv(cov)
        dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
        log_r = dist.log_prob(theta[:, None, :]) + torch.log(w)
        resp = torch.softmax(log_r, dim=1)                                     # (n, K)
        diff = theta[:, None, :] - mu[None]                                    # (n, K, L)
        grad = 2 * torch.einsum("nk,kij,nkj->ni", resp, precision, diff)
        hess = 2 * torch.einsum("nk,kij->nij", resp, precision)
        return -2 * torch.logsumexp(log_r, dim=1), grad, hess

    def _objective(self, p: torch.Tensor, batch: dict, jacobian: bool):
        """The per-star loss of Eq. 17 at parameters p = (theta, ln E, ln A or ln parallax),
        its whitened residual, and (with ``jacobian``) the gradient and Gauss-Newton Hessian."""
        n_l = len(self.labels)
        theta, ln_ext, ln_a = p[:, :n_l], p[:, n_l], p[:, n_l + 1]
        amplitude = (self.absolute_amplitude(ln_a, batch["ln_scale"]) if self.absolute
                     else ln_a)
        with torch.no_grad():
            net = self.network                  # float64 (fit_stars)
            if jacobian:
                ln_f, jac_theta = net.with_jacobian(theta)                     # (n, P, L)
            else:
                ln_f = net(theta)
            r = torch.exp(net.ln_r)
            m = torch.exp(ln_f - torch.exp(ln_ext)[:, None] * r + amplitude[:, None])
            residual = batch["d_white"] - (batch["W"] @ m[:, :, None])[:, :, 0]
            chi2 = (residual ** 2).sum(-1)
            prior, g_prior, h_prior = self._prior_terms(theta)
            loss = chi2 + prior - 2 * ln_ext
            if self.absolute:
                loss = loss - 2 * ln_a + parallax_term(ln_a, batch)[0]
        if not jacobian:
            return loss, chi2, prior, residual, None, None
        d_ln_m = torch.cat([jac_theta, (-torch.exp(ln_ext)[:, None] * r)[:, :, None],
                            torch.full_like(m[:, :, None], 2.0 if self.absolute else 1.0)], -1)
        jac = batch["W"] @ (m[:, :, None] * d_ln_m)                           # whitened
        grad = -2 * (jac.transpose(1, 2) @ residual[:, :, None])[:, :, 0]
        hess = 2 * jac.transpose(1, 2) @ jac
        fisher = hess / 2                                                       # Eq. 21
        grad[:, :n_l] += g_prior
        hess[:, :n_l, :n_l] += h_prior
        grad[:, n_l] += -2.0
        if self.absolute:
            _, g_plx, h_plx = parallax_term(ln_a, batch)
            grad[:, n_l + 1] += g_plx - 2.0
            hess[:, n_l + 1, n_l + 1] += h_plx
            fisher[:, n_l + 1, n_l + 1] += h_plx / 2                            # Eq. 22
        return loss, chi2, prior, residual, (grad, hess), fisher

    def _start(self, batch: dict, draws: int, n_ext: int, seed: int = 0) -> torch.Tensor:
        """The grid start (Sec. 4.2): GMM draws x geometric E values, the amplitude (or
        parallax) profiled; per star the lowest loss."""
        h = self.hyper
        generator = np.random.default_rng(seed)
        w = self.gmm["weights"].numpy()
        component = generator.choice(len(w), size=draws, p=w / w.sum())
        chol = np.linalg.cholesky(self.gmm["covariances"].numpy())
        theta = (self.gmm["means"].numpy()[component]
                 + np.einsum("kij,kj->ki", chol[component],
                             generator.standard_normal((draws, len(self.labels)))))
        ext = np.geomspace(h.ext_bounds[0] * 3, h.ext_bounds[1] / 2, n_ext)
        theta_t = torch.as_tensor(theta)
        with torch.no_grad():
            ln_f = self.network(theta_t)                                        # (K, P)
            r = torch.exp(self.network.ln_r)
            ln_m = ln_f[:, None, :] - torch.as_tensor(ext)[None, :, None] * r   # (K, M, P)
            g = torch.exp(ln_m).reshape(-1, ln_f.shape[1]).float()               # (KM, P)
            g_white = (batch["W"].float() @ g.T).transpose(1, 2)               # (n, KM, P)
            d_white = batch["d_white"].float()
            gd = (g_white @ d_white[:, :, None])[:, :, 0]
            gg = (g_white ** 2).sum(-1)
            amplitude = (gd / gg.clamp(min=1e-30)).clamp(min=1e-30)
            chi2 = (d_white ** 2).sum(-1)[:, None] - gd * amplitude
            ln_amplitude = torch.log(amplitude).double()
            prior = -2 * self.ln_prior(theta_t)                                  # (K,)
            loss = chi2.double() + prior.repeat_interleave(n_ext)[None] \
                - 2 * torch.log(torch.as_tensor(ext)).repeat(draws)[None]
            if self.absolute:   # amplitude = parallax^2 unit / scale
                ln_plx = (ln_amplitude - self.ln_unit + batch["ln_scale"][:, None]) / 2
                loss = loss - 2 * ln_plx + parallax_term(ln_plx, batch)[0]
            best = torch.argmin(loss, dim=1)
            k, e = best // n_ext, best % n_ext
            last = (ln_plx if self.absolute else ln_amplitude).gather(1, best[:, None])[:, 0]
        return torch.cat([theta_t[k], torch.log(torch.as_tensor(ext))[e][:, None],
                          last[:, None]], 1)

    def fit_stars(self, chunk: Table, name: str, source: XPSource | None = None,
                  advance=None) -> dict:
        """Per-star fits (Sec. 4) of every row: labels, ext, ebv (and parallax) with errors,
        chi2, dof, ln_prior, the covariance, and infer_flag bits."""
        data = self.data(chunk, name, source)
        n, n_l = len(chunk), len(self.labels)
        n_p = n_l + 2
        plx, plx_err = self.parallax(chunk)
        p_all = np.full((n, n_p), np.nan)
        cov_all = np.full((n, n_p, n_p), np.nan)
        chi2_all, prior_all = np.full(n, np.nan), np.full(n, np.nan)
        converged_all = np.zeros(n, bool)
        positive_all = np.zeros(n, bool)
        usable = np.flatnonzero(data["usable"])
        for s in range(0, len(usable), 512):
            rows = usable[s:s + 512]
            p, fisher, converged, chi2, prior = self._optimise(self.batch(data, rows, plx,
                                                                          plx_err))
            p_all[rows], chi2_all[rows], prior_all[rows] = p, chi2, prior
            converged_all[rows] = converged
            fisher = torch.as_tensor(fisher)
            finite = torch.isfinite(fisher).all(dim=2).all(dim=1).numpy()
            positive_all[rows[finite]] = (torch.linalg.cholesky_ex(fisher[finite]).info
                                          == 0).numpy()
            cov_all[rows[finite]] = torch.linalg.pinv(fisher[finite], hermitian=True).numpy()
            if advance is not None:
                advance(len(rows))
        if advance is not None:
            advance(n - len(usable))
        return self._outputs(p_all, cov_all, chi2_all, prior_all, converged_all,
                             positive_all, data, plx, plx_err)

    @staticmethod
    def batch(data: dict, rows: np.ndarray, plx: np.ndarray, plx_err: np.ndarray) -> dict:
        """Rows of `data` as the fits take them: W, whitened data, ln scale, parallax."""
        W = torch.as_tensor(data["W"][rows])
        seen = np.isfinite(plx[rows])
        return {"W": W, "d_white": (W @ torch.as_tensor(data["d"][rows])[:, :, None])[:, :, 0],
                "ln_scale": torch.as_tensor(data["ln_scale"][rows]),
                "plx": torch.as_tensor(np.where(seen, plx[rows], 0.0)),
                "plx_inv": torch.as_tensor(np.where(seen, 1 / plx_err[rows] ** 2, 0.0))}

    def _optimise(self, batch: dict):
        """Batched Levenberg-Marquardt from the grid start (Sec. 4.2)."""
        h = self.hyper
        n_l = len(self.labels)
        p = self._start(batch, h.grid_draws, h.grid_ext)
        low = torch.tensor([-8.0] * n_l + [math.log(h.ext_bounds[0]), -np.inf],
                           dtype=torch.float64)
        high = torch.tensor([8.0] * n_l + [math.log(h.ext_bounds[1]), np.inf],
                            dtype=torch.float64)
        damping = torch.full((len(p),), 1e-3, dtype=torch.float64)
        loss, *_ = self._objective(p, batch, False)
        change = torch.full_like(loss, np.inf)
        active = torch.ones(len(p), dtype=torch.bool)   # stars still moving
        for iteration in range(h.iterations):
            rows = torch.nonzero(active)[:, 0]
            if not len(rows):
                break
            sub = {k: v[rows] for k, v in batch.items()}
            _, _, _, _, (grad, hess), _ = self._objective(p[rows], sub, True)
            diagonal = torch.diagonal(hess, dim1=1, dim2=2)
            step, info = torch.linalg.solve_ex(hess + torch.diag_embed(
                damping[rows, None] * diagonal + 1e-9), -grad[..., None])
            step = torch.where((info == 0)[:, None], step[..., 0], torch.zeros_like(p[rows]))
            trial = torch.minimum(torch.maximum(p[rows] + step, low), high)
            new, *_ = self._objective(trial, sub, False)
            better = new < loss[rows]
            change[rows] = torch.where(better, loss[rows] - new, torch.zeros_like(new))
            p[rows] = torch.where(better[:, None], trial, p[rows])
            loss[rows] = torch.where(better, new, loss[rows])
            damping[rows] = torch.where(better, damping[rows] / 3,
                                        damping[rows] * 5).clamp(1e-9, 1e9)
            if iteration >= 2:   # converged: an accepted step that gained < 1e-4, or stuck
                active[rows] = ~((better & (change[rows] < 1e-4)) | (damping[rows] >= 1e8))
        _, chi2, prior, _, (grad, hess), fisher = self._objective(p, batch, True)
        step = torch.linalg.lstsq(hess, -grad[..., None]).solution[..., 0]
        converged = (change < 1e-2) & ((grad * step).abs().sum(-1) < 1e-2)
        return p.numpy(), fisher.numpy(), converged.numpy(), chi2.numpy(), prior.numpy()

    def _outputs(self, p, cov, chi2, prior, converged, positive, data, plx, plx_err) -> dict:
        n_l = len(self.labels)
        mean, std = np.asarray(self.label_mean), np.asarray(self.label_std)
        usable = data["usable"]
        values, errors = {}, {}
        for j, label in enumerate(self.labels):
            values[label] = p[:, j] * std[j] + mean[j]
            errors[label] = np.sqrt(np.abs(cov[:, j, j])) * std[j]
        ext = np.exp(p[:, n_l])
        values["ext"], errors["ext"] = ext, ext * np.sqrt(np.abs(cov[:, n_l, n_l]))
        colour = self.colour_excess_factor()
        values["ebv"], errors["ebv"] = ext * colour, errors["ext"] * abs(colour)
        if self.absolute:
            parallax = np.exp(p[:, n_l + 1])
            values["parallax"] = parallax
            errors["parallax"] = parallax * np.sqrt(np.abs(cov[:, n_l + 1, n_l + 1]))
        dof = data["observed"].sum(axis=1) - p.shape[1]
        flags = data["flags"].copy()
        with np.errstate(invalid="ignore"):
            flags |= np.where(usable & (chi2 / np.maximum(dof, 1) > self.hyper.chi2_limit),
                              FLAG_FIT_CHI2, 0)
            ln_prior = prior / -2 - np.log(std).sum()   # in label units (K, dex, dex)
            flags |= np.where(usable & (prior / -2 < self.ln_prior_cut), FLAG_LOW_PRIOR, 0)
            tension = np.abs(values.get("parallax", np.nan) - plx) > \
                self.hyper.parallax_sigma * plx_err
            flags |= np.where(usable & tension, FLAG_PARALLAX_TENSION, 0)
            flags |= np.where(usable & ~(converged & positive), FLAG_NOT_CONVERGED, 0)
            bound = np.log(self.hyper.ext_bounds)
            at_bound = (np.abs(p[:, n_l] - bound[0]) < 1e-3) | (np.abs(p[:, n_l] - bound[1]) < 1e-3)
            flags |= np.where(usable & at_bound, FLAG_EXT_AT_BOUND, 0)
            for j, label in enumerate(self.labels):
                lo, hi = self.label_range[j]
                flags |= np.where(usable & ((values[label] < lo) | (values[label] > hi)),
                                  FLAG_OUT_OF_RANGE, 0)
        for name in values:
            values[name] = np.where(usable, values[name], np.nan)
            errors[name] = np.where(usable, errors[name], np.nan)
        # the covariance in output units: labels, ext (and parallax)
        jac = np.zeros((len(p), p.shape[1]))
        jac[:, :n_l] = std
        jac[:, n_l] = ext
        jac[:, n_l + 1] = values.get("parallax", np.zeros(len(p))) if self.absolute else 0.0
        keep = p.shape[1] if self.absolute else p.shape[1] - 1
        out_cov = (jac[:, :, None] * cov * jac[:, None, :])[:, :keep, :keep]
        return {"values": values, "errors": errors, "chi2": np.where(usable, chi2, np.nan),
                "dof": np.where(usable, dof, 0), "ln_prior": np.where(usable, ln_prior, np.nan),
                "covariance": out_cov, "flags": flags}

    # -- generating spectra and the curve -------------------------------------------------

    def colour_excess_factor(self) -> float:
        """E(B-V) per unit E: 1.0857 (R(442 nm) - R(552 nm)), magnitudes from exp(-E R)."""
        r = self.extinction_curve()
        at = lambda w: float(np.interp(w, self.wavelengths[:len(XP_WAVELENGTHS)],
                                       r[:len(XP_WAVELENGTHS)]))
        return MAG_PER_NEPER * (at(442.0) - at(552.0))

    def extinction_curve(self) -> np.ndarray:
        return torch.exp(self.network.ln_r.detach()).double().numpy()

    def spectra(self, labels: np.ndarray, ext: np.ndarray,
                parallax: np.ndarray | None = None) -> np.ndarray:
        """Model flux (n, P) for labels (n, L) and E (n,): at parallax (mas) in absolute
        mode, else in the network's relative units (a star of mean XP flux ~1)."""
        theta = torch.as_tensor((labels - np.asarray(self.label_mean))
                                / np.asarray(self.label_std))
        with torch.no_grad():
            ln_a = torch.zeros(len(labels), dtype=torch.float64)
            if self.absolute:
                ln_a = self.absolute_amplitude(torch.log(torch.as_tensor(parallax)),
                                               torch.zeros(len(labels), dtype=torch.float64))
            ln_e = torch.log(torch.as_tensor(np.maximum(ext, 1e-300)))
            return torch.exp(self.ln_flux(theta, ln_e, ln_a)).numpy()

    # -- reports --------------------------------------------------------------------------

    def evaluate(self, table: Table, name: str) -> dict:
        from xptools.metrics import label_metrics, sigma_mad

        fit = self.fit_stars(table, name)
        y = label_array(table, self.labels, name)
        report = {"file": name, "rows": int(len(table)), "mode": self.to_config()["mode"]}
        teff = y[:, 0]
        clean = fit["flags"] & (FLAG_UNUSABLE | FLAG_FIT_CHI2 | FLAG_NOT_CONVERGED) == 0
        for subset, rows in (("all", np.ones(len(table), bool)), ("teff<7000", teff < 7000)):
            report[subset] = {}
            for j, label in enumerate(self.labels):
                v, e = fit["values"][label][rows], fit["errors"][label][rows]
                err = f"{label}_err"
                ref_error = np.asarray(table[err], float)[rows] if err in table else None
                report[subset][label] = label_metrics(v, e, v - e, v + e, y[rows, j], ref_error)
        e_obs = (self._ext_prior(table, name)[0] if self.hyper.ext_prior in table
                 else np.full(len(table), np.nan))   # no prior column: no ext figures
        ok = np.isfinite(e_obs) & np.isfinite(fit["values"]["ext"]) & (teff < 7000)
        d = fit["values"]["ext"][ok] - e_obs[ok]
        report["ext"] = {"n": int(ok.sum()), "sigma_mad": sigma_mad(d),
                         "bias": float(np.median(d))}
        ratio = fit["chi2"] / np.maximum(fit["dof"], 1)
        # clean stars: Teff < 7000 K, a complete spectrum, no BP/RP flux excess
        good = (teff < 7000) & np.isfinite(ratio) & (
            fit["flags"] & (FLAG_FLUX_EXCESS | FLAG_PARTIAL_XP | FLAG_UNUSABLE) == 0)
        report["chi2_dof"] = {"n": int(good.sum()), "median": float(np.median(ratio[good])),
                              "p16": float(np.percentile(ratio[good], 16)),
                              "p84": float(np.percentile(ratio[good], 84)),
                              "flagged_fraction": float(np.mean(ratio[good] >
                                                                self.hyper.chi2_limit)),
                              "converged_fraction": float(np.mean(clean[good]))}
        report["curve"] = self.curve_comparison()
        return report

    def curve_comparison(self) -> dict:
        """The normalised learned curve against CCM R_V = 3.1 over 400..990 nm."""
        w = self.wavelengths
        table = curve_table(self)
        over = (w >= 400) & (w <= 990)
        learned = table["r_normalised"][over]
        ccm = table["ccm_normalised"][over]
        rel = (learned - ccm) / ccm
        return {"max_relative_difference": float(np.max(np.abs(rel))),
                "rms_relative_difference": float(np.sqrt(np.mean(rel ** 2))),
                "colour_excess_factor": self.colour_excess_factor()}

    def report_text(self, report: dict) -> str:
        from xptools.metrics import report_table

        e, c, k = report["ext"], report["chi2_dof"], report["curve"]
        return "\n".join([
            report_table(report, ["all", "teff<7000"]), "",
            f"ext - {self.hyper.ext_prior} (Teff < 7000 K, N={e['n']}): sigma_MAD "
            f"{e['sigma_mad']:.4f}, bias {e['bias']:+.4f}",
            f"chi2/dof (clean: Teff < 7000 K, complete XP, no flux excess; N={c['n']}): "
            f"median {c['median']:.3f} (16-84%: {c['p16']:.3f}.."
            f"{c['p84']:.3f}); above {self.hyper.chi2_limit:g}: {c['flagged_fraction']:.3f}; "
            f"converged, not flagged: {c['converged_fraction']:.3f}",
            f"learned curve vs CCM R_V=3.1, (R - R(Ks)) / (R(442) - R(552)) over 400..990 "
            f"nm: max |relative difference| {k['max_relative_difference']:.3f}, rms "
            f"{k['rms_relative_difference']:.3f}"])

    def card(self, report: dict | None) -> str:
        h, p = self.hyper, self.provenance
        n_params = sum(t.numel() for t in self.network.parameters())
        mode = "absolute" if self.absolute else "relative"
        lines = [
            f"# Forward model ({mode}): {', '.join(self.labels)} + extinction -> XP + 2MASS", "",
            "Model kind `forward` (Zhang, Green & Rix 2023): f = f_abs(Theta) x "
            + ("parallax^2" if self.absolute else "A (a per-star amplitude, profiled)")
            + " x exp(-E R(lambda)); per-star fits give the labels, E (`ext`), E(B-V) (`ebv`)"
            + (", parallax" if self.absolute else "") + ", chi2 and flags.", "",
            "## Data vector", "",
            "- XP flux at 392..992 nm every 10 nm (61 samples), 2MASS J, H, Ks as "
            "monochromatic f_lambda (Cohen et al. 2003 zero points); normalised per star by "
            "its mean XP flux",
            f"- covariance: the input's (sampled flux_covariance when present, else the "
            f"diagonal errors), + 0.5% per point, 0.5% XP zero point, 0.1% BP (< 640 nm) and "
            f"RP zero points; 2MASS errors from *_msigcom or {h.photometry_error} mag; "
            f"eigenvalues floored at {EIGENVALUE_FLOOR:g}", "",
            "## Training", "",
            f"- data: {p.get('train_file')} (sha256 {str(p.get('train_sha256'))[:16]}...), "
            f"{p.get('fitted_rows')} stars with a usable spectrum and all labels, of which "
            f"{p.get('high_quality_rows')} high quality (label errors <= "
            f"{h.high_quality_error}); {p.get('monitor_rows')} of those held out (hash of "
            f"source_id) for early stopping of stage 1",
            f"- network: {h.layers} x {h.hidden} tanh, {n_params:,} parameters with ln R",
            f"- E prior: column {h.ext_prior}, values in {h.ext_range} (negatives set to 0), "
            f"sigma = sqrt({h.ext_error_floor}^2 + ({h.ext_error_fraction} E)^2); label "
            f"error floors {h.label_error_floor}",
            f"- stages (ZGR23 Table 1): network {h.network_epochs}, joint {h.joint_epochs}, "
            f"all {h.all_epochs}, cleaning (> {h.clean_labels} sigma from a label or a flux "
            f"residual > {h.clean_flux} sigma: {p.get('cleaned_fraction')} of stars; labels "
            f"{p.get('cleaned_by_labels')}, flux {p.get('cleaned_by_flux')}), retrain "
            f"{h.retrain_epochs}, refine {h.refine_epochs} epochs; AdamW lr {h.lr}, batch "
            f"{h.batch_size}",
            f"- prior of the fits: {h.gmm_components}-component GMM of the clean stars' "
            f"labels; ln_prior cut (99.9% of its mass) {self.ln_prior_cut:.3f} "
            f"(standardised units)",
            f"- seed {p.get('seed')}; {p.get('train_seconds')} s of training; xptools "
            f"{p.get('xptools')}; `{p.get('command')}`", ""]
        if report:
            lines += [f"## Validation: {report['file']} ({report['rows']} rows)", "",
                      self.report_text(report), ""]
        else:
            lines += models.NO_VALIDATION
        lines += ["## Known limits", ""]
        if not self.absolute:
            lines += ["- Relative mode (no parallax in the training data): the luminosity "
                      "is not constrained, so log g rests on the spectrum's shape and the "
                      "2MASS colours, and R's grey part is not identified: only R - R(Ks) "
                      "means anything."]
        lines += ["- The errors are the Fisher matrix's: the data's noise, not the model's own "
                  "error, which only enters through the 0.5% terms of the covariance; the z "
                  "columns of the validation table say how much wider the real scatter is.",
                  "- E is on the scale of the prior column "
                  f"({h.ext_prior}, APOGEE's A_K-like targeting estimate), not E(B-V); "
                  "`ebv` converts it with the learned curve.",
                  "- Trained on APOGEE DR17 stars (mostly giants); hot stars and metal-poor "
                  "stars are few: their fits are less reliable.", ""]
        return "\n".join(lines)


def parallax_term(ln_p: torch.Tensor, batch: dict):
    """(parallax - parallax_obs)^2 / sigma^2 at ln parallax ``ln_p`` (n,) or (n, K): value,
    gradient and Gauss-Newton Hessian in ln parallax (Eq. 17); 0 for rows without one."""
    obs, inv = batch["plx"], batch["plx_inv"]
    if ln_p.dim() == 2:
        obs, inv = obs[:, None], inv[:, None]
    p = torch.exp(ln_p)
    return (p - obs) ** 2 * inv, 2 * (p - obs) * inv * p, 2 * p * p * inv


def curve_table(model: ForwardModel) -> dict[str, np.ndarray]:
    """The learned extinction curve: wavelength, R, R normalised as (R - R(Ks)) /
    (R(442) - R(552)), and CCM R_V = 3.1 normalised alike, (A - A(Ks)) / E(B-V)."""
    w = model.wavelengths
    r = model.extinction_curve()
    xp = slice(0, len(XP_WAVELENGTHS))
    at = lambda values, nm: float(np.interp(nm, w[xp], values[xp]))
    ks = r[-1]
    learned = (r - ks) / (at(r, 442.0) - at(r, 552.0))
    a = ccm89(w, 3.1)
    ccm = (a - a[-1]) / (ccm89(np.array([442.0]))[0] - ccm89(np.array([552.0]))[0])
    return {"wavelength": w, "r": r, "r_normalised": learned, "ccm_normalised": ccm}
