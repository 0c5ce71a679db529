"""Trained models: a registry of model kinds, and model directories on disk.

A model is a directory:

    config.json          kind, format version, hyperparameters, feature spec and scalers,
                         label names and ranges, training provenance
    weights.safetensors  the learned tensors (safetensors: loading cannot run code)
    card.md              data, split, validation metrics and known limits
    validation.json      the final validation report (when trained with xptools train)
    calibration.json     what `xptools calibrate -o` measured (the calibration itself is
                         config.json's ``calibration`` section, applied by `xptools infer`)
    detectors.safetensors  the out-of-distribution detectors of `xptools flag` as arrays
                         (config.json's ``detectors`` section says what they read)

`load(path)` checks the config and that the weights match what the config builds, and fails
with one clear line otherwise. The shipped default models live in ``xptools/data/``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile

from xptools.errors import UserError
from xptools.io import atomic

# kind -> "module:Class"; imported only when a model of that kind is used
REGISTRY = {
    "forward": "xptools.models.forward:ForwardModel",
    "msa": "xptools.models.msa:MaskedStellarAutoencoder",
    "svae": "xptools.models.svae:ScatterVAE",
    "transformer": "xptools.models.transformer:TransformerModel",
}
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
CARD = "card.md"
DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
# command -> shipped model directory name
DEFAULTS = {"infer": "msa-apogee", "embed": "svae-apogee", "generate": "svae-apogee",
            "flag": "msa-apogee"}
# the card's section for a model trained without --valid
NO_VALIDATION = ["## Validation", "", "None: trained without `--valid`. Measure the model on "
                 "stars it has not seen with `xptools train ... --valid FILE`, or label such "
                 "stars with it and compare.", ""]


def model_class(kind: str):
    if kind not in REGISTRY:
        raise UserError(f"unknown model kind {kind!r} (known: {', '.join(sorted(REGISTRY))})")
    module, name = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def default_path(command: str) -> str:
    path = os.path.join(DATA, DEFAULTS[command])
    if not os.path.isfile(os.path.join(path, CONFIG)):
        raise UserError(f"the default model for {command} is not installed ({path}); "
                        f"give --model DIR")
    return path


def shipped(path: str) -> str:
    """``path``, or the shipped model of that name (``xptools/data/NAME``) when ``path`` is a
    bare name and no such folder exists here."""
    if os.path.exists(path) or os.sep in path or not os.path.isdir(os.path.join(DATA, path)):
        return path
    return os.path.join(DATA, path)


def read_config(path: str) -> dict:
    file = os.path.join(path, CONFIG)
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such model directory")
    try:
        with open(file) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not a model directory (no {CONFIG})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise UserError(f"{file}: no model 'kind' in the config")
    return config


def weights_checksum(path: str, names: tuple[str, ...] = (WEIGHTS,)) -> str:
    """SHA-256 of the files ``names`` of a model directory (those present), in turn."""
    h = hashlib.sha256()
    for name in names:
        if not os.path.exists(os.path.join(path, name)):
            continue
        with open(os.path.join(path, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def identity(model) -> str:
    """What a loaded model's outputs depend on, as one SHA-256: its weights, its config.json
    (calibration and detectors' settings included) and its detectors' arrays."""
    from xptools import ood

    return weights_checksum(model.path, (WEIGHTS, CONFIG, ood.FILE))


def load(path: str):
    """The model in directory ``path`` (any registered kind)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(path)
    cls = model_class(config["kind"])
    try:
        if config.get("format_version") != cls.format_version:
            raise ValueError(f"format_version {config.get('format_version')!r}, this xptools "
                             f"reads {cls.format_version}")
        model = cls.from_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: bad {config['kind']} config ({type(e).__name__}: {e})") from e
    file = os.path.join(path, WEIGHTS)
    if not os.path.isfile(file):
        raise UserError(f"{path}: no {WEIGHTS}")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file}: unreadable weights ({e})") from e
    model.load_tensors(tensors, file)
    model.path = path
    model.checksum = weights_checksum(path)
    model.detectors = load_detectors(path, config)
    model.calibration = None
    if config.get("calibration") is not None:
        from xptools.calibrate.calibration import Calibration

        try:
            model.calibration = Calibration.from_dict(config["calibration"], model.labels)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: bad calibration in {CONFIG} ({type(e).__name__}: {e})") \
                from e
    return model


def load_latent(path: str | None, command: str):
    """A model with a latent space (the scatter VAE) for ``command``, on one torch thread (its
    encoder and decoders are tiny: threads only add overhead)."""
    from xptools.threads import torch_with

    torch_with(1)
    loaded = load(path or default_path(command))
    if not hasattr(loaded, "embed"):
        raise UserError(f"{path}: a {loaded.kind} model has no latent space (use an svae model)")
    return loaded


def load_detectors(path: str, config: dict):
    """The out-of-distribution detectors of a model directory (`xptools.ood`: config.json's
    ``detectors`` section and the arrays of detectors.safetensors), or None."""
    if config.get("detectors") is None:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from xptools import ood

    file = os.path.join(path, ood.FILE)
    try:
        arrays = load_file(file)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file}: unreadable detectors ({e})") from e
    return ood.Detectors.from_arrays(config["detectors"], arrays, file)


def keywords(model) -> dict[str, str]:
    """Header keywords naming the model an output was made with: its directory name, kind,
    and the start of its weights' SHA-256."""
    out = {"XPTMODEL": os.path.basename(os.path.normpath(model.path or "")) or model.kind,
           "XPTMKIND": model.kind, "XPTMSUM": (model.checksum or "")[:16]}
    calibration = getattr(model, "calibration", None)
    if calibration is not None:  # `xptools calibrate -o`: which calibration was applied
        out.update({"XPTCALIB": calibration.id, "XPTCFIT": calibration.fit})
    return out


def column_names(prefix: str | None, names: list[str]) -> dict[str, str]:
    """The columns a model run adds, with an optional prefix ('svae' or 'svae_' gives svae_z)."""
    p = "" if not prefix else prefix if prefix.endswith("_") else prefix + "_"
    return {n: p + n for n in names}


def check_clash(schema, names, name: str) -> None:
    """Stop if the input already has one of the columns a model run would add."""
    clash = [c for c in names if c in schema]
    if clash:
        raise UserError(f"{name}: already has a column {clash[0]!r}; give --prefix to name the "
                        f"new columns differently")


def check_tensors(module, tensors: dict, file: str) -> None:
    """Load ``tensors`` into a torch module, failing clearly on any mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise UserError(f"{file}: weights do not match the config ({what}; "
                        f"{len(missing)} missing, {len(extra)} unexpected tensors)")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"{file}: weights do not match the config ({name!r} has shape "
                            f"{tuple(tensor.shape)}, the config makes "
                            f"{tuple(expected[name].shape)})")
    module.load_state_dict(tensors)


def other_files(path: str, skip=()) -> dict[str, bytes]:
    """The files of model directory ``path`` besides what `save` writes (config, weights,
    card, detectors) and ``skip``: what a model saved again from it keeps (figures, reports)."""
    from xptools import ood

    skip = {CONFIG, WEIGHTS, CARD, ood.FILE, *skip}
    out = {}
    for name in sorted(os.listdir(path)):
        file = os.path.join(path, name)
        if name not in skip and os.path.isfile(file) and not name.startswith("."):
            with open(file, "rb") as f:
                out[name] = f.read()
    return out


def save(model, path: str, card: str, overwrite: bool = False,
         extra_files: dict[str, str | bytes] | None = None,
         checksum: str | None = None) -> None:
    """Write a model directory atomically (a temporary directory renamed into place).

    ``extra_files``: name -> text (or bytes). ``checksum``: the SHA-256 the weights must have
    (a model written again with the same weights); checked before the directory appears. A
    model with a ``calibration`` (`xptools calibrate`) keeps it in config.json, one with
    out-of-distribution ``detectors`` (`xptools.ood`) their arrays in detectors.safetensors."""
    from safetensors.numpy import save as save_arrays
    from safetensors.torch import save

    from xptools import ood

    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path} exists; use --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = atomic.temporary_beside(path, suffix=".tmp", folder=True)
    try:
        config = model.to_config()
        if getattr(model, "calibration", None) is not None:
            config["calibration"] = model.calibration.to_dict()
        detectors = getattr(model, "detectors", None)
        if detectors is not None:
            config["detectors"] = detectors.to_config()
            with open(os.path.join(tmp, ood.FILE), "wb") as f:
                f.write(save_arrays(detectors.arrays()))
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(config, f, indent=1)
        with open(os.path.join(tmp, WEIGHTS), "wb") as f:  # save_file makes it private
            f.write(save({k: v.contiguous() for k, v in model.tensors().items()}))
        if checksum is not None and weights_checksum(tmp) != checksum:
            raise UserError(f"{path}: the weights written differ from the model's (SHA-256 "
                            f"{weights_checksum(tmp)[:16]}, expected {checksum[:16]}); "
                            f"nothing written")
        with open(os.path.join(tmp, CARD), "w") as f:
            f.write(card)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "wb" if isinstance(text, bytes) else "w") as f:
                f.write(text)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=parent)
            os.replace(path, os.path.join(old, "model"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        atomic.done_with(tmp)
    except BaseException as e:
        atomic.discard(tmp)
        message = atomic.no_space(e, path)
        if message:
            raise UserError(f"{path}: {message}") from e
        raise
