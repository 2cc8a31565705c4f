"""A run folder: its file names, atomic writes, the saved progress of a run and its checkpoints.

A run folder holds `config.json` (what `tfp_ae.train.load_model` rebuilds from), `state.json`
(seed, attempts, finished epochs), `checkpoints/` (model + optimizer after every epoch) and at
the end `metrics.json` and the figures.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import tf, tfk
from tfp_ae.errors import InputError

if TYPE_CHECKING:
    from tfp_ae.config import RunConfig
    from tfp_ae.models import ProbabilisticModel

STATE_FILE = "state.json"          # progress of a run: seed, attempts, finished epochs
CHECKPOINT_DIR = "checkpoints"     # tf.train checkpoints of model + optimizer, one per epoch
# restore_checkpoint: head weights absent from older checkpoints
OPTIONAL_WEIGHTS = {"sigma_scale", "conformal_lambda", "conformal_lambda_map", "conformal_strata_edges",
                    "conformal_strata_lambdas", "local_knots", "local_log_factors"}
RECALIBRATED_DIR = "recalibrated"  # the model with its fitted sigma_scale (written apart: see recalibrated_manager)
CONFIG_FILE = "config.json"        # RunConfig + image shape: what `load_model` rebuilds from
METRICS_FILE = "metrics.json"
LOG_DIR = "logs"                   # TensorBoard logs (--tensorboard)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically (temporary file + rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(obj: object, path: str | os.PathLike) -> None:
    """Write JSON atomically (see `write_text`)."""
    write_text(json.dumps(obj, indent=2, default=float), path)


class Progress(tfk.callbacks.Callback):
    """After each finished epoch: record its loss and wall-clock seconds in `state` and write it
    atomically to `state_path`, then checkpoint model and optimizer (so a crash between the two
    at worst re-runs that epoch). Without a path it only records.

    `writer=False` (a multi-worker worker that is not the chief): the state stays in memory and
    the checkpoint goes to a temporary folder that is deleted right after, TensorFlow's
    multi-worker convention (every worker takes part in a save; only the chief's copy is kept)."""

    def __init__(self, state: dict, state_path: str | os.PathLike | None = None,
                 manager: tf.train.CheckpointManager | None = None, writer: bool = True):
        super().__init__()
        self.state, self.state_path, self.manager, self.writer = state, state_path, manager, writer

    def on_epoch_begin(self, epoch: int, logs: dict | None = None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        loss = float(logs["loss"])
        record = dict(loss=loss, seconds=time.perf_counter() - self._t)
        if "val_loss" in logs:
            record["val_loss"] = float(logs["val_loss"])
        self.state["epochs"] = self.state["epochs"][:epoch] + [record]
        if not self.state_path:
            return
        if self.writer:
            write_json(self.state, self.state_path)
        if self.manager is None or not np.isfinite(loss):
            return
        if self.writer:
            self.manager.save(checkpoint_number=epoch + 1)
        else:
            scratch = tempfile.mkdtemp(prefix="tfp_ae_worker_checkpoint_")
            try:
                tf.train.CheckpointManager(self.manager.checkpoint, scratch, max_to_keep=1).save(epoch + 1)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)


RESUME_IGNORED = ("out", "data_dir", "verbose", "strategy", "tensorboard", "uncertainty", "deterministic",
                  "steps_per_execution", "recalibration_criterion", "force_recalibration")  # none changes what is trained


def load_state(run_dir: str | os.PathLike, config: RunConfig) -> dict:
    """The saved progress of an unfinished run in `run_dir`, or a fresh state.

    Raises:
      ValueError: `run_dir` holds a run with a different configuration (names the fields).
    """
    fresh = dict(config=config.to_dict(), seed=config.seed, attempts=[], epochs=[])
    path = run_dir / STATE_FILE if run_dir else None
    if path is None or not path.exists():
        return fresh
    state = json.loads(path.read_text())
    # a setting added since the run started (absent from its state) had its default's behaviour
    old, new = {**type(config)().to_dict(), **state["config"]}, config.to_dict()
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k not in RESUME_IGNORED and old.get(k) != new[k]]
    if diff:
        raise InputError(f"run folder {run_dir} holds an unfinished run with another configuration "
                         f"({'; '.join(diff)}); use another --out, the same settings, or --overwrite")
    return state


def checkpoint_manager(model: ProbabilisticModel, run_dir: str | os.PathLike) -> tf.train.CheckpointManager:
    """`tf.train.CheckpointManager` of model + optimizer in `run_dir/checkpoints` (two kept)."""
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(ckpt, str(Path(run_dir) / CHECKPOINT_DIR), max_to_keep=2)


def recalibrated_manager(model: ProbabilisticModel, run_dir: str | os.PathLike) -> tf.train.CheckpointManager:
    """`tf.train.CheckpointManager` of model + optimizer after σ-scaling, in `run_dir/recalibrated` (one kept).
    Apart from the training checkpoints: TensorFlow replaces a checkpoint's files one by one, and a run
    killed while the fitted model overwrote its last epoch's checkpoint could not resume (the index of
    the old file and the data of the new). A run resumes from its training checkpoints only and fits s
    again; `load_model` prefers this one."""
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(ckpt, str(Path(run_dir) / RECALIBRATED_DIR), max_to_keep=1)


def restore(manager: tf.train.CheckpointManager, max_epoch: int) -> int:
    """Restore the newest checkpoint with at most `max_epoch` finished epochs; returns its epoch count."""
    numbers = {int(p.rsplit("-", 1)[1]): p for p in manager.checkpoints}
    usable = [n for n in numbers if n <= max_epoch]
    if not usable:
        return 0
    n = max(usable)
    restore_checkpoint(manager.checkpoint, numbers[n])
    return n


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str):
    """`checkpoint.restore(path)`, asserting that every object of the model was in the file, except the
    head's `OPTIONAL_WEIGHTS` (`sigma_scale`, added in 0.2.0, `conformal_lambda` and the local
    recalibration's knots and factors, added in 0.6.0, `conformal_lambda_map` and the strata's edges and
    λ's, added after 0.8.0: a checkpoint written before has none, and they keep their initial values,
    which change nothing).

    Raises:
      AssertionError: any other object of the model is missing from the checkpoint.
    """
    status = checkpoint.restore(path)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        found = re.search(r"Found (\d+) Python objects", str(e))
        names = re.findall(r"<tf\.Variable '(?:[^']*/)?([^'/:]+)(?::\d+)?'", str(e))
        if not found or int(found.group(1)) != len(names) or not set(names) <= OPTIONAL_WEIGHTS:
            raise
    return status


def clear_run(out: Path) -> None:
    """Delete what a run wrote in its folder `out` (metrics, state, config, checkpoints, the
    recalibrated checkpoint) for `--overwrite`; other files stay."""
    for name in (METRICS_FILE, STATE_FILE, CONFIG_FILE, CHECKPOINT_DIR, RECALIBRATED_DIR):
        shutil.rmtree(out / name, ignore_errors=True) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
