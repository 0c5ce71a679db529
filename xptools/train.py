"""The one training loop every model uses: AdamW, a learning-rate schedule, mini-batches,
early stopping on a monitor set, checkpoints and exact resume, a progress bar.

A model trains in one or more `Stage`s (a network, a loss, data). `Trainer.run(stage)`:

- draws the batch order of epoch e from (seed, stage, e) and reseeds torch from
  (seed, stage, e, step) before every step, so dropout and random masks do not depend on where
  a run was interrupted: a resumed run ends with the same weights as an uninterrupted one;
- writes a checkpoint (one safetensors file per stage: weights, optimiser moments, best
  weights, and the counters and history as JSON in its metadata, so a kill can never pair
  tensors with the counters of another step) every ``checkpoint_every`` steps and at each
  epoch end, atomically, under ``<workdir>/checkpoints/``;
- with ``resume``, continues a stage from its checkpoint, or skips a finished stage;
- after each epoch evaluates the stage's loss on the monitor set; stops after ``patience``
  epochs without improvement and restores the best weights.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from xptools.errors import UserError
from xptools.progress import progress


@dataclass
class Stage:
    name: str                                   # unique in a run: names the checkpoint files
    module: torch.nn.Module
    loss: Callable[[dict, bool], tuple[torch.Tensor, dict[str, float]]]  # (batch, training)
    data: dict[str, torch.Tensor]               # training arrays, first axis = sample
    monitor: dict[str, torch.Tensor] | None = None  # early-stopping arrays
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.03                        # fraction of steps of linear warm-up
    min_lr: float = 0.0                         # cosine decay from lr to min_lr
    lr_at: Callable[[int, int], float] | None = None  # (step, total) -> lr, overrides the above
    patience: int | None = 10
    history: list[dict] = field(default_factory=list)

    def learning_rate(self, step: int, total: int) -> float:
        if self.lr_at is not None:
            return self.lr_at(step, total)
        warm = max(1, int(self.warmup * total))
        if step < warm:
            return self.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


def cosine_warm_restarts(high: float, low: float, period: int) -> Callable[[int, int], float]:
    """A `Stage.lr_at` schedule: cosine annealing from ``high`` to ``low`` over ``period``
    steps, then a restart at ``high`` (SGDR, Loshchilov & Hutter 2017, Eq. 5, with T_mult = 1)."""

    def lr_at(step: int, total: int) -> float:
        t = (step % period) / period
        return low + 0.5 * (high - low) * (1 + math.cos(math.pi * t))

    return lr_at


def _seed(*parts) -> int:
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


class Trainer:
    def __init__(self, workdir: str, seed: int = 0, checkpoint_every: int = 500,
                 resume: bool = False, quiet: bool = False, log=None):
        self.workdir = workdir
        self.seed = seed
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.quiet = quiet
        self.log = log or (lambda message: None)
        self.checkpoints = os.path.join(workdir, "checkpoints")  # made at the first save
        self.seconds = 0.0  # training time of all stages run, resumed parts included

    # -- checkpoints ----------------------------------------------------------------------

    def _path(self, stage: Stage) -> str:
        return os.path.join(self.checkpoints, stage.name + ".safetensors")

    def _save(self, stage: Stage, optimizer, state: dict, best: dict | None) -> None:
        from safetensors.torch import save_file

        tensors = {f"module.{k}": v.detach().clone().contiguous()
                   for k, v in stage.module.state_dict().items()}
        for index, moments in optimizer.state_dict()["state"].items():
            for key, value in moments.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).clone().contiguous()
        for k, v in (best or {}).items():
            tensors[f"best.{k}"] = v.contiguous()
        path = self._path(stage)
        os.makedirs(self.checkpoints, exist_ok=True)
        save_file(tensors, path + ".part",
                  metadata={"state": json.dumps({**state, "history": stage.history})})
        os.replace(path + ".part", path)

    def _restore(self, stage: Stage, optimizer) -> tuple[dict, dict | None] | None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        weights = self._path(stage)
        if not (self.resume and os.path.exists(weights)):
            return None
        with safe_open(weights, "pt") as f:
            metadata = f.metadata() or {}
        if "state" not in metadata:
            raise UserError(f"{weights}: a checkpoint without its training state (written by "
                            f"an older xptools?); train again without --resume")
        state = json.loads(metadata["state"])
        tensors = load_file(weights)
        module = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        try:
            stage.module.load_state_dict(module)
        except RuntimeError as e:
            raise UserError(f"{weights}: checkpoint does not match this model "
                            f"({str(e).splitlines()[0]}); train again without --resume") from e
        moments: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, index, key = k.split(".", 2)
                moments.setdefault(int(index), {})[key] = v
        saved = optimizer.state_dict()
        saved["state"] = moments
        optimizer.load_state_dict(saved)
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
        stage.history = state.pop("history", [])
        return state, best

    # -- the loop -------------------------------------------------------------------------

    def _evaluate(self, stage: Stage) -> float | None:
        if not stage.monitor:
            return None
        stage.module.eval()
        n = len(next(iter(stage.monitor.values())))
        total, weight = 0.0, 0
        torch.manual_seed(_seed(self.seed, stage.name, "monitor"))
        with torch.no_grad():
            for start in range(0, n, 4096):
                batch = {k: v[start:start + 4096] for k, v in stage.monitor.items()}
                loss, _ = stage.loss(batch, False)
                m = len(next(iter(batch.values())))
                total += float(loss) * m
                weight += m
        stage.module.train()
        return total / max(weight, 1)

    def run(self, stage: Stage) -> Stage:
        n = len(next(iter(stage.data.values())))
        if n == 0:
            raise UserError(f"{stage.name}: no training rows")
        steps_per_epoch = math.ceil(n / stage.batch_size)
        total = stage.epochs * steps_per_epoch
        # foreach: the multi-tensor update, which torch only picks by itself on a GPU; on a
        # CPU it gives the same weights bit for bit as the per-tensor loop, and sooner
        optimizer = torch.optim.AdamW(stage.module.parameters(), lr=stage.lr,
                                      weight_decay=stage.weight_decay, foreach=True)
        state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": None, "bad_epochs": 0,
                 "done": False}
        best = None
        restored = self._restore(stage, optimizer)
        if restored is not None:
            state, best = restored
            if state["done"]:
                self.log(f"{stage.name}: finished earlier, reusing its checkpoint")
                self.seconds += sum(epoch["seconds"] for epoch in stage.history)
                return stage
            self.log(f"{stage.name}: resuming at epoch {state['epoch'] + 1}, "
                     f"step {state['step']}")
        stage.module.train()
        bar = progress(total, stage.name, self.quiet, unit="steps")
        bar.update(state["step"])
        running = []
        try:
            while state["epoch"] < stage.epochs and not state["done"]:
                epoch = state["epoch"]
                order = np.random.default_rng(_seed(self.seed, stage.name, epoch)).permutation(n)
                started = time.perf_counter()
                for step in range(state["step_in_epoch"], steps_per_epoch):
                    index = torch.from_numpy(order[step * stage.batch_size:
                                                   (step + 1) * stage.batch_size])
                    batch = {k: v[index] for k, v in stage.data.items()}
                    torch.manual_seed(_seed(self.seed, stage.name, epoch, step))
                    for group in optimizer.param_groups:
                        group["lr"] = stage.learning_rate(state["step"], total)
                    loss, metrics = stage.loss(batch, True)
                    if not torch.isfinite(loss):
                        raise UserError(f"{stage.name}: the loss became {float(loss)} at epoch "
                                        f"{epoch + 1}, step {step}; try a lower learning rate")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    running.append(loss.item())
                    state["step"] += 1
                    state["step_in_epoch"] = step + 1
                    bar.update(1)
                    if self.checkpoint_every and state["step"] % self.checkpoint_every == 0:
                        self._save(stage, optimizer, state, best)
                monitor = self._evaluate(stage)
                train_loss = float(np.mean(running)) if running else float("nan")
                running = []
                stage.history.append({"epoch": epoch + 1, "train_loss": train_loss,
                                      "monitor_loss": monitor,
                                      "seconds": round(time.perf_counter() - started, 2)})
                bar.set_postfix(loss=f"{train_loss:.4f}",
                                monitor=f"{monitor:.4f}" if monitor is not None else "-")
                self.log(f"{stage.name}: epoch {epoch + 1}/{stage.epochs} loss {train_loss:.4f}"
                         + (f" monitor {monitor:.4f}" if monitor is not None else ""))
                if monitor is not None:
                    if state["best"] is None or monitor < state["best"]:
                        state["best"], state["bad_epochs"] = monitor, 0
                        best = {k: v.detach().clone() for k, v in
                                stage.module.state_dict().items()}
                    else:
                        state["bad_epochs"] += 1
                        if stage.patience is not None and state["bad_epochs"] >= stage.patience:
                            self.log(f"{stage.name}: early stop after epoch {epoch + 1}, best "
                                     f"monitor loss {state['best']:.4f}")
                            state["done"] = True
                state["epoch"] = epoch + 1
                state["step_in_epoch"] = 0
                if state["epoch"] >= stage.epochs:
                    state["done"] = True
                if state["done"] and best is not None:
                    stage.module.load_state_dict(best)
                self._save(stage, optimizer, state, best)
        finally:
            bar.close()
        self.seconds += sum(epoch["seconds"] for epoch in stage.history)
        return stage


def stderr_log(quiet: bool):
    """One line per epoch on stderr when no progress bar shows (logs, cron), else nothing."""
    if quiet or sys.stderr.isatty():
        return None
    return lambda message: print(f"xptools train: {message}", file=sys.stderr, flush=True)


def _detectors(model, table, name: str, seed: int, quiet: bool):
    """The out-of-distribution detectors `xptools flag` reads (`xptools.ood`), fitted on the
    trained model's embedding of the training rows, referenced on the held-out ones; None
    (with a warning) when they cannot be fitted (too few rows, no source_id, a degenerate
    embedding): the trained model is saved in any case."""
    from xptools.ood import fit_detectors

    try:
        return fit_detectors(model, table, os.path.basename(name), seed)
    except Exception as e:   # noqa: BLE001 - never lose a finished training run to this step
        if not quiet:
            what = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            print(f"xptools train: warning: no out-of-distribution detectors ({what}); "
                  f"`xptools flag` cannot use this model", file=sys.stderr)
        return None


def run_train(kind: str, train_path: str, output: str, *, labels: list[str] | None,
              recipe_path: str | None, valid_path: str | None, seed: int | None, resume: bool,
              overwrite: bool, checkpoint_every: int, input_format: str | None,
              quiet: bool, ext_prior: str | None = None) -> dict:
    """`xptools train`: read the data, fit the model stage by stage (checkpointed under
    ``<output>.partial/``), report on the validation data, write the model directory."""
    import hashlib
    import shutil
    from datetime import datetime, timezone

    from xptools import __version__, models
    from xptools.io import read_table
    from xptools.provenance import command_line

    recipe = {}
    if recipe_path:
        try:
            with open(recipe_path) as f:
                recipe = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{recipe_path}: cannot read the recipe ({e})") from None
    kind = kind or recipe.get("model", "msa")
    if ext_prior:
        if kind != "forward":
            raise UserError("--ext-prior is for --model forward (the column of the extinction "
                            "prior)")
        recipe = {**recipe, "ext_prior": ext_prior}
    labels = labels or recipe.get("labels")
    seed = seed if seed is not None else int(recipe.get("seed", 0))
    if os.path.exists(output) and not overwrite:
        raise UserError(f"{output} exists; use --overwrite to replace it")
    workdir = output.rstrip("/") + ".partial"
    if os.path.exists(workdir) and not resume:
        raise UserError(f"{workdir} holds an interrupted run: continue it with --resume, or "
                        f"remove it")
    cls = models.model_class(kind)
    model = cls.create(labels, recipe)
    table = read_table(train_path, input_format)
    valid = read_table(valid_path, input_format) if valid_path else None
    trainer = Trainer(workdir, seed, checkpoint_every, resume, quiet, stderr_log(quiet))
    try:
        split = model.fit_table(table, train_path, trainer)
    except KeyboardInterrupt:  # a signal: the checkpoints stay for --resume
        print(f"xptools train: checkpoints kept in {workdir}: continue with --resume",
              file=sys.stderr)
        raise
    # the out-of-distribution detectors read a learned embedding (msa, svae); a forward model
    # has none: its chi2 and ln_prior flag the stars it does not explain
    model.detectors = (_detectors(model, table, train_path, seed, quiet)
                       if hasattr(model, "EMBEDDINGS") else None)
    with open(train_path, "rb") if os.path.isfile(train_path) else open(os.devnull, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    model.provenance = {"xptools": __version__, "command": command_line(),
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "train_file": os.path.basename(train_path), "train_sha256": digest,
                        "valid_file": os.path.basename(valid_path) if valid_path else None,
                        "seed": seed, "train_seconds": round(trainer.seconds, 1), **split,
                        "recipe": recipe}
    report = model.evaluate(valid, valid_path) if valid is not None else None
    card = model.card(report)
    extra = {"validation.json": json.dumps(report, indent=1)} if report else {}
    models.save(model, output, card, overwrite=overwrite, extra_files=extra)
    shutil.rmtree(workdir, ignore_errors=True)
    if report:
        print(f"validation on {valid_path} ({report['rows']} rows):")
        print(model.report_text(report))
    else:  # stdout says what was made, as with --valid
        print(f"{kind} model trained on {split.get('train_rows')} rows of {train_path} "
              f"({split.get('monitor_rows')} held out for early stopping); no validation "
              f"report: give --valid FILE to measure it on stars it has not seen")
    print(f"model written to {output}", file=sys.stderr)
    return report or {}
