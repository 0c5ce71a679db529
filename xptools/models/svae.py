"""Scatter VAE (Laroche & Speagle 2024, "Closing the stellar labels gap", arXiv:2404.07316).

A variational autoencoder that learns XP spectra without any stellar label: a 6-d latent space
that orders stars by their physics, a decoder back to the spectrum, and a second decoder for a
per-star, per-feature "scatter" that absorbs what the model cannot fit. Read top to bottom:

1. inputs    - the XP flux on a wavelength grid (a subset of GaiaXPy's default one) divided by
               the G-band flux 10^(-0.4 G), the paper's normalisation of its coefficients applied
               to sampled spectra; each feature standardised with the training median and IQR,
               its error sigma scaled the same way (`FeatureSpec`, transform "linear").
2. encoder   - F -> 90 -> 70 -> 50 -> 30 -> 10 with GELU (the paper's 110 inputs become the
               F features here), then two linear maps to the mean mu and the log-variance
               log sigma'^2 of a 6-d Gaussian; z = mu + sigma' * eps with eps ~ N(0, 1)
               (the reparametrisation of Kingma & Welling 2014; the paper's printed form is a
               typo).
3. decoders  - two mirror images of the encoder with their own weights, 6 -> 10 -> ... -> 90 -> F:
               the spectrum x_hat, and through a sigmoid the scatter s_hat, 0 < s_hat < 1 in
               standardised units.
4. loss      - the paper's Eqs. (1)-(5), as written there:
                   chi2~ = <(x - x_hat)^2 / (sigma^2 + s_hat^2)> + <log(sigma^2 + s_hat^2)>
                   KL    = <mu^2 + sigma'^2 - 1 - log sigma'^2>
                   loss  = chi2~ + KL,
               <.> the mean over stars and features (chi2~) or latent dimensions (KL).
5. training  - AdamW, cosine annealing with warm restarts from 1e-4 down to 1e-10; the best
               epoch on a monitor set (5% of the stars, by source_id hash) is kept.
6. use       - embed: z = mu and z_error = sigma'; generate: (x_hat, s_hat) of any z;
               reconstruct: decode mu, give each star its chi2 = <(x - x_hat)^2 /
               (sigma^2 + s_hat^2)> over features, and an outlier percentile among the
               training stars (`outlier_statistics`; their distributions are stored in the
               config).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from xptools import models
from xptools.errors import UserError
from xptools.flags import FLAG_NO_ERRORS, FLAG_UNUSABLE, FLUX_EXCESS_LIMIT
from xptools.io import Table
from xptools.metrics import sigma_mad
from xptools.models.features import (GAIA_MAGNITUDES, FeatureSpec, XPSource, flux_excess_of,
                                     label_array, monitor_split)

PERCENTILES = np.linspace(0.0, 100.0, 1001)   # where the training score distributions are stored
OUTLIER_SCORES = ("excess", "worst", "combined")
REPORT_LABELS = ("teff", "logg", "fe_h", "alpha_m")  # used for the report when present
RECONSTRUCTION_WINDOW = (400.0, 1000.0)       # nm, where the fractional residual is measured


def _hidden(dims: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return layers


class ScatterVAENetwork(nn.Module):
    def __init__(self, n_features: int, widths: list[int], latent: int):
        super().__init__()
        self.encoder = nn.Sequential(*_hidden([n_features, *widths]))
        self.mu = nn.Linear(widths[-1], latent)
        self.log_var = nn.Linear(widths[-1], latent)
        mirror = [latent, *widths[::-1]]                       # 6, 10, 30, 50, 70, 90
        self.spectrum = nn.Sequential(*_hidden(mirror), nn.Linear(widths[0], n_features))
        self.scatter = nn.Sequential(*_hidden(mirror), nn.Linear(widths[0], n_features),
                                     nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.log_var(h)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.spectrum(z), self.scatter(z)

    def forward(self, x: torch.Tensor):
        mu, log_var = self.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)   # reparametrisation
        x_hat, s_hat = self.decode(z)
        return mu, log_var, x_hat, s_hat


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """The mean over stars of the mean ("mean") or the sum ("sum") over the second axis."""
    return values.mean() if reduction == "mean" else values.sum(dim=1).mean()


def scatter_chi2(x: torch.Tensor, sigma: torch.Tensor, x_hat: torch.Tensor,
                 s_hat: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """chi2~ of Laroche & Speagle (2024), Eqs. (1)-(2): the chi2 with the scatter added to the
    errors in quadrature, plus the log of that variance (a Gaussian negative log-likelihood up
    to a constant, so the scatter cannot grow without cost)."""
    variance = sigma ** 2 + s_hat ** 2
    return _reduce((x - x_hat) ** 2 / variance + torch.log(variance), reduction)


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor,
                  reduction: str = "mean") -> torch.Tensor:
    """KL term of Laroche & Speagle (2024), Eqs. (3)-(4): twice the KL divergence of
    N(mu, sigma'^2) from N(0, 1), per latent dimension, averaged over stars."""
    return _reduce(mu ** 2 + log_var.exp() - 1 - log_var, reduction)


def outlier_statistics(x: np.ndarray, sigma: np.ndarray, x_hat: np.ndarray,
                       s_hat: np.ndarray) -> dict[str, np.ndarray]:
    """Per-star statistics of the residual r = x - x_hat against v = sigma^2 + s_hat^2:

    - chi2   = <r^2 / v>, the first term of chi2~ (Eq. 1);
    - excess = <r^2 / v + log(v / sigma^2)>: chi2~ (Eqs. 1-2) minus its value for a perfect
               fit with no scatter, log sigma^2, which only reflects the star's brightness. A
               spectrum the model explains only by widening the scatter scores high here,
               while its chi2 stays near 1;
    - worst  = max r^2 / v over features: one bad sample, which the mean over all features
               dilutes."""
    x, sigma = np.asarray(x, np.float64), np.asarray(sigma, np.float64)
    r2 = (x - x_hat) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = sigma ** 2 + np.asarray(s_hat, np.float64) ** 2
        return {"chi2": np.mean(r2 / variance, axis=1),
                "excess": np.mean(r2 / variance + np.log(variance / sigma ** 2), axis=1),
                "worst": np.max(r2 / variance, axis=1)}


def knn_labels(reference: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int = 20,
               leave_one_out: bool = False, block: int = 1024) -> np.ndarray:
    """k-nearest-neighbour regression in the latent space: for each query row the mean label
    of its ``k`` nearest reference rows (Euclidean). With ``leave_one_out`` the query is the
    reference itself and each row's own entry is skipped. NaN where the query is not finite."""
    reference = np.asarray(reference, np.float64)
    query = np.asarray(query, np.float64)
    labels = np.asarray(labels, np.float64)
    out = np.full(len(query), np.nan)
    ref_sq = np.sum(reference ** 2, axis=1)
    for start in range(0, len(query), block):
        q = query[start:start + block]
        d2 = ref_sq[None] - 2.0 * q @ reference.T + np.sum(q ** 2, axis=1)[:, None]
        d2 = np.where(np.isfinite(d2), d2, np.inf)
        if leave_one_out:
            d2[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        out[start:start + block] = labels[nearest].mean(axis=1)
    return np.where(np.isfinite(query).all(axis=1), out, np.nan)


@dataclass
class Hyperparameters:
    widths: list[int] = field(default_factory=lambda: [90, 70, 50, 30, 10])
    latent: int = 6
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-4              # cosine annealing with warm restarts from lr ...
    min_lr: float = 1e-10         # ... down to min_lr
    restart_epochs: int = 25      # epochs per cosine cycle
    weight_decay: float = 0.01    # AdamW's default
    patience: int | None = None   # early stopping (epochs); None keeps the best of all epochs
    monitor_fraction: float = 0.05
    # training stars: leave out those with |C*| > max_flux_excess sigma_C*(G) (a BP/RP flux
    # excess, `xptools.photometry`): their XP spectra hold light that G does not, and a model
    # that learns them learns to explain a wrong flux normalisation; None keeps every star
    max_flux_excess: float | None = None
    # "mean": chi2~ and KL averaged over features and latent dimensions, as the paper prints
    # them; "sum": summed over them, as the authors' released code (xp_vae) computes them,
    # which weighs the KL term latent/features (6/115) times less against chi2~
    reduction: str = "mean"

    def __post_init__(self):
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {self.reduction!r}")


def default_features(**overrides) -> FeatureSpec:
    """Flux / G-band flux (linear, as the paper) on every third sample of the default grid,
    no photometry."""
    return FeatureSpec(**{"xp": "sampled", "transform": "linear", "photometry": [],
                          **overrides})


class ScatterVAE:
    """Hyperparameters in the constructor; learned state (feature scalers, network weights,
    the training stars' outlier score distributions) set by `fit_table` or loaded from a model
    directory."""

    kind = "svae"
    format_version = 2   # 2: outlier_quantiles (excess, worst, combined) replace chi2_quantiles
    EMBEDDINGS = ("z",)  # what `xptools flag` can read the out-of-distribution detectors off

    def __init__(self, features: FeatureSpec | None = None, hyper: Hyperparameters | None = None,
                 labels: list[str] | None = None):
        self.features = features or default_features()
        if self.features.xp != "sampled" or self.features.photometry:
            raise UserError("the sVAE models sampled XP spectra alone: features need "
                            "xp='sampled' and no photometry")
        self.hyper = hyper or Hyperparameters()
        self.labels = list(labels or [])          # only for the validation report
        self.outlier_quantiles: dict[str, list[float]] | None = None
        self.provenance: dict = {}
        self.network: ScatterVAENetwork | None = None
        self.path = None
        self.checksum = None

    # -- configuration and weights --------------------------------------------------------

    def _network(self) -> ScatterVAENetwork:
        return ScatterVAENetwork(self.features.n_xp, self.hyper.widths, self.hyper.latent)

    @property
    def latent(self) -> int:
        return self.hyper.latent

    @property
    def wavelengths(self) -> np.ndarray:
        return np.asarray(self.features.wavelengths, np.float64)

    def to_config(self) -> dict:
        return {"kind": self.kind, "format_version": self.format_version,
                "labels": self.labels, "features": self.features.to_dict(),
                "hyperparameters": asdict(self.hyper),
                "outlier_percentiles": PERCENTILES.tolist(),
                "outlier_quantiles": self.outlier_quantiles,
                "provenance": self.provenance}

    @classmethod
    def from_config(cls, config: dict) -> "ScatterVAE":
        model = cls(FeatureSpec.from_dict(config["features"]),
                    Hyperparameters(**config["hyperparameters"]), config.get("labels"))
        model.outlier_quantiles = config["outlier_quantiles"]
        model.provenance = config.get("provenance", {})
        if model.features.median is None or model.outlier_quantiles is None:
            raise ValueError("the config holds no fitted scalers (an untrained model?)")
        for score in OUTLIER_SCORES:
            if len(model.outlier_quantiles[score]) != len(PERCENTILES):
                raise ValueError(f"outlier_quantiles[{score!r}] has "
                                 f"{len(model.outlier_quantiles[score])} values, expected "
                                 f"{len(PERCENTILES)}")
        model.network = model._network()
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def load_tensors(self, tensors: dict[str, torch.Tensor], file: str) -> None:
        from xptools.models import check_tensors

        check_tensors(self.network, tensors, file)
        self.network.eval()

    # -- inputs ---------------------------------------------------------------------------

    def prepare(self, chunk: Table, xp: np.ndarray, xp_error: np.ndarray | None):
        """Scaled features x (n, F) and errors sigma (n, F, or None), the rows the encoder can
        take (every feature observed), and the flags: the input flags, FLAG_UNUSABLE where a
        feature is missing, FLAG_NO_ERRORS where errors were asked for and are unusable."""
        values, errors, observed, flags = self.features.raw(chunk, xp, xp_error)
        usable = observed.all(axis=1)
        flags = flags | np.where(usable, 0, FLAG_UNUSABLE)
        if xp_error is None:
            return self.features.scale(values), None, usable, flags
        with np.errstate(invalid="ignore"):
            good = usable & np.isfinite(errors).all(axis=1) & (errors > 0).all(axis=1)
        flags |= np.where(good | ~usable, 0, FLAG_NO_ERRORS)
        x, sigma = self.features.scale(values, np.where(good[:, None], errors, np.nan))
        return x, sigma, usable, flags

    def inputs(self, table: Table, name: str, errors: bool = True,
               fit_rows: np.ndarray | None = None):
        """`prepare` for a whole table (fitting the feature scalers first on the rows of the
        boolean mask ``fit_rows``, when given)."""
        source = XPSource(table, name, self.features, with_errors=errors)
        xp, xp_error = source(table)
        if errors and xp_error is None:
            raise UserError(f"{name}: no flux_error column (the sVAE weighs each sample by its "
                            f"error)")
        if fit_rows is not None:
            self.features.fit(table.rows(fit_rows), xp[fit_rows])
        return self.prepare(table, xp, xp_error)

    # -- training -------------------------------------------------------------------------

    @classmethod
    def create(cls, labels: list[str] | None, recipe: dict) -> "ScatterVAE":
        """A new model with the recipe's feature spec and hyperparameters; ``labels`` (optional)
        are only used for the validation report."""
        try:
            return cls(default_features(**recipe.get("features", {})),
                       Hyperparameters(**recipe.get("hyperparameters", {})), labels)
        except (TypeError, ValueError) as e:
            raise UserError(f"recipe: {e}") from None

    def _flux_excess_rows(self, table: Table, name: str) -> np.ndarray:
        """The rows that pass the training flux-excess cut (all when there is none; a row
        without BP or RP magnitude passes)."""
        limit = self.hyper.max_flux_excess
        if limit is None:
            return np.ones(len(table), bool)
        missing = [c for c in GAIA_MAGNITUDES if c not in table]
        if missing:
            raise UserError(f"{name}: max_flux_excess needs the column {missing[0]!r}")
        return ~(np.abs(flux_excess_of(table)) > limit)

    def fit_table(self, table: Table, name: str, trainer) -> dict:
        """Train on every row with a complete spectrum and errors that passes the flux-excess
        cut (labels are not used)."""
        from xptools.train import Stage, cosine_warm_restarts

        h = self.hyper
        kept = self._flux_excess_rows(table, name)
        x, sigma, _, flags = self.inputs(table, name, errors=True, fit_rows=kept)
        complete = flags & (FLAG_UNUSABLE | FLAG_NO_ERRORS) == 0
        rows = complete & kept
        if rows.sum() < 20:
            raise UserError(f"{name}: only {int(rows.sum())} rows with a complete XP spectrum "
                            f"and errors")
        monitor = monitor_split(table.rows(rows), h.monitor_fraction, trainer.seed)
        data = {"x": torch.from_numpy(x[rows]), "sigma": torch.from_numpy(sigma[rows])}
        train = {k: v[torch.from_numpy(~monitor)] for k, v in data.items()}
        held = {k: v[torch.from_numpy(monitor)] for k, v in data.items()}
        torch.manual_seed(trainer.seed)
        net = self._network()

        def loss(batch, training):
            mu, log_var, x_hat, s_hat = net(batch["x"])
            chi2 = scatter_chi2(batch["x"], batch["sigma"], x_hat, s_hat, h.reduction)
            kl = kl_divergence(mu, log_var, h.reduction)
            return chi2 + kl, {"chi2": chi2.item(), "kl": kl.item()}   # Eq. (5)

        period = h.restart_epochs * math.ceil(int((~monitor).sum()) / h.batch_size)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a network this small only loses time to thread hand-offs
        try:
            stage = trainer.run(Stage("svae", net, loss, train, held, epochs=h.epochs,
                                      batch_size=h.batch_size, lr=h.lr,
                                      weight_decay=h.weight_decay,
                                      lr_at=cosine_warm_restarts(h.lr, h.min_lr, period),
                                      patience=h.patience))
        finally:
            torch.set_num_threads(threads)
        net.eval()
        self.network = net
        self.fit_outlier_quantiles(self.reconstruct(x[rows], sigma[rows]))
        monitored = [e for e in stage.history if e["monitor_loss"] is not None]
        best = min(monitored, key=lambda e: e["monitor_loss"]) if monitored else {}
        return {"rows": int(len(table)), "usable_rows": int(complete.sum()),
                "flux_excess_rows": int((complete & ~rows).sum()),
                "train_rows": int((~monitor).sum()), "monitor_rows": int(monitor.sum()),
                "epochs_run": len(stage.history), "best_epoch": best.get("epoch"),
                "device": "CPU, 1 thread"}

    # -- use ------------------------------------------------------------------------------

    def _batched(self, func, array: np.ndarray, batch: int = 65536) -> list[np.ndarray]:
        if self.network is None:
            raise RuntimeError("model not trained or loaded")
        parts = []
        with torch.no_grad():
            for start in range(0, len(array), batch):
                out = func(torch.from_numpy(np.ascontiguousarray(array[start:start + batch],
                                                                 np.float32)))
                parts.append([o.numpy() for o in out])
        if not parts:
            return [np.zeros((0, 0), np.float32)] * 2
        return [np.concatenate(p) for p in zip(*parts)]

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latent means z (n, 6) and standard deviations z_error (the encoder's sigma')."""
        mu, log_var = self._batched(self.network.encode, x)
        mu = mu.reshape(len(x), self.latent)
        return mu, np.exp(0.5 * log_var.reshape(len(x), self.latent))

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spectrum x_hat and scatter s_hat (n, F), in standardised feature units."""
        x_hat, s_hat = self._batched(self.network.decode, z)
        return (x_hat.reshape(len(z), self.features.n_xp),
                s_hat.reshape(len(z), self.features.n_xp))

    def embedding(self, chunk: Table, xp: np.ndarray, layer: str = "z"):
        """Each row's z = mu, NaN where the spectrum is incomplete, and the input flags (what
        `xptools flag` reads its out-of-distribution detectors off)."""
        if layer not in self.EMBEDDINGS:
            raise UserError(f"svae has no embedding {layer!r} ({', '.join(self.EMBEDDINGS)})")
        x, _, usable, flags = self.prepare(chunk, xp, None)
        z = np.full((len(x), self.latent), np.nan, np.float32)
        if usable.any():
            z[usable] = self.embed(x[usable])[0]
        return z, flags

    def reconstruct(self, x: np.ndarray, sigma: np.ndarray | None) -> dict[str, np.ndarray]:
        """z, z_error, x_hat, s_hat of each row (x_hat and s_hat decoded from z = mu), and with
        errors its `outlier_statistics` (chi2, excess, worst)."""
        z, z_error = self.embed(x)
        x_hat, s_hat = self.decode(z)
        out = {"z": z, "z_error": z_error, "x_hat": x_hat, "s_hat": s_hat}
        if sigma is not None:
            out.update(outlier_statistics(x, sigma, x_hat, s_hat))
        return out

    def _percentile(self, score: str, values: np.ndarray) -> np.ndarray:
        q = np.maximum.accumulate(np.asarray(self.outlier_quantiles[score]))
        return np.where(np.isfinite(values), np.interp(values, q, PERCENTILES), np.nan)

    def _combined(self, statistics: dict[str, np.ndarray]) -> np.ndarray:
        """The larger of a star's percentiles in excess and in worst."""
        return np.maximum(self._percentile("excess", statistics["excess"]),
                          self._percentile("worst", statistics["worst"]))

    def fit_outlier_quantiles(self, statistics: dict[str, np.ndarray]) -> None:
        """Store the training stars' distributions of excess, worst and their combination."""
        self.outlier_quantiles = {score: np.percentile(statistics[score], PERCENTILES).tolist()
                                  for score in ("excess", "worst")}
        self.outlier_quantiles["combined"] = np.percentile(self._combined(statistics),
                                                           PERCENTILES).tolist()

    def outlier_percentile(self, statistics: dict[str, np.ndarray]) -> np.ndarray:
        """Each star's outlier percentile among the training stars (0..100; NaN where its
        statistics are NaN): the percentile of the larger of its excess and worst percentiles,
        so that a star atypical by either counts and 1% of the training stars score above 99."""
        return self._percentile("combined", self._combined(statistics))

    # -- validation -----------------------------------------------------------------------

    def residuals(self, x: np.ndarray, sigma: np.ndarray,
                  out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per star and feature, from `reconstruct`'s ``out``: the fractional flux residual
        |x_hat - x| / |x| in RECONSTRUCTION_WINDOW (unscaled), R = (x - x_hat) / sigma
        ("r_error") and R with the scatter added, (x - x_hat) / sqrt(sigma^2 + s_hat^2)
        ("r_total")."""
        raw = self.features.unscale(x)
        raw_hat = self.features.unscale(out["x_hat"])
        window = ((self.wavelengths >= RECONSTRUCTION_WINDOW[0])
                  & (self.wavelengths <= RECONSTRUCTION_WINDOW[1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            fractional = np.abs(raw_hat - raw)[:, window] / np.abs(raw[:, window])
        return {"fractional": fractional,
                "r_error": (x - out["x_hat"]) / sigma,
                "r_total": (x - out["x_hat"]) / np.sqrt(sigma ** 2 + out["s_hat"] ** 2)}

    def evaluate(self, table: Table, name: str) -> dict:
        """Reconstruction quality and the outlier scores of a table's stars, and when it has
        labels, how well a k-NN (k = 20) in the latent space recovers them (each star
        predicted from the other stars of the same table)."""
        x, sigma, _, flags = self.inputs(table, name, errors=True)
        rows = flags & (FLAG_UNUSABLE | FLAG_NO_ERRORS) == 0
        x, sigma = x[rows], sigma[rows]
        out = self.reconstruct(x, sigma)
        res = self.residuals(x, sigma, out)
        percentile = self.outlier_percentile(out)
        report = {"file": name, "rows": int(len(table)), "usable_rows": int(rows.sum()),
                  "reconstruction": {
                      "median_abs_fractional_residual_400_1000nm":
                          float(np.nanmedian(res["fractional"])),
                      "max_abs_median_r_error":
                          float(np.max(np.abs(np.median(res["r_error"], 0)))),
                      "max_abs_median_r_total":
                          float(np.max(np.abs(np.median(res["r_total"], 0)))),
                      "sigma_mad_r_total": sigma_mad(res["r_total"].ravel())},
                  "outliers": {"median_chi2": float(np.median(out["chi2"])),
                               "fraction_above_p99": float(np.mean(percentile > 99))},
                  "knn": {}}
        labels = self.labels or [l for l in REPORT_LABELS if l in table]
        if labels:
            y = label_array(table, labels, name)[rows]
            for j, label in enumerate(labels):
                known = np.isfinite(y[:, j])
                if known.sum() <= 20:
                    continue
                pred = knn_labels(out["z"][known], y[known, j], out["z"][known], k=20,
                                  leave_one_out=True)
                d = pred - y[known, j]
                report["knn"][label] = {"n": int(known.sum()), "sigma_mad": sigma_mad(d),
                                        "bias": float(np.median(d))}
        return report

    def report_text(self, report: dict) -> str:
        r, o = report["reconstruction"], report["outliers"]
        lines = ["| measure | value |", "|---|---|",
                 f"| median abs fractional flux residual, 400-1000 nm | "
                 f"{r['median_abs_fractional_residual_400_1000nm']:.4f} |",
                 f"| max over features of abs median (x - x_hat)/sigma | "
                 f"{r['max_abs_median_r_error']:.3f} |",
                 f"| max over features of abs median (x - x_hat)/sqrt(sigma^2 + s_hat^2) | "
                 f"{r['max_abs_median_r_total']:.3f} |",
                 f"| sigma_MAD of (x - x_hat)/sqrt(sigma^2 + s_hat^2) | "
                 f"{r['sigma_mad_r_total']:.3f} |",
                 f"| median chi2 per star | {o['median_chi2']:.3f} |",
                 f"| fraction above the training 99th outlier percentile | "
                 f"{o['fraction_above_p99']:.4f} |"]
        for label, m in report["knn"].items():
            lines.append(f"| k-NN (k=20) {label} from z: sigma_MAD (bias), N={m['n']} | "
                         f"{m['sigma_mad']:.4g} ({m['bias']:.3g}) |")
        return "\n".join(lines)

    def card(self, report: dict | None) -> str:
        """The model card: what it is, data, split, settings, validation, limits."""
        h, p = self.hyper, self.provenance
        n_params = sum(t.numel() for t in self.network.parameters()) if self.network else 0
        w = self.wavelengths
        lines = [
            "# Scatter VAE: a label-free latent space of XP spectra", "",
            "Model kind `svae` (Laroche & Speagle 2024, arXiv:2404.07316): a variational "
            f"autoencoder with a {h.latent}-d latent space, a spectrum decoder and a scatter "
            "decoder, trained on XP spectra alone (no stellar labels).", "",
            "## Inputs", "",
            f"- XP sampled flux divided by the G-band flux 10^(-0.4 G) (phot_g_mean_mag, else G "
            f"from the XP spectrum), {len(w)} samples {w[0]:g}..{w[-1]:g} nm, standardised by "
            f"the training median and IQR; errors (flux_error) scaled the same way",
            "- coefficient input is sampled first; a row with any sample missing gets NaN z and "
            "a flag", "",
            "## Training", "",
            f"- data: {p.get('train_file')} (sha256 {str(p.get('train_sha256'))[:16]}...), "
            f"{p.get('usable_rows')} of {p.get('rows')} rows with a complete spectrum and "
            f"errors"
            + (f", of which {p.get('flux_excess_rows')} left out for a BP/RP flux excess "
               f"|C*| > {h.max_flux_excess:g} sigma_C*(G) (Riello et al. 2021)"
               if h.max_flux_excess is not None else "")
            + f"; {p.get('monitor_rows')} held out (hash of source_id) to pick the best "
            f"epoch, {p.get('train_rows')} trained on; labels not used",
            f"- network: encoder {self.features.n_xp} -> {' -> '.join(map(str, h.widths))} "
            f"(GELU) -> mu, log-variance ({h.latent}); two mirrored decoders (spectrum; "
            f"scatter through a sigmoid); {n_params:,} parameters",
            "- loss: chi2~ + KL (the paper's Eqs. 1-5), "
            + ("each averaged over stars and over features or latent dimensions, as the paper "
               "prints them" if h.reduction == "mean" else
               f"each summed over features or latent dimensions and averaged over stars, as the "
               f"authors' released code (xp_vae) computes them; the paper prints means, which "
               f"weigh KL {self.features.n_xp}/{h.latent} times more against chi2~"),
            f"- optimiser: AdamW (weight decay {h.weight_decay}), batch {h.batch_size}, cosine "
            f"annealing with warm restarts every {h.restart_epochs} epochs from {h.lr:g} to "
            f"{h.min_lr:g}; epoch budget {h.epochs}"
            + (f", early stopping patience {h.patience}" if h.patience else "")
            + f"; {p.get('epochs_run')} epochs run, the weights of epoch "
            f"{p.get('best_epoch')} kept (lowest monitor loss)",
            f"- seed {p.get('seed')}; {p.get('train_seconds')} s of training ({p.get('device')}); "
            f"xptools {p.get('xptools')}; `{p.get('command')}`", ""]
        if report:
            lines += [f"## Validation: {report['file']} ({report['usable_rows']} of "
                      f"{report['rows']} rows usable)", "",
                      "Residuals use z = mu. k-NN: each validation star's label predicted as "
                      "the mean of that label over its 20 nearest neighbours in z (Euclidean), "
                      "drawn from the other validation stars with the label (leave one out: "
                      "N - 1 references for the N stars scored in a row), not from the "
                      "training stars; sigma_MAD = 1.4826 x median absolute deviation of "
                      "prediction - reference, bias its median. A k-NN with a larger "
                      "reference set generally gives smaller errors for the same z, so compare "
                      "these rows only with other validation reports, not with "
                      "benchmarks/bench_svae.py, whose k-NN draws the neighbours from the "
                      "training stars.", "",
                      self.report_text(report), ""]
        else:
            lines += models.NO_VALIDATION
        see = (lambda rows: f" (see the {rows} above)") if report else (lambda rows: "")
        lines += ["## Known limits", "",
                  "- Trained on the XP spectra of APOGEE DR17 stars (mostly giants, G 8.7 to "
                  "15): stars unlike them (white dwarfs, QSOs, very hot or very cool stars, "
                  "faint noisy spectra) get high chi2 and outlier percentiles, which is the "
                  "point of the score but also means their z is an extrapolation.",
                  "- The outlier percentile is relative to the training stars, which the "
                  "model has seen: on new stars of the same kind the fraction above the 99th "
                  f"percentile can differ from 1%{see('validation row')}.",
                  "- The latent axes are not labels: their order and sign are arbitrary and "
                  "change between trainings; the KL term can leave some of them nearly unused "
                  "(near-zero spread of z).",
                  f"- z is a coarse proxy for stellar labels ("
                  f"{'see the k-NN rows above; ' if report else ''}benchmarks/bench_svae.py runs the k-NN with the neighbours drawn from the "
                  "training stars, from z and from the input flux, and splits it into giants "
                  "and dwarfs and by extinction).",
                  "- The outlier percentile (docs/generate.md) catches large spectral "
                  "defects but misses a share of small ones; benchmarks/bench_svae.py "
                  "measures it on injected defects.", ""]
        if h.max_flux_excess is not None:
            lines[-1:] = [f"- Stars with a BP/RP flux excess, |C*| > {h.max_flux_excess:g} "
                          "sigma_C*(G), were left out of training: their XP spectra hold a "
                          "neighbour's light, so this model finds such stars atypical and "
                          f"their outlier percentiles run high; flag bit 256 marks those above "
                          f"{FLUX_EXCESS_LIMIT:g} sigma.", ""]
        return "\n".join(lines)
