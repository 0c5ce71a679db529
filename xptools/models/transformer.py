"""The Transformer foundation model (Leung & Bovy 2024, "Towards an astronomical foundation
model for stars with a Transformer-based model", MNRAS 527, 1494).

Every datum of a star is a (type, value) token; the model reads any set of tokens and answers
any request for another type with a mean and a predictive variance. Read top to bottom:

1. Vocabulary      - the token types for our data: G-normalised XP flux on every 6th sample of
                     GaiaXPy's default grid (the paper normalises coefficients by the G flux,
                     Eq. 8), the colours BP, RP, J, H, Ks minus G, and the labels. Each type is
                     scaled robustly ((value - median) / IQR, fitted on training stars); a
                     value's known error is scaled alike.
2. TokenEmbedding  - y = f(w_x * value) + b_x with trainable d-vectors w_x and b_x per type and
                     f = GeLU [Eq. 1]. No positional encoding: the inputs are a set. A missing
                     value is a padding token, masked in attention.
3. EncoderBlock    - self-attention over the given tokens and a feed-forward network, each
                     with a residual connection (pre-LayerNorm) [Sec. 2-3].
4. DecoderBlock    - cross-attention from each request to the encoder output, then a
                     feed-forward network. The request vector is the same w_x that embeds that
                     type in the encoder [Sec. 3]; requests never attend to each other, so k
                     requests in one pass give what k passes give.
5. output          - a mean and a log predictive variance per request; the loss is Eq. 11,
                     0.5 ((yhat - y)^2 / (s_known^2 + s_pred^2) + ln(s_known^2 + s_pred^2)).
6. training        - per star and step, a random subset of 5..context observed tokens in
                     random order is given, and random observed tokens are requested [Sec. 5];
                     labels are inputs and targets alike; the types in ``never_requested``
                     (two colours) are given but never requested, to test what the model
                     answers for a request it was not trained on [Sec. 7.2].
7. answering       - any tokens given (``given``/``hide`` groups: xp, bp, rp, phot, labels or
                     token names), any requested; a row with more tokens than the context is
                     answered ``draws`` times from random subsets: the mean of the means, the
                     variance the mean variance plus the variance of the means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from xptools import models
from xptools.errors import UserError
from xptools.flags import (FLAG_G_FROM_XP, FLAG_NO_PHOTOMETRY, FLAG_NO_XP, FLAG_OUT_OF_RANGE,
                            FLAG_PARTIAL_PHOTOMETRY, FLAG_PARTIAL_XP, FLAG_UNUSABLE)
from xptools.io import Table
from xptools.metrics import label_metrics, sigma_mad
from xptools.models.features import FeatureSpec, XPSource, float_column, monitor_split
from xptools.xp import DEFAULT_GRID

# the colour tokens' names (value: magnitude - G)
COLOUR_NAMES = {"phot_bp_mean_mag": "bp_g", "phot_rp_mean_mag": "rp_g", "j_m": "j_g",
                "h_m": "h_g", "ks_m": "ks_g"}
DRAWS = 8          # random subsets for a row with more tokens than the context
BP_LIMIT = 640.0   # nm: the `bp` group is the flux below, `rp` the flux at and above
GROUPS = ("xp", "bp", "rp", "phot", "labels")


# -- 1. vocabulary ---------------------------------------------------------------------------

def colour_name(column: str) -> str:
    return COLOUR_NAMES.get(column, f"{column}_g")


class Vocabulary:
    """The token types: flux samples, colours, labels, in that order, and their groups."""

    def __init__(self, features: FeatureSpec, labels: list[str]):
        self.features, self.labels = features, list(labels)
        self.flux = [f"flux_{w:g}" for w in features.wavelengths]
        self.colours = [colour_name(p) for p in features.photometry]
        self.names = self.flux + self.colours + self.labels
        self.index = {name: i for i, name in enumerate(self.names)}
        n_flux, n_colours = len(self.flux), len(self.colours)
        w = np.asarray(features.wavelengths)
        everything = np.arange(len(self.names))
        self.groups = {"xp": everything[:n_flux], "bp": np.flatnonzero(w < BP_LIMIT),
                       "rp": np.flatnonzero(w >= BP_LIMIT),
                       "phot": everything[n_flux:n_flux + n_colours],
                       "labels": everything[n_flux + n_colours:]}

    def __len__(self) -> int:
        return len(self.names)

    def types(self, spec: str, option: str) -> np.ndarray:
        """The types of a SPEC, in its order: comma-separated groups (xp, bp, rp, phot, labels)
        or token names (teff, j_g, flux_600; a colour also by its magnitude column, j_m)."""
        out: list[int] = []
        by_column = {p: colour_name(p) for p in self.features.photometry}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if part in self.groups:
                found = self.groups[part].tolist()
            elif by_column.get(part, part) in self.index:
                found = [self.index[by_column.get(part, part)]]
            else:
                raise UserError(f"{option} {spec!r}: unknown token {part!r} (groups: "
                                f"{', '.join(GROUPS)}; tokens: {', '.join(self.labels)}, "
                                f"{', '.join(self.colours)}, {self.flux[0]}..{self.flux[-1]})")
            out += [t for t in found if t not in out]
        if not out:
            raise UserError(f"{option} {spec!r}: names no token")
        return np.array(out, dtype=np.int64)

    def select(self, spec: str, option: str) -> np.ndarray:
        """A boolean mask over the types of a SPEC (`types`)."""
        mask = np.zeros(len(self.names), bool)
        mask[self.types(spec, option)] = True
        return mask


# -- 2.-5. the network -----------------------------------------------------------------------

class TokenEmbedding(nn.Module):
    """Eq. 1: y = GeLU(w_x value) + b_x for a token of type x; w_x is also x's request."""

    def __init__(self, n_types: int, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_types, d))
        self.b = nn.Parameter(torch.zeros(n_types, d))

    def forward(self, types: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.w[types] * values[..., None]) + self.b[types]


class Attention(nn.Module):
    """Multi-head attention of queries over keys; ``padding`` (B, T) True marks keys to
    ignore."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor):
        b, t, d = x.shape
        split = lambda y: y.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        mask = ~padding[:, None, None, :]                       # True: attend
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(memory)),
                                           split(self.v(memory)), attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def feed_forward(d: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, d))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, width: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = Attention(d, heads)
        self.ff = feed_forward(d, width)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h, padding)
        return x + self.ff(self.norm2(x))


class DecoderBlock(nn.Module):
    """Cross-attention from the requests to the encoded tokens (no self-attention between
    requests: each is answered on its own)."""

    def __init__(self, d: int, heads: int, width: int):
        super().__init__()
        self.norm1, self.norm_memory, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d), \
            nn.LayerNorm(d)
        self.attention = Attention(d, heads)
        self.ff = feed_forward(d, width)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor):
        q = q + self.attention(self.norm1(q), self.norm_memory(memory), padding)
        return q + self.ff(self.norm2(q))


class StellarTransformer(nn.Module):
    def __init__(self, n_types: int, d: int, heads: int, width: int, encoder_blocks: int,
                 decoder_blocks: int):
        super().__init__()
        self.embed = TokenEmbedding(n_types, d)
        self.encoder = nn.ModuleList(EncoderBlock(d, heads, width)
                                     for _ in range(encoder_blocks))
        self.decoder = nn.ModuleList(DecoderBlock(d, heads, width)
                                     for _ in range(decoder_blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)   # mean, ln sigma_pred^2

    def forward(self, types: torch.Tensor, values: torch.Tensor, padding: torch.Tensor,
                requests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, T) of types and scaled values, padding (B, T) True where no token,
        requests (B, K) of types -> mean and ln variance (B, K), scaled units."""
        x = self.embed(types, values.masked_fill(padding, 0.0))
        padding = padding & ~padding.all(1, keepdim=True)   # a row of nothing: NaN-free
        for block in self.encoder:
            x = block(x, padding)
        q = self.embed.w[requests]                      # the request vector is w_x [Sec. 3]
        for block in self.decoder:
            q = block(q, x, padding)
        out = self.head(self.norm(q))
        return out[..., 0], out[..., 1].clamp(-20.0, 10.0)


def loss_eq11(mean: torch.Tensor, ln_var: torch.Tensor, y: torch.Tensor,
              known_error: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 11, averaged over the valid targets: 0.5 ((yhat - y)^2 / (s_known^2 + s_pred^2)
    + ln(s_known^2 + s_pred^2))."""
    var = known_error ** 2 + ln_var.exp()
    loss = 0.5 * ((mean - y) ** 2 / var + var.log())
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def row_seeds(values: np.ndarray, chunk: Table | None = None) -> np.ndarray:
    """A seed per row for its random subsets: its source_id when ``chunk`` has one, else a
    hash of its token values."""
    if chunk is not None and "source_id" in chunk:
        return np.asarray(chunk["source_id"]).astype(np.uint64)
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        weights = np.arange(bits.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        return (bits * weights * np.uint64(0x9E3779B97F4A7C15)).sum(1, dtype=np.uint64)


def subset_keys(seeds: np.ndarray, draw: int, n_types: int) -> np.ndarray:
    """Uniform keys in [0, 1) (rows, n_types) from each row's seed and the draw number
    (splitmix64): the tokens with the lowest keys make the draw's subset."""
    with np.errstate(over="ignore"):
        x = (seeds.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(draw * 1_000_003 + 1) * np.arange(1, n_types + 1, dtype=np.uint64))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return ((x >> np.uint64(11)).astype(np.float64) / 2.0 ** 53).astype(np.float32)


def combine(means: torch.Tensor, variances: torch.Tensor):
    """Answers from several random subsets of a row's tokens (draws on the first axis) as
    one: the mean of the means; the mean of the variances plus the variance of the means."""
    return means.mean(0), variances.mean(0) + means.var(0, correction=0)


# -- 6. training -----------------------------------------------------------------------------

@dataclass
class Hyperparameters:
    d: int = 64                    # token vector size
    heads: int = 4
    width: int = 256               # feed-forward width
    encoder_blocks: int = 4
    decoder_blocks: int = 2
    context: int = 64              # at most this many input tokens
    min_inputs: int = 5            # training draws 5..context inputs [Sec. 5]
    requests: int = 8              # targets per star and step
    never_requested: list[str] = field(default_factory=lambda: ["j_g", "h_g"])
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    patience: int = 8
    monitor_fraction: float = 0.05


class TransformerModel:
    """Hyperparameters in the constructor; learned state (token scalers, network) set by
    `fit_table` or loaded from a model directory."""

    kind = "transformer"
    format_version = 1

    def __init__(self, labels: list[str], features: FeatureSpec | None = None,
                 hyper: Hyperparameters | None = None):
        self.labels = list(labels)
        self.features = features or FeatureSpec(wavelengths=DEFAULT_GRID[::6].tolist(),
                                                transform="linear")
        self.hyper = hyper or Hyperparameters()
        if self.features.xp != "sampled" or self.features.transform != "linear":
            raise ValueError("a transformer's flux tokens are sampled, linear flux / G flux "
                             "(features xp 'sampled', transform 'linear')")
        h = self.hyper
        if h.d % h.heads or not 1 <= h.min_inputs <= h.context or h.requests < 1:
            raise ValueError(f"d ({h.d}) must be a multiple of heads ({h.heads}), 1 <= "
                             f"min_inputs ({h.min_inputs}) <= context ({h.context}), "
                             f"requests ({h.requests}) >= 1")
        self.vocabulary = Vocabulary(self.features, self.labels)
        unknown = [n for n in self.hyper.never_requested if n not in self.vocabulary.index]
        if unknown:
            raise ValueError(f"never_requested names {unknown[0]!r}, not a token type")
        self.label_median: list[float] | None = None
        self.label_iqr: list[float] | None = None
        self.label_range: list[list[float]] | None = None
        self.provenance: dict = {}
        self.network = self._network()
        self.path = None
        self.checksum = None

    def _network(self) -> StellarTransformer:
        h = self.hyper
        return StellarTransformer(len(self.vocabulary), h.d, h.heads, h.width,
                                  h.encoder_blocks, h.decoder_blocks)

    @property
    def requestable(self) -> np.ndarray:
        mask = np.ones(len(self.vocabulary), bool)
        mask[[self.vocabulary.index[n] for n in self.hyper.never_requested]] = False
        return mask

    # -- configuration and weights --------------------------------------------------------

    def to_config(self) -> dict:
        return {"kind": self.kind, "format_version": self.format_version,
                "labels": self.labels, "features": self.features.to_dict(),
                "hyperparameters": asdict(self.hyper), "label_median": self.label_median,
                "label_iqr": self.label_iqr, "label_range": self.label_range,
                "provenance": self.provenance}

    @classmethod
    def from_config(cls, config: dict) -> "TransformerModel":
        model = cls(config["labels"], FeatureSpec.from_dict(config["features"]),
                    Hyperparameters(**config["hyperparameters"]))
        model.label_median, model.label_iqr = config["label_median"], config["label_iqr"]
        model.label_range = config["label_range"]
        model.provenance = config.get("provenance", {})
        if model.features.median is None or model.label_median is None:
            raise ValueError("the config holds no fitted scalers (an untrained model?)")
        return model

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def load_tensors(self, tensors: dict[str, torch.Tensor], file: str) -> None:
        models.check_tensors(self.network, tensors, file)
        self.network.eval()

    # -- tokens from tables ---------------------------------------------------------------

    def tokens(self, chunk: Table, xp: np.ndarray, xp_error: np.ndarray | None):
        """Scaled values, scaled known errors (0 where unknown) and the observed mask, each
        (n, types), and the input flags (n,) of a chunk: flux and colours from its XP values
        (`FeatureSpec.raw`), labels from its label columns (and ``<label>_err``) where it has
        them."""
        n = len(chunk)
        values, errors, observed, flags = self.features.raw(chunk, xp, xp_error)
        values, errors = self.features.scale(values, np.zeros_like(values) if errors is None
                                             else errors)
        labels = np.stack([float_column(chunk, l, n) for l in self.labels], 1)
        label_errors = np.stack([float_column(chunk, f"{l}_err", n) for l in self.labels], 1)
        median, iqr = np.asarray(self.label_median), np.asarray(self.label_iqr)
        known = np.isfinite(labels)
        values = np.concatenate([values, np.where(known, (labels - median) / iqr, 0.0)], 1)
        errors = np.concatenate([errors, label_errors / iqr], 1)
        observed = np.concatenate([observed, known], 1)
        errors = np.where(observed & np.isfinite(errors) & (errors > 0), errors, 0.0)
        return values.astype(np.float32), errors.astype(np.float32), observed, flags

    def to_values(self, scaled: np.ndarray, scaled_sigma: np.ndarray, types: np.ndarray):
        """Scaled means and sigmas (n, K) of ``types`` back to their units."""
        median = np.concatenate([self.features.median, self.label_median])[types]
        iqr = np.concatenate([self.features.iqr, self.label_iqr])[types]
        return scaled * iqr + median, scaled_sigma * iqr

    # -- training -------------------------------------------------------------------------

    @staticmethod
    def _draw(observed: torch.Tensor, context: int,
              low: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, a random subset of its observed types in random order (torch's global
        RNG): indices (B, context) and padding (B, context); a uniform count between ``low``
        and ``context`` (fewer when fewer are observed) when ``low`` is given, else as many
        as fit."""
        keys = torch.rand(observed.shape).masked_fill(~observed, 2.0)
        order = keys.argsort(dim=1)[:, :context]
        available = observed.sum(1).clamp(max=context)
        if low:
            span = (available - low + 1).clamp(min=1)
            count = torch.minimum(low + (torch.rand(len(available)) * span).floor().long(),
                                  available)
        else:
            count = available
        padding = torch.arange(order.shape[1])[None] >= count[:, None]
        return order, padding

    def _targets(self, observed: torch.Tensor, given: torch.Tensor, k: int):
        """k requested types per row: observed, requestable types not given first (labels
        before the rest), then given ones (the model also learns to repeat an input); the
        order among equals random. Returns types (B, k) and valid (B, k)."""
        n_types = observed.shape[1]
        is_label = torch.zeros(n_types, dtype=torch.bool)
        is_label[-len(self.labels):] = True
        keys = torch.rand(observed.shape) + 2.0 * given - 1.0 * is_label[None]
        allowed = observed & torch.from_numpy(self.requestable)[None]
        keys = keys.masked_fill(~allowed, 10.0)
        types = keys.argsort(dim=1)[:, :k]
        return types, allowed.gather(1, types)

    def fit(self, data: dict[str, np.ndarray], monitor: np.ndarray, trainer) -> None:
        """Train on scaled token values, errors and observed masks (n, types); rows in
        ``monitor`` are held out for early stopping (their loss: the labels, requested from
        all other observed tokens)."""
        from xptools.train import Stage

        h = self.hyper
        tensors = {k: torch.from_numpy(v) for k, v in data.items()}
        train = {k: v[torch.from_numpy(~monitor)] for k, v in tensors.items()}
        held = {k: v[torch.from_numpy(monitor)] for k, v in tensors.items()}
        n_labels = len(self.labels)
        torch.manual_seed(trainer.seed)
        self.network = self._network()
        labels = torch.arange(len(self.vocabulary) - n_labels, len(self.vocabulary))

        def loss(batch, training):
            observed = batch["observed"]
            if training:
                order, padding = self._draw(observed, h.context, h.min_inputs)
                given = torch.zeros_like(observed).scatter_(1, order, ~padding)
                requests, valid = self._targets(observed, given, h.requests)
            else:   # the labels from everything else
                not_labels = observed.clone()
                not_labels[:, -n_labels:] = False
                order, padding = self._draw(not_labels, h.context, 0)
                requests = labels[None].expand(len(observed), -1)
                valid = observed[:, -n_labels:]
            mean, ln_var = self.network(order, batch["values"].gather(1, order), padding,
                                        requests)
            value = loss_eq11(mean, ln_var, batch["values"].gather(1, requests),
                              batch["errors"].gather(1, requests), valid)
            return value, {"loss": value.item()}

        trainer.run(Stage("transformer", self.network, loss, train, held, epochs=h.epochs,
                          batch_size=h.batch_size, lr=h.lr, min_lr=h.min_lr,
                          weight_decay=h.weight_decay, patience=h.patience))
        self.network.eval()

    @classmethod
    def create(cls, labels: list[str], recipe: dict) -> "TransformerModel":
        if not labels:
            raise UserError("name the labels to learn: --labels teff,logg,... (or 'labels' in "
                            "the recipe)")
        features = {"wavelengths": DEFAULT_GRID[::6].tolist(), "transform": "linear",
                    **recipe.get("features", {})}
        try:
            return cls(labels, FeatureSpec(**features),
                       Hyperparameters(**recipe.get("hyperparameters", {})))
        except (TypeError, ValueError) as e:
            raise UserError(f"recipe: {e}") from None

    def fit_table(self, table: Table, name: str, trainer) -> dict:
        source = XPSource(table, name, self.features, with_errors=True)
        xp, xp_error = source(table)
        self.features.fit(table, xp)
        y = np.stack([float_column(table, l, len(table)) for l in self.labels], 1)
        missing = [l for l in self.labels if l not in table]
        if missing:
            raise UserError(f"{name}: no label column {missing[0]!r}")
        monitor = monitor_split(table, self.hyper.monitor_fraction, trainer.seed)
        fitting = y[~monitor]
        if np.isfinite(fitting).sum(0).min() < 20:
            raise UserError(f"{name}: a label is known for fewer than 20 training rows")
        q25, q50, q75 = np.nanpercentile(fitting, [25, 50, 75], axis=0)
        self.label_median = q50.tolist()
        self.label_iqr = np.where(q75 > q25, q75 - q25, 1.0).tolist()
        self.label_range = [np.nanpercentile(fitting[:, j], [0.5, 99.5]).tolist()
                            for j in range(len(self.labels))]
        values, errors, observed, _ = self.tokens(table, xp, xp_error)
        self.fit({"values": values, "errors": errors, "observed": observed}, monitor, trainer)
        return {"rows": int(len(table)), "train_rows": int((~monitor).sum()),
                "monitor_rows": int(monitor.sum())}

    # -- 7. answering ---------------------------------------------------------------------

    def answer(self, values: np.ndarray, given: np.ndarray, requests: np.ndarray,
               draws: int = DRAWS, seeds: np.ndarray | None = None, batch: int = 4096,
               advance=None):
        """Means and sigmas (n, K) in scaled units for the ``requests`` (K types) of each row
        from its ``given`` tokens (n, types; values scaled). A row with more given tokens
        than the context is answered ``draws`` times from random subsets of ``context``
        tokens, drawn from the row's own ``seeds`` (`row_seeds`), so that its answer does not
        depend on the rows around it: mean of the means, variance = mean of the variances +
        variance of the means. Rows with nothing given get NaN."""
        h = self.hyper
        n, k = len(values), len(requests)
        mean = np.full((n, k), np.nan, np.float32)
        sigma = np.full((n, k), np.nan, np.float32)
        seeds = row_seeds(values) if seeds is None else seeds
        request = torch.as_tensor(np.asarray(requests), dtype=torch.long)
        inside = given.sum(1) <= h.context
        with torch.inference_mode():
            for s in range(0, n, batch):
                rows = np.arange(s, min(s + batch, n))
                for fits in (True, False):
                    part = rows[inside[rows] == fits]
                    if not len(part):
                        continue
                    v = torch.from_numpy(np.ascontiguousarray(values[part], np.float32))
                    g = torch.from_numpy(np.ascontiguousarray(given[part]))
                    answers = [self._pass(v, g, torch.zeros(g.shape) if fits else
                                          torch.from_numpy(subset_keys(seeds[part], draw,
                                                                       g.shape[1])),
                                          request)
                               for draw in range(1 if fits else draws)]
                    m, var = combine(torch.stack([a[0] for a in answers]),
                                     torch.stack([a[1] for a in answers]))
                    ok = g.any(1).numpy()[:, None]
                    mean[part] = np.where(ok, m.numpy(), np.nan)
                    sigma[part] = np.where(ok, var.sqrt().numpy(), np.nan)
                if advance is not None:
                    advance(len(rows))
        return mean, sigma

    def _pass(self, v: torch.Tensor, g: torch.Tensor, keys: torch.Tensor,
              request: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the network: the given tokens of each row with the lowest ``keys`` (at
        most the context) -> mean and variance of each request."""
        order = keys.masked_fill(~g, 2.0).argsort(dim=1, stable=True)[:, :self.hyper.context]
        width = int(g.sum(1).clamp(max=self.hyper.context).max())
        order = order[:, :max(width, 1)]
        m, ln_var = self.network(order, v.gather(1, order), ~g.gather(1, order),
                                 request[None].expand(len(v), -1))
        return m, ln_var.exp()

    def given_mask(self, observed: np.ndarray, requests: np.ndarray, given: str | None,
                   hide: str | None) -> np.ndarray:
        """Which observed tokens each row gives: those of ``given`` (SPEC; default every
        observed token but the requested types), less those of ``hide``."""
        if given:
            allowed = self.vocabulary.select(given, "--given")
        else:
            allowed = np.ones(len(self.vocabulary), bool)
            allowed[requests] = False
        if hide:
            allowed &= ~self.vocabulary.select(hide, "--hide")
        return observed & allowed[None]

    def request_types(self, spec: str | None) -> np.ndarray:
        """The types of a --request SPEC (default: the labels), in vocabulary order."""
        return self.vocabulary.types(spec or "labels", "--request")

    def xp(self, chunk: Table, source: XPSource | None):
        """The chunk's XP values and errors on the model's grid (`XPSource`), or NaN and None
        for a table without spectra (of labels, say)."""
        if source is None:
            return np.full((len(chunk), len(self.vocabulary.flux)), np.nan), None
        return source(chunk)

    def given_flags(self, flags: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """infer_flag's input bits for what each row gives (``mask``): no or partial XP, no
        or partial photometry, and FLAG_UNUSABLE where nothing is given; the G and flux
        excess bits of ``flags`` (`FeatureSpec.raw`) kept."""
        out = flags & ~(FLAG_NO_XP | FLAG_PARTIAL_XP | FLAG_NO_PHOTOMETRY
                        | FLAG_PARTIAL_PHOTOMETRY)
        for group, none, partial in (("xp", FLAG_NO_XP, FLAG_PARTIAL_XP),
                                     ("phot", FLAG_NO_PHOTOMETRY, FLAG_PARTIAL_PHOTOMETRY)):
            types = self.vocabulary.groups[group]
            count = mask[:, types].sum(1)
            out |= np.where(count == 0, none, 0) | np.where(
                (count > 0) & (count < len(types)), partial, 0)
        return out | np.where(mask.any(1), 0, FLAG_UNUSABLE)

    def predict_chunk(self, chunk: Table, source: XPSource | None, requests: np.ndarray,
                      given: str | None = None, hide: str | None = None, draws: int = DRAWS,
                      advance=None) -> dict:
        """Per requested type: value, error, q16, q84 (value -+ error), in its units, and
        infer_flag: the bits of what the row gives (`given_flags`), and FLAG_OUT_OF_RANGE
        where a label is outside the training labels' 0.5..99.5 percentiles."""
        values, _, observed, flags = self.tokens(chunk, *self.xp(chunk, source))
        mask = self.given_mask(observed, requests, given, hide)
        mean, sigma = self.answer(values, mask, requests, draws, row_seeds(values, chunk),
                                  advance=advance)
        mean, sigma = self.to_values(mean, sigma, requests)
        usable = mask.any(1)
        flags = self.given_flags(flags, mask)
        out = {}
        for j, t in enumerate(requests):
            name = self.vocabulary.names[t]
            if name in self.labels:
                lo, hi = self.label_range[self.labels.index(name)]
                flags |= np.where(usable & ((mean[:, j] < lo) | (mean[:, j] > hi)),
                                  FLAG_OUT_OF_RANGE, 0)
            out[name] = [mean[:, j], sigma[:, j], mean[:, j] - sigma[:, j],
                         mean[:, j] + sigma[:, j]]
        out["flag"] = flags
        return out

    def spectra(self, chunk: Table, source: XPSource | None, requests: np.ndarray,
                given: str | None, hide: str | None = None, draws: int = DRAWS,
                advance=None) -> dict[str, np.ndarray]:
        """``flux`` and ``scatter`` (n, samples) in W m-2 nm-1 on the model grid: the
        requested flux types predicted (NaN elsewhere) from the given tokens of each row,
        scaled by the row's ``g`` (its phot_g_mean_mag, else G from its XP spectrum; NaN
        without either, and the flux then that of G = 0); ``flags``: FLAG_G_FROM_XP, and
        FLAG_UNUSABLE where nothing is given; the row's own ``xp``, ``xp_error`` (`xp`)."""
        n, n_flux = len(chunk), len(self.vocabulary.flux)
        xp, xp_error = self.xp(chunk, source)
        values, _, observed, flags = self.tokens(chunk, xp, xp_error)
        mask = self.given_mask(observed, requests, given, hide)
        mean, sigma = self.answer(values, mask, requests, draws, row_seeds(values, chunk),
                                  advance=advance)
        mean, sigma = self.to_values(mean, sigma, requests)
        g, _ = self.features.g_magnitude(chunk, xp)
        to_flux = 10.0 ** (-0.4 * np.where(np.isfinite(g), g, 0.0))[:, None]
        flux = np.full((n, n_flux), np.nan)
        scatter = np.full((n, n_flux), np.nan)
        flux[:, requests] = mean * to_flux
        scatter[:, requests] = sigma * to_flux
        flags = (flags & FLAG_G_FROM_XP) | np.where(mask.any(1), 0, FLAG_UNUSABLE)
        return {"flux": flux, "scatter": scatter, "flags": flags, "xp": xp,
                "xp_error": xp_error, "g": g}

    # -- validation -----------------------------------------------------------------------

    def evaluate(self, table: Table, name: str) -> dict:
        """On a labelled table: labels from XP + photometry (sigma_MAD and z against the
        table's labels and their errors), spectra from labels + colours, BP from RP and RP
        from BP (median |relative residual| over 400..1000 nm, pulls per sample), and the
        never-requested tokens from everything else."""
        source = XPSource(table, name, self.features, with_errors=True)
        xp, xp_error = source(table)
        values, errors, observed, flags = self.tokens(table, xp, xp_error)
        voc = self.vocabulary
        report = {"file": name, "rows": int(len(table))}
        labels = np.flatnonzero(voc.select("labels", "labels"))
        mean, sigma = self.answer(values, self.given_mask(observed, labels, "xp,phot", None),
                                  labels)
        mean, sigma = self.to_values(mean, sigma, labels)
        y = np.stack([float_column(table, l, len(table)) for l in self.labels], 1)
        subsets = {"all": np.ones(len(table), bool)}
        if "teff" in self.labels:
            subsets["teff<7000"] = y[:, self.labels.index("teff")] < 7000
            subsets["teff>=7000"] = y[:, self.labels.index("teff")] >= 7000
        if "fe_h" in self.labels:
            subsets["fe_h<-1"] = y[:, self.labels.index("fe_h")] < -1
        for subset, rows in subsets.items():
            report[subset] = {}
            for j, label in enumerate(self.labels):
                ref_error = float_column(table, f"{label}_err", len(table))[rows]
                m, s = mean[rows, j], sigma[rows, j]
                report[subset][label] = label_metrics(m, s, m - s, m + s, y[rows, j],
                                                      ref_error)
        flux_types = np.flatnonzero(voc.select("xp", "xp"))
        truth, truth_error = self.to_values(values[:, flux_types], errors[:, flux_types],
                                            flux_types)
        truth_error[~observed[:, flux_types]] = np.nan
        spectra = {"labels -> xp": ("labels,phot", "xp"), "rp -> bp": ("rp", "bp"),
                   "bp -> rp": ("bp", "rp")}
        report["spectra"] = {}
        for task, (given, request) in spectra.items():
            types = np.flatnonzero(voc.select(request, "request"))
            mask = self.given_mask(observed, types, given, None)
            m, s = self.answer(values, mask, types)
            m, s = self.to_values(m, s, types)
            report["spectra"][task] = spectrum_figures(
                m, s, np.where(observed[:, types], truth[:, types], np.nan),
                truth_error[:, types], np.asarray(self.features.wavelengths)[types])
        report["never_requested"] = {}
        for token in self.hyper.never_requested:
            t = voc.index[token]
            mask = self.given_mask(observed, np.array([t]), "xp,phot", token)
            m, s = self.answer(values, mask, np.array([t]))
            m, s = self.to_values(m, s, np.array([t]))
            true = np.where(observed[:, t], self.to_values(values[:, [t]], errors[:, [t]],
                                                          np.array([t]))[0], np.nan)
            ok = np.isfinite(true[:, 0]) & np.isfinite(m[:, 0])
            d = m[ok, 0] - true[ok, 0]
            report["never_requested"][token] = {
                "n": int(ok.sum()), "sigma_mad": sigma_mad(d), "bias": float(np.median(d)),
                "median_error": float(np.median(s[ok, 0])),
                "z_sigma_mad": sigma_mad(d / s[ok, 0]),
                "spread": sigma_mad(true[ok, 0] - np.median(true[ok, 0]))}
        return report

    def report_text(self, report: dict) -> str:
        from xptools.metrics import report_table

        lines = ["Labels from XP + photometry (sigma_MAD against the table's labels; z with "
                 "both errors):", "",
                 report_table(report, [k for k, v in report.items() if isinstance(v, dict)
                                       and k not in ("spectra", "never_requested")]), "",
                 "Spectra (flux / G flux; residual = prediction - observed over 400..1000 nm; "
                 "pull = residual / sqrt(error^2 + sigma_pred^2) per sample):", "",
                 "| task | N | median abs relative residual | pull median, worst sample "
                 "| pull sigma_MAD, range over samples |", "|---|---|---|---|---|"]
        for task, f in report["spectra"].items():
            lines.append(f"| {task} | {f['n']} | {f['median_abs_relative']:.4f} | "
                         f"{f['worst_pull_median']:+.3f} | {f['pull_sigma_mad_min']:.2f}.."
                         f"{f['pull_sigma_mad_max']:.2f} |")
        lines += ["", "Never-requested tokens, predicted from XP + the other colours "
                  "[Sec. 7.2]:", "", "| token | N | sigma_MAD | bias | median sigma_pred | "
                  "z sigma_MAD | spread of the truth (sigma_MAD) |",
                  "|---|---|---|---|---|---|---|"]
        for token, f in report["never_requested"].items():
            lines.append(f"| {token} | {f['n']} | {f['sigma_mad']:.4f} | {f['bias']:+.4f} | "
                         f"{f['median_error']:.4f} | {f['z_sigma_mad']:.3f} | "
                         f"{f['spread']:.4f} |")
        return "\n".join(lines)

    def card(self, report: dict | None) -> str:
        h, p = self.hyper, self.provenance
        n_params = sum(t.numel() for t in self.network.parameters())
        lines = [
            f"# Transformer foundation model: {', '.join(self.labels)}, spectra, colours", "",
            "Model kind `transformer` (Leung & Bovy 2024): every datum a (type, value) token; "
            "an encoder over any given tokens, a decoder that answers any requested type with "
            "a mean and a predictive sigma.", "",
            "## Tokens", "",
            f"- {len(self.vocabulary.flux)} XP flux samples / G flux, "
            f"{self.features.wavelengths[0]:g}..{self.features.wavelengths[-1]:g} nm (every 6th "
            f"sample of GaiaXPy's default grid; groups bp < {BP_LIMIT:g} nm <= rp)",
            f"- colours against G: {', '.join(self.vocabulary.colours)}",
            f"- labels: {', '.join(self.labels)}",
            "- each type scaled by (value - median) / IQR of the training stars; known errors "
            "(flux_error, <label>_err; none for the colours) alike",
            f"- never requested in training (given as inputs only): "
            f"{', '.join(h.never_requested)}", "",
            "## Training", "",
            f"- data: {p.get('train_file')} (sha256 {str(p.get('train_sha256'))[:16]}...), "
            f"{p.get('rows')} rows; {p.get('monitor_rows')} held out (hash of source_id) for "
            f"early stopping on the labels' Eq. 11 loss from XP + colours, "
            f"{p.get('train_rows')} trained on",
            f"- network: d = {h.d}, {h.heads} heads, feed-forward width {h.width}, "
            f"{h.encoder_blocks} encoder and {h.decoder_blocks} decoder blocks, context "
            f"{h.context} tokens; {n_params:,} parameters",
            f"- each step, per star: {h.min_inputs}..{h.context} of its observed tokens given "
            f"(uniform count, random subset and order), {h.requests} requested: observed, "
            f"not given ones first, labels before the rest, then given ones (so that the "
            f"model can also repeat an input); loss Eq. 11",
            f"- AdamW, lr {h.lr} with warm-up and cosine decay to {h.min_lr}, weight decay "
            f"{h.weight_decay}, batch {h.batch_size}, at most {h.epochs} epochs, patience "
            f"{h.patience}",
            f"- seed {p.get('seed')}; {p.get('train_seconds')} s of training; xptools "
            f"{p.get('xptools')}; `{p.get('command')}`", ""]
        if report:
            lines += [f"## Validation: {report['file']} ({report['rows']} rows)", "",
                      self.report_text(report), ""]
        else:
            lines += models.NO_VALIDATION
        lines += ["## Known limits", "",
                  "- Trained on APOGEE DR17 stars (mostly giants): hot stars (Teff >= 7000 K, "
                  "few and without abundances) and metal-poor stars ([Fe/H] < -1) are rare in "
                  "training and less accurate (their rows above).",
                  "- No parallax in the training data, so no luminosity token: log g rests on "
                  "the spectrum's shape and the colours.",
                  "- sigma_pred is the model's own predictive sigma; check it with the z "
                  "columns above (and `xptools calibrate`).",
                  "- Labels are on the APOGEE DR17 (ASPCAP) scale, with its systematics.", ""]
        return "\n".join(lines)


def spectrum_figures(pred: np.ndarray, pred_sigma: np.ndarray, observed: np.ndarray,
                     error: np.ndarray, wavelengths: np.ndarray) -> dict:
    """Predicted against observed spectra (n, samples) over 400..1000 nm: the median over
    stars and samples of |pred - observed| / observed, and per sample the median and
    sigma_MAD of the pulls (pred - observed) / sqrt(error^2 + sigma_pred^2)."""
    window = (wavelengths >= 400) & (wavelengths <= 1000)
    residual = (pred - observed)[:, window]
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.abs(residual / observed[:, window])
        pull = residual / np.sqrt(error[:, window] ** 2 + pred_sigma[:, window] ** 2)
    ok = np.isfinite(pull)
    medians = np.array([np.median(pull[ok[:, j], j]) for j in range(pull.shape[1])])
    mads = np.array([sigma_mad(pull[ok[:, j], j]) for j in range(pull.shape[1])])
    return {"n": int(ok.all(1).sum()),
            "median_abs_relative": float(np.nanmedian(relative)),
            "worst_pull_median": float(medians[np.argmax(np.abs(medians))]),
            "pull_sigma_mad_min": float(mads.min()), "pull_sigma_mad_max": float(mads.max()),
            "wavelength": wavelengths[window].tolist(), "pull_median": medians.tolist(),
            "pull_sigma_mad": mads.tolist()}
