"""Masked Stellar Autoencoder (McKay 2025, MSc thesis, University of Victoria).

Stellar labels with uncertainties from XP spectra plus optional photometry, any of which may
be missing. Read top to bottom:

1. FeatureEmbedding  - each feature x_f becomes [sin(2 pi c_f x_f), cos(2 pi c_f x_f)] with
                       k trainable frequencies c_f (the periodic embedding of Gorishniy,
                       Rubachev & Babenko 2022); a missing or hidden feature is replaced by a
                       learned mask token of the same size, never a sentinel value.
2. ResidualBlock     - Linear, LayerNorm, ELU, Dropout, Linear, LayerNorm, plus a skip
                       connection (a linear projection where the width changes).
3. encoder           - residual blocks down to a latent vector; decoder - the mirror image,
                       back to every feature.
4. QuantileHead      - a 5-layer MLP from the latent vector to the 16/50/84% quantiles of
                       each (standardised) label; q16 <= q50 <= q84 by construction.
5. training          - masking: the whole XP group is hidden with probability p_xp, each other
                       feature with probability p_other, anchor features never; pretraining
                       minimises the L1 reconstruction of all observed features (missing ones
                       excluded); fine-tuning minimises 0.8 pinball + 0.2 reconstruction, with
                       the same masking. Beyond the thesis (both optional, p_hide_band and
                       p_hide_anchors): rows that keep their XP may lose one band's samples or
                       the anchors, so that a source without BP or RP, or a table without the
                       anchor columns, is not new to the model and its quantiles widen.
6. ensemble          - several members fine-tuned from the pretrained network with different
                       seeds; the uncertainty combines their quantile half-widths with their
                       spread.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from xptools import models
from xptools.errors import UserError
from xptools.io import Table
from xptools.metrics import label_metrics
from xptools.flags import FLAG_FLUX_EXCESS, FLAG_OUT_OF_RANGE, FLAG_UNUSABLE
from xptools.models.features import FeatureSpec, XPSource, label_array, monitor_split
from xptools.xp import BANDS

QUANTILES = (0.16, 0.5, 0.84)


class FeatureEmbedding(nn.Module):
    def __init__(self, n_features: int, frequencies: int, sigma: float):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, frequencies) * sigma)
        self.mask_token = nn.Parameter(torch.randn(n_features, 2 * frequencies) * 0.1)

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * self.frequencies[None] * x[..., None]      # (B, F, k)
        e = torch.cat([torch.sin(angle), torch.cos(angle)], -1)          # periodic embedding
        e = torch.where(visible[..., None], e, self.mask_token[None])
        return e.flatten(1)                                              # (B, F * 2k)


class ResidualBlock(nn.Module):
    def __init__(self, d_in: int, d_out: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.ELU(),
                                  nn.Dropout(dropout), nn.Linear(d_out, d_out),
                                  nn.LayerNorm(d_out))
        self.skip = nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class QuantileHead(nn.Module):
    def __init__(self, d_in: int, width: int, n_labels: int, layers: int = 5):
        super().__init__()
        dims = [d_in] + [width] * (layers - 1)
        blocks = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ELU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], 3 * n_labels))
        self.n_labels = n_labels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.mlp(z).view(-1, self.n_labels, 3)
        median = out[..., 1]
        low = median - nn.functional.softplus(out[..., 0])   # q16 <= q50
        high = median + nn.functional.softplus(out[..., 2])  # q50 <= q84
        return torch.stack([low, median, high], -1)          # (B, labels, 3)


class MSANetwork(nn.Module):
    def __init__(self, n_features: int, n_labels: int, frequencies: int, sigma: float,
                 widths: list[int], latent: int, head_width: int, dropout: float):
        super().__init__()
        self.embed = FeatureEmbedding(n_features, frequencies, sigma)
        dims = [n_features * 2 * frequencies] + list(widths) + [latent]
        self.encoder = nn.Sequential(*[ResidualBlock(a, b, dropout)
                                       for a, b in zip(dims[:-1], dims[1:])])
        back = dims[::-1][:-1]  # latent, ..., widths[0]
        self.decoder = nn.Sequential(*[ResidualBlock(a, b, dropout)
                                       for a, b in zip(back[:-1], back[1:])],
                                     nn.Linear(back[-1], n_features))
        self.head = QuantileHead(latent, head_width, n_labels)

    def forward(self, x: torch.Tensor, visible: torch.Tensor):
        z = self.encoder(self.embed(x, visible))
        return z, self.decoder(z), self.head(z)


def pinball(y: torch.Tensor, q: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss of quantiles q (B, L, 3) for labels y (B, L), known labels only."""
    tau = torch.tensor(QUANTILES, dtype=q.dtype)
    r = y[..., None] - q
    loss = torch.maximum(tau * r, (tau - 1) * r) * known[..., None]
    return loss.sum() / (3 * known.sum()).clamp(min=1)


def reconstruction(x: torch.Tensor, x_hat: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Mean L1 error over observed features (hidden ones included, missing ones not)."""
    return ((x_hat - x).abs() * observed).sum() / observed.sum().clamp(min=1)


@dataclass
class Hyperparameters:
    frequencies: int = 5
    sigma: float = 0.5
    widths: list[int] = field(default_factory=lambda: [256, 160])
    latent: int = 48
    head_width: int = 128
    dropout: float = 0.05
    p_hide_xp: float = 0.9            # pretraining
    finetune_p_hide_xp: float = 0.9   # fine-tuning (the thesis keeps the same masking)
    p_hide_other: float = 0.6         # pretraining
    finetune_p_hide_other: float = 0.6  # fine-tuning
    p_hide_band: float = 0.0          # rows with XP shown: BP alone hidden, else RP alone
    p_hide_anchors: float = 0.0       # rows with XP shown: the anchors hidden
    anchors: list[str] = field(default_factory=lambda: ["phot_bp_mean_mag-G",
                                                        "phot_rp_mean_mag-G"])
    members: int = 4
    pretrain_epochs: int = 60
    finetune_epochs: int = 120
    batch_size: int = 256
    lr: float = 2e-3
    finetune_lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 15
    monitor_fraction: float = 0.05
    pred_weight: float = 0.8
    log_labels: list[str] = field(default_factory=lambda: ["teff"])  # learnt as log10


class MaskedStellarAutoencoder:
    """Hyperparameters in the constructor, learned state (feature scalers, label scalers,
    network weights) set by `fit` or loaded from a model directory."""

    kind = "msa"
    format_version = 1
    # what `xptools flag` can read the out-of-distribution detectors off (`embedding`): the
    # first member's head, last hidden layer (the default), or its latent vector
    EMBEDDINGS = ("head", "latent")

    def __init__(self, labels: list[str], features: FeatureSpec | None = None,
                 hyper: Hyperparameters | None = None):
        self.labels = list(labels)
        self.features = features or FeatureSpec()
        self.hyper = hyper or Hyperparameters()
        self.label_mean: list[float] | None = None
        self.label_std: list[float] | None = None
        self.label_range: list[list[float]] | None = None  # per label: 0.5, 99.5 percentiles
        self.provenance: dict = {}
        self.networks: list[MSANetwork] = []
        self.path = None
        self.checksum = None

    # -- configuration and weights --------------------------------------------------------

    def _network(self) -> MSANetwork:
        h = self.hyper
        return MSANetwork(len(self.features.names), len(self.labels), h.frequencies, h.sigma,
                          h.widths, h.latent, h.head_width, h.dropout)

    def to_config(self) -> dict:
        return {"kind": self.kind, "format_version": self.format_version,
                "labels": self.labels, "features": self.features.to_dict(),
                "hyperparameters": asdict(self.hyper), "label_mean": self.label_mean,
                "label_std": self.label_std, "label_range": self.label_range,
                "provenance": self.provenance}

    @classmethod
    def from_config(cls, config: dict) -> "MaskedStellarAutoencoder":
        model = cls(config["labels"], FeatureSpec.from_dict(config["features"]),
                    Hyperparameters(**config["hyperparameters"]))
        model.label_mean, model.label_std = config["label_mean"], config["label_std"]
        model.label_range = config["label_range"]
        model.provenance = config.get("provenance", {})
        if model.features.median is None or model.label_mean is None:
            raise ValueError("the config holds no fitted scalers (an untrained model?)")
        model.networks = [model._network() for _ in range(model.hyper.members)]
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"member{i}.{k}": v for i, net in enumerate(self.networks)
                for k, v in net.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], file: str) -> None:
        from xptools.models import check_tensors

        for i, net in enumerate(self.networks):
            prefix = f"member{i}."
            check_tensors(net, {k[len(prefix):]: v for k, v in tensors.items()
                                if k.startswith(prefix)}, file)
        extra = [k for k in tensors if not k.startswith(tuple(f"member{i}."
                                                               for i in range(len(self.networks))))]
        if extra:
            raise UserError(f"{file}: weights do not match the config (unexpected {extra[0]!r})")
        for net in self.networks:
            net.eval()

    # -- training -------------------------------------------------------------------------

    def _visible(self, observed: torch.Tensor, groups: dict[str, torch.Tensor],
                 p_xp: float, p_other: float) -> torch.Tensor:
        """Random masking of one batch (uses torch's global RNG, seeded per step): the XP
        group hidden with probability p_xp, the other features each with p_other except the
        anchors. On the rows that keep their XP, one band's own samples are hidden with
        probability p_hide_band each (a source missing BP or RP) and the anchors with
        p_hide_anchors (a table without them), so that the model and its quantiles learn
        those cases too; a row never loses both its XP and its anchors."""
        h = self.hyper
        n_xp = self.features.n_xp
        b, f = observed.shape
        hide = torch.empty_like(observed)
        hide_xp = torch.rand(b) < p_xp
        band = torch.rand(b)
        hide[:, :n_xp] = (hide_xp[:, None]
                          | ((band < h.p_hide_band)[:, None] & groups["bp"][None])
                          | (((band >= h.p_hide_band) & (band < 2 * h.p_hide_band))[:, None]
                             & groups["rp"][None]))
        anchors = groups["anchors"][None]
        hide_anchors = ((torch.rand(b) < h.p_hide_anchors) & ~hide_xp)[:, None]
        hide[:, n_xp:] = (((torch.rand(b, f - n_xp) < p_other) & ~anchors)
                          | (anchors & hide_anchors))
        return observed & ~hide

    def _to_learnt(self, y: np.ndarray) -> np.ndarray:
        """Labels as the network learns them: log10 for ``log_labels`` (e.g. Teff)."""
        y = np.array(y, dtype=np.float64)
        for j, label in enumerate(self.labels):
            if label in self.hyper.log_labels:
                with np.errstate(invalid="ignore", divide="ignore"):
                    y[:, j] = np.where(y[:, j] > 0, np.log10(y[:, j]), np.nan)
        return y

    def _from_learnt(self, y: np.ndarray, j: int) -> np.ndarray:
        return 10.0 ** y if self.labels[j] in self.hyper.log_labels else y

    def fit(self, x: np.ndarray, observed: np.ndarray, y: np.ndarray, trainer,
            monitor: np.ndarray) -> None:
        """Train on scaled features x (n, F), their observed mask, labels y (n, L; NaN where
        unknown); rows in ``monitor`` are held out for early stopping."""
        from xptools.train import Stage

        h = self.hyper
        self.label_range = [np.nanpercentile(y[~monitor, j], [0.5, 99.5]).tolist()
                            for j in range(y.shape[1])]
        y = self._to_learnt(y)
        self.label_mean = np.nanmean(y[~monitor], axis=0).tolist()
        self.label_std = np.nanstd(y[~monitor], axis=0).tolist()
        yn = (y - np.asarray(self.label_mean)) / np.asarray(self.label_std)
        data = {"x": torch.from_numpy(np.asarray(x, np.float32)),
                "observed": torch.from_numpy(observed),
                "y": torch.from_numpy(np.nan_to_num(yn).astype(np.float32)),
                "known": torch.from_numpy(np.isfinite(yn))}
        train = {k: v[torch.from_numpy(~monitor)] for k, v in data.items()}
        held = {k: v[torch.from_numpy(monitor)] for k, v in data.items()}

        groups = {"anchors": torch.tensor([n in h.anchors
                                           for n in self.features.names[self.features.n_xp:]]),
                  **{band: torch.from_numpy(self.features.band_only(band)) for band in BANDS}}
        torch.manual_seed(trainer.seed)
        base = self._network()

        def reconstruct_loss(batch, training):
            visible = (self._visible(batch["observed"], groups, h.p_hide_xp, h.p_hide_other)
                       if training else batch["observed"])
            _, x_hat, _ = base(batch["x"], visible)
            rec = reconstruction(batch["x"], x_hat, batch["observed"])
            return rec, {"rec": rec.item()}

        trainer.run(Stage("pretrain", base, reconstruct_loss, train, held,
                          epochs=h.pretrain_epochs, batch_size=h.batch_size, lr=h.lr,
                          weight_decay=h.weight_decay, patience=h.patience))
        self.networks = []
        for member in range(h.members):
            net = self._network()
            net.load_state_dict(base.state_dict())

            def finetune_loss(batch, training, net=net):
                visible = (self._visible(batch["observed"], groups, h.finetune_p_hide_xp,
                                         h.finetune_p_hide_other)
                           if training else batch["observed"])
                _, x_hat, q = net(batch["x"], visible)
                pred = pinball(batch["y"], q, batch["known"])
                rec = reconstruction(batch["x"], x_hat, batch["observed"])
                loss = h.pred_weight * pred + (1 - h.pred_weight) * rec
                return (pred if not training else loss), {"pred": pred.item()}

            trainer.run(Stage(f"finetune-{member}", net, finetune_loss, train, held,
                              epochs=h.finetune_epochs, batch_size=h.batch_size,
                              lr=h.finetune_lr, weight_decay=h.weight_decay,
                              patience=h.patience))
            net.eval()
            self.networks.append(net)

    # -- from tables ----------------------------------------------------------------------

    @classmethod
    def create(cls, labels: list[str], recipe: dict) -> "MaskedStellarAutoencoder":
        """A new model with the recipe's feature spec and hyperparameters."""
        if not labels:
            raise UserError("name the labels to learn: --labels teff,logg,... (or 'labels' in "
                            "the recipe)")
        try:
            return cls(labels, FeatureSpec(**recipe.get("features", {})),
                       Hyperparameters(**recipe.get("hyperparameters", {})))
        except TypeError as e:
            raise UserError(f"recipe: {e}") from None

    def inputs(self, table: Table, name: str, fit: bool = False):
        """Scaled features, observed mask and input flags of a table (fitting the feature
        scalers first when ``fit``)."""
        xp, _ = XPSource(table, name, self.features)(table)
        if fit:
            self.features.fit(table, xp)
        values, _, observed, flags = self.features.raw(table, xp, None)
        return self.features.scale(values), observed, flags

    def fit_table(self, table: Table, name: str, trainer) -> dict:
        y = label_array(table, self.labels, name)
        known = np.isfinite(y).any(axis=1)
        if known.sum() < 20:
            raise UserError(f"{name}: only {int(known.sum())} rows with labels")
        table = table.rows(known)
        x, observed, _ = self.inputs(table, name, fit=True)
        monitor = monitor_split(table, self.hyper.monitor_fraction, trainer.seed)
        self.fit(x, observed, y[known], trainer, monitor)
        return {"rows": int(len(table)), "train_rows": int((~monitor).sum()),
                "monitor_rows": int(monitor.sum())}

    def evaluate(self, table: Table, name: str) -> dict:
        """Accuracy and calibration against the table's labels: all rows, Teff < 7000 K when
        Teff is a label (the cut the targets use), and subsets the card's limits cite."""
        y = label_array(table, self.labels, name)
        x, observed, flags = self.inputs(table, name)
        pred = self.predict(x, observed)
        subsets = {"all": np.ones(len(table), bool)}
        if "teff" in self.labels:
            teff = y[:, self.labels.index("teff")]
            subsets["teff<7000"] = teff < 7000
            subsets["teff>=7000"] = teff >= 7000
        if "fe_h" in self.labels:
            subsets["fe_h<-1"] = y[:, self.labels.index("fe_h")] < -1
        subsets["flux excess"] = flags & FLAG_FLUX_EXCESS != 0
        report = {"file": name, "rows": int(len(table))}
        for subset, rows in subsets.items():
            report[subset] = {}
            for j, label in enumerate(self.labels):
                err = f"{label}_err"
                ref_error = (np.asarray(table[err], float)[rows] if err in table else None)
                median, error, q16, q84 = (v[rows] for v in pred[label])
                report[subset][label] = label_metrics(median, error, q16, q84, y[rows, j],
                                                      ref_error)
        return report

    def report_text(self, report: dict) -> str:
        """The validation report as printed by `xptools train`."""
        from xptools.metrics import report_table

        return report_table(report)

    def card(self, report: dict | None) -> str:
        """The model card: what it is, data, split, settings, validation, limits."""
        h, p = self.hyper, self.provenance
        n_params = sum(t.numel() for t in self.networks[0].parameters()) if self.networks else 0
        lines = [
            f"# Masked Stellar Autoencoder: {', '.join(self.labels)}", "",
            "Model kind `msa` (McKay 2025): masked residual-MLP autoencoder over XP spectra and "
            "photometry, quantile heads (16/50/84%) per label, an ensemble of "
            f"{h.members} fine-tuned members.", "",
            "## Inputs", "",
            f"- XP: {self.features.xp} spectrum, {self.features.n_xp} features "
            f"({self.features.transform} of flux / G-band flux"
            + (f", {self.features.wavelengths[0]:g}..{self.features.wavelengths[-1]:g} nm)"
               if self.features.xp == "sampled" else ")"),
            f"- photometry (colours against G): {', '.join(self.features.photometry) or 'none'}",
            "- any input may be missing; coefficient input is sampled first", "",
            "## Training", "",
            f"- data: {p.get('train_file')} (sha256 {str(p.get('train_sha256'))[:16]}...), "
            f"{p.get('rows')} rows with labels; {p.get('monitor_rows')} held out (hash of "
            f"source_id) for early stopping, {p.get('train_rows')} trained on",
            f"- network: periodic feature embedding with {h.frequencies} frequencies, "
            f"encoder widths {h.widths} -> latent {h.latent}, mirrored decoder, 5-layer "
            f"head of width {h.head_width}, dropout {h.dropout}; {n_params:,} parameters per "
            f"member",
            f"- masking: XP group hidden with p={h.p_hide_xp} in pretraining and "
            f"p={h.finetune_p_hide_xp} in fine-tuning, other features with "
            f"p={h.p_hide_other} in pretraining and p={h.finetune_p_hide_other} in "
            f"fine-tuning, never {', '.join(h.anchors)} while the XP group is hidden; "
            f"on rows with XP, BP-only or RP-only samples hidden with p={h.p_hide_band} each, "
            f"the anchors with p={h.p_hide_anchors}",
            f"- optimiser: AdamW, weight decay {h.weight_decay}, batch {h.batch_size}, cosine "
            f"schedule with warm-up; pretraining {h.pretrain_epochs} epochs at lr {h.lr} (L1 "
            f"reconstruction), fine-tuning {h.finetune_epochs} epochs at lr {h.finetune_lr} "
            f"({h.pred_weight} pinball + {1 - h.pred_weight:.1f} reconstruction), early "
            f"stopping patience {h.patience}",
            f"- seed {p.get('seed')}; {p.get('train_seconds')} s of training (epochs, all "
            f"stages); xptools "
            f"{p.get('xptools')}; `{p.get('command')}`", ""]
        if report:
            lines += [f"## Validation: {report['file']} ({report['rows']} rows)", "",
                      "sigma_MAD = 1.4826 x median absolute deviation of prediction - reference; "
                      "z = difference / sqrt(sigma_pred^2 + sigma_ref^2).", "",
                      self.report_text(report), ""]
        else:
            lines += models.NO_VALIDATION
        see = (lambda rows: f" (see the {rows} rows above)") if report else (lambda rows: "")
        lines += ["## Known limits", "",
                  "- Trained on APOGEE DR17 stars (mostly giants, G 8.7 to 15): predictions for "
                  "stars unlike them (white dwarfs, very hot or very cool stars, faint stars "
                  "with noisy XP) are extrapolations; infer_flag bit 32 marks predictions "
                  "outside the training labels' 0.5-99.5 percentile range.",
                  "- [Fe/H] and [alpha/M] are unknown for most stars above 7000 K in the "
                  "training data: the model's abundances for hot stars are poorly constrained"
                  f"{see('teff>=7000')}.",
                  f"- Few training stars have [Fe/H] < -1: metal-poor stars are less accurate"
                  f"{see('fe_h<-1')}.",
                  "- Less input, less accuracy: a source without BP or RP, or a table without "
                  "2MASS or BP/RP magnitudes, gets wider uncertainties and a flag; "
                  "`python benchmarks/bench_accuracy.py` prints the accuracy and z-scores for "
                  "each case.",
                  "- Sources with a BP/RP flux excess (infer_flag bit 256: |C*| > 3 "
                  "sigma_C*(G), Riello et al. 2021) have a neighbour's light in their XP "
                  "spectrum: their labels are less accurate and their z-scores wider than 1"
                  f"{see('flux excess')}.",
                  "- Labels are on the APOGEE DR17 (ASPCAP) scale, with its systematics.", ""]
        return "\n".join(lines)

    # -- prediction -----------------------------------------------------------------------

    def predict(self, x: np.ndarray, observed: np.ndarray, batch: int = 8192,
                advance=None) -> dict:
        """Per label: median, error, q16, q84 (in label units) and a flag array.

        The ensemble median is the mean of the members' medians; each half-width is the rms of
        the members' half-widths in quadrature with the spread of their medians (computed in
        the learnt scale, e.g. log10 Teff, then transformed back)."""
        if not self.networks:
            raise RuntimeError("model not trained or loaded")
        n, n_labels = len(x), len(self.labels)
        quantiles = np.empty((len(self.networks), n, n_labels, 3), np.float32)
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x, np.float32))
            ot = torch.from_numpy(observed)
            for s in range(0, n, batch):
                for i, net in enumerate(self.networks):
                    _, _, q = net(xt[s:s + batch], ot[s:s + batch])
                    quantiles[i, s:s + batch] = q.numpy()
                if advance is not None:  # e.g. a progress bar's update(rows)
                    advance(len(xt[s:s + batch]))
        mean, std = np.asarray(self.label_mean), np.asarray(self.label_std)
        q = quantiles.astype(np.float64) * std[None, None, :, None] + mean[None, None, :, None]
        median = q[..., 1].mean(axis=0)
        spread = q[..., 1].var(axis=0) if len(self.networks) > 1 else 0.0
        low = median - np.sqrt(np.mean((q[..., 1] - q[..., 0]) ** 2, axis=0) + spread)
        high = median + np.sqrt(np.mean((q[..., 2] - q[..., 1]) ** 2, axis=0) + spread)
        usable = observed.any(axis=1)
        flags = np.where(usable, 0, FLAG_UNUSABLE)
        out = {}
        for j, label in enumerate(self.labels):
            m, l, h = (self._from_learnt(v[:, j], j) for v in (median, low, high))
            lo, hi = self.label_range[j]
            flags |= np.where(usable & ((m < lo) | (m > hi)), FLAG_OUT_OF_RANGE, 0)
            out[label] = [np.where(usable, v, np.nan) for v in (m, (h - l) / 2, l, h)]
        out["flag"] = flags
        return out

    def embedding(self, chunk: Table, xp: np.ndarray, layer: str = "head",
                  batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Each row's embedding by the first ensemble member (eval mode, so no dropout): its
        ``latent`` vector, or the ``head``'s last hidden layer (the activations the quantiles
        are read off); NaN for rows with nothing observed. Also the input flags."""
        if layer not in self.EMBEDDINGS:
            raise UserError(f"msa has no embedding {layer!r} ({', '.join(self.EMBEDDINGS)})")
        values, _, observed, flags = self.features.raw(chunk, xp, None)
        x = self.features.scale(values)
        net = self.networks[0]
        width = self.hyper.latent if layer == "latent" else self.hyper.head_width
        out = np.full((len(x), width), np.nan, np.float32)
        usable = np.flatnonzero(observed.any(axis=1))
        with torch.no_grad():
            for s in range(0, len(usable), batch):
                rows = usable[s:s + batch]
                z = net.encoder(net.embed(torch.from_numpy(np.asarray(x[rows], np.float32)),
                                          torch.from_numpy(observed[rows])))
                out[rows] = (z if layer == "latent" else net.head.mlp[:-1](z)).numpy()
        return out, flags
