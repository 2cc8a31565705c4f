"""Train one experiment, top to bottom: `run(config)` = load data -> build -> `fit` (resumable,
retried on a NaN loss) -> evaluate -> write `metrics.json` and figures; `load_model` rebuilds a
trained run."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfp_ae import figures
from tfp_ae._tf import tf, tfk
from tfp_ae.calibration import CALIBRATION_IMAGES, calibrate, check_held_out, conformal_report
from tfp_ae.callbacks import ImageSummaries, tensorboard_callback
from tfp_ae.config import RunConfig
from tfp_ae.data import SAMPLE_BYTES, Split, array_split, describe_classes, open_source
from tfp_ae.errors import InputError
from tfp_ae.evaluate import evaluate, fid_extractors
from tfp_ae.models import ProbabilisticModel, build_model, compile_model
from tfp_ae.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_DIR,
    METRICS_FILE,
    RECALIBRATED_DIR,
    STATE_FILE,
    Progress,
    checkpoint_manager,
    clear_run,
    load_state,
    recalibrated_manager,
    restore,
    restore_checkpoint,
    write_json,
)
from tfp_ae.runtime import check_memory, device_summary, make_strategy, precision_policy, probe_jit, worker
from tfp_ae.vae import build_vae


class DivergedError(RuntimeError):
    """Training hit a NaN/inf loss in every attempt."""


def build_and_compile(config: RunConfig, image_shape: tuple[int, int, int]) -> ProbabilisticModel:
    """The compiled model a `RunConfig` describes: an `Autoencoder` (`build_model`) or a `VAE`
    (`build_vae`), its layers under `config.precision`, with Adam's state built (so a checkpoint
    can be restored into it).

    Raises:
      ValueError: a bad setting (see `RunConfig.validate`).
    """
    config.validate(image_shape)
    with precision_policy(config.precision):
        if config.model == "vae":
            model = build_vae(config.head, image_shape, config.components, config.arch, config.latent_dim,
                              config.objective, config.iw_samples, seed=config.seed, **config.arch_options,
                              **config.head_options)
        else:
            model = build_model(config.head, image_shape, config.components, config.arch, config.latent_dim,
                                local_scales=config.recalibration_method == "local",
                                pit_recalibration=config.recalibration_method == "pit", **config.loss_options,
                                **config.arch_options, **config.head_options)
        compile_model(model, config.learning_rate, config.jit_compile, config.steps_per_execution)
    model.optimizer.build(model.trainable_variables)
    return model


def hold_out(split: Split, config: RunConfig) -> tuple[Split, Split | None]:
    """(the images trained on, the held-out images) of a training `Split`: its last
    `config.held_out_fraction` images are held out (validation loss, sigma-scaling), a fixed choice."""
    n = int(split.count * config.held_out_fraction)
    return split.subset(0, split.count - n), split.subset(split.count - n)


def fit(config: RunConfig, x_train: np.ndarray | Split, num_levels: int, callbacks: Sequence[tfk.callbacks.Callback] = (),
        run_dir: str | os.PathLike | None = None, strategy: tf.distribute.Strategy | None = None, resume: bool = True):
    """Build and train a model: resumable, retried with seed+1, seed+2... when the loss becomes NaN.

    `x_train`: float32 images `[N, H, W, C]` in [0, 1], or a `tfp_ae.data.Split` (streamed:
    decoded batch by batch, never held whole; shard files are split between multi-worker workers).

    With `run_dir`, progress (`state.json`: seed, attempts, per-epoch loss and seconds) and a
    checkpoint of model + optimizer are written after every epoch, and a call on a folder with an
    unfinished run resumes from its last finished epoch. Every random draw of training is
    stateless: the data order of epoch e depends only on the seed and e, the dequantisation noise
    of step i on (seed, i) (`make_pipeline`), a VAE's samples on (seed, optimizer step, replica)
    (`VAE.step_seed`); so two identical runs are bit-identical on CPU and a resumed run equals the
    uninterrupted one. On a GPU, `config.deterministic` enables TensorFlow's op determinism.

    Multi-worker (`MultiWorkerMirroredStrategy`): every worker calls `fit` with the same arguments;
    only the chief (`strategy.extended.should_checkpoint`) writes `run_dir`, which every worker
    reads to resume (it must be on a filesystem all workers see at the same path).
    `resume=False` ignores a saved state (a worker while the chief clears the folder for --overwrite).

    Returns:
      (model, history dict with `loss` and `seconds` per epoch, attempts list).
    Raises:
      DivergedError: every attempt diverged.
      ValueError: `run_dir` holds an unfinished run with another configuration.
    """
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or make_strategy(config.strategy)
    writer = strategy.extended.should_checkpoint  # False only on a multi-worker worker that is not the chief
    run_dir = Path(run_dir) if run_dir else None
    if run_dir and writer:
        run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir if resume else None, config)
    train = x_train if isinstance(x_train, Split) else array_split(x_train, num_levels)
    shape = train.image_shape
    if config.model == "ae":
        check_memory(config, shape)
    train, val_split = hold_out(train, config)
    n_val = val_split.count
    steps = math.ceil(train.count / config.batch_size)
    while True:
        seed = state["seed"]
        tfk.utils.set_random_seed(seed)
        with strategy.scope():
            model = build_and_compile(dataclasses.replace(config, seed=seed), shape)
            if config.jit_compile:
                ok, why = probe_jit(model, train.take(config.batch_size)[0])
                state["jit"] = "xla" if ok else f"fallback to no XLA: {why}"
                if not ok:
                    print(f"--jit: {config.head} does not compile with XLA ({why}); training without XLA")
                    model = build_and_compile(dataclasses.replace(config, seed=seed, jit_compile=False), shape)
        manager = checkpoint_manager(model, run_dir) if run_dir else None
        initial = restore(manager, len(state["epochs"])) if manager else 0
        state["epochs"] = state["epochs"][:initial]
        if initial:
            print(f"resuming {run_dir} after epoch {initial} (seed {seed})")
        ds = train.pipeline(config.batch_size, seed=seed, repeat=True, skip_epochs=initial,
                            num_levels=num_levels if config.dequantize else None, worker=worker(strategy),
                            perturb_rate=config.perturb_rate)
        val = val_split.pipeline(config.batch_size, shuffle=False) if n_val else None
        progress = Progress(state, run_dir / STATE_FILE if run_dir else None, manager, writer)
        if initial < config.epochs and not state.get("stopped_early"):
            model.fit(ds, epochs=config.epochs, initial_epoch=initial, steps_per_epoch=steps, verbose=config.verbose,
                      validation_data=val, callbacks=[tfk.callbacks.TerminateOnNaN(), progress, *callbacks])
        losses = [e["loss"] for e in state["epochs"]]
        history = dict(loss=losses, seconds=[e["seconds"] for e in state["epochs"]])
        if n_val:
            history["val_loss"] = [e.get("val_loss") for e in state["epochs"]]
        if losses and np.all(np.isfinite(losses)):  # all epochs, or fewer when a callback stopped training
            if len(losses) < config.epochs and not state.get("stopped_early"):
                state["stopped_early"] = True
                print(f"training stopped by a callback after epoch {len(losses)} of {config.epochs}")
                if run_dir and writer:
                    write_json(state, run_dir / STATE_FILE)
            if "jit" in state:
                history["jit"] = state["jit"]
            return model, history, state["attempts"] + [dict(seed=seed, status="ok")]
        state["attempts"].append(dict(seed=seed, status="diverged", epoch=len(losses)))
        print(f"attempt {len(state['attempts'])}: loss became NaN/inf in epoch {len(losses)} (seed {seed})")
        if len(state["attempts"]) > config.retries:
            raise DivergedError(f"training {config.head} (K={config.components}, {config.arch}) diverged: NaN loss "
                                f"in all {len(state['attempts'])} attempt(s) {state['attempts']}. Retry with "
                                "--retries N (new seeds), --dequantize, or a lower --learning-rate.")
        state.update(seed=seed + 1, epochs=[])
        if run_dir and writer:
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
            write_json(state, run_dir / STATE_FILE)


def run(config: RunConfig, callbacks: tuple | list = (), overwrite: bool = False,
        strategy: tf.distribute.Strategy | None = None) -> tuple[ProbabilisticModel, dict]:
    """Train and evaluate one experiment.

    With `config.out` set, the run folder gets `config.json` (what `load_model` rebuilds from),
    `checkpoints/` (model + optimizer after every epoch), `state.json` (progress), and at the end
    `metrics.json`, `reconstructions.png` (Figures 1/2: input, point estimate, variance map),
    `samples.png` (Figure 3: latent samples, output samples, t-SNE) and for K > 1
    `components.png` (Figure 4: component means sorted by log-density). Calling `run` again on a
    folder with an unfinished run resumes it from its last finished epoch.

    Multi-worker (`config.strategy == "multiworker"`, `TF_CONFIG` set on every worker): every
    worker runs the same `run`; they train together, and only the chief writes the run folder and
    evaluates (see `fit`).

    Returns:
      (model, metrics dict); on a worker that is not the chief the metrics hold only training
      (no evaluation, `role` "worker").
    Raises:
      FileExistsError: `config.out` holds a finished run and `overwrite` is False.
      ValueError: bad data or settings (see `check_images`, `build_model`), or an unfinished run
        with another configuration in `config.out`.
      DivergedError: NaN loss in every attempt.
    """
    config.validate()  # before anything is deleted or written
    out = Path(config.out) if config.out else None
    log_dir = out / LOG_DIR if out else Path("runs") / LOG_DIR
    if config.tensorboard:  # raises ImportError without the package: before anything is deleted or written
        callbacks = [*callbacks, tensorboard_callback(log_dir)]
    if out and out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file; the run folder must be a folder (new or a run's)")
    strategy = strategy or make_strategy(config.strategy)
    writer = strategy.extended.should_checkpoint
    if out and (out / METRICS_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"run folder {out} already holds a finished run ({METRICS_FILE}); "
                                  "choose another --out or pass --overwrite to train it again")
    if out and overwrite and writer:
        clear_run(out)
    source = open_source(config.dataset, **config.source_options)
    source.print_skipped()
    train = source.splits["train"].subset(0, config.train_limit)
    if source.selected_classes is not None:
        print(f"classes {describe_classes(source.selected_classes)}: {train.count} training and "
              f"{source.splits['test'].count} test images", flush=True)
    config.validate(source.image_shape)  # the head's options against the image size, before the folder is made
    held_out = hold_out(train, config)[1]
    check_held_out(held_out, config)
    # in memory: the first test images (L2 %, calibration, figures, FID) and a bounded part of the
    # training split (the FID classifier's data); the NLL streams over the whole test split
    with source.reading():
        data = source.sample(max(config.eval_images, CALIBRATION_IMAGES, config.tsne_images, 10),
                             train_bytes=SAMPLE_BYTES if config.fid else 0)
    if config.tensorboard and writer:  # inputs, point estimates, interval maps, samples, bits/dim per epoch
        callbacks = [*callbacks, ImageSummaries(log_dir, data.x_test, data.num_levels, seed=config.seed)]
    if out and writer:
        out.mkdir(parents=True, exist_ok=True)
        write_json(dict(config.to_dict(), image_shape=list(source.image_shape)), out / CONFIG_FILE)
    with source.reading():
        model, history, attempts = fit(config, train, source.num_levels, callbacks, run_dir=out, strategy=strategy,
                                       resume=writer or not overwrite)
    metrics = dict(dataset=config.dataset, model=config.model, head=config.head, components=config.components,
                   arch=config.arch, epochs=config.epochs, num_params=int(model.count_params()),
                   seconds_per_epoch=history["seconds"], train_loss=history["loss"], loss_units=model.loss_units,
                   seed=attempts[-1]["seed"], attempts=attempts, dequantize=config.dequantize,
                   num_levels=source.num_levels, train_images=train.count, data_source=source.description,
                   image_shape=list(source.image_shape), skipped_images=len(source.skipped),
                   device=device_summary(strategy), jit=history.get("jit", "off"), precision=config.precision)
    if "val_loss" in history:
        metrics["val_loss"] = history["val_loss"]
    if not writer:
        print(f"worker: trained {len(history['loss'])} epochs; the chief evaluates and writes {out}", flush=True)
        return model, dict(metrics, role="worker")
    metrics.update(source.metrics())
    with source.reading():
        calibrated = calibrate(model, config, held_out, source.num_levels, data.x_test[:CALIBRATION_IMAGES],
                               source.splits["test"])
    recalibration = calibrated["recalibration"]
    if out and calibrated["fitted"]:  # the fitted sigma_scale and λ for load_model and export, apart from training's
        recalibrated_manager(model, out).save(checkpoint_number=len(history["loss"]))
    elif out:  # nothing fitted: load_model and export use the last epoch's checkpoint (no stale scale of a resume)
        shutil.rmtree(out / RECALIBRATED_DIR, ignore_errors=True)
    extractors, notes = fid_extractors(config, data)
    if config.verbose:
        print(f"evaluating on {source.splits['test'].count} test images (NLL, bits/dim, L2 %, calibration"
              f"{', FID' if extractors else ''}) and drawing the figures", flush=True)
    with source.reading():
        metrics.update(evaluate(model, data, config.eval_images, seed=config.seed, extractors=extractors,
                                test=source.splits["test"]))
    if notes:
        metrics["fid_note"] = "; ".join(notes)
    if recalibration:
        metrics["calibration"]["before_recalibration"] = recalibration.pop("before")
        metrics["recalibration"] = recalibration
    if calibrated["conformal"]:
        metrics["conformal"] = dict(calibrated["conformal"], **conformal_report(
            model, data.x_test[:config.eval_images], config.risk, config.delta, config.risk_groups, seed=config.seed,
            strata=config.risk_strata))
    if model.kind == "vae":
        metrics.update(objective=config.objective, iw_samples=config.iw_samples if config.objective == "iwae" else 1)
    if out:
        uncertainty = "conformal" if calibrated["conformal"] and config.uncertainty == "interval" else config.uncertainty
        figures.save_run_figures(model, data, out, uncertainty, metrics.get("calibration"),
                                 extra=config.extra_figures, tsne_images=config.tsne_images, seed=config.seed)
        write_json(dict(metrics, config=config.to_dict()), out / METRICS_FILE)
    return model, metrics


def load_model(run_dir: str | Path) -> tuple[ProbabilisticModel, RunConfig]:
    """Rebuild a trained model from its run folder: `config.json` + the newest checkpoint (the σ-scaled
    model's in `recalibrated/` when σ-scaling ran, else the last epoch's).

    The model is the same compiled Keras model `run` trained (same head, weights and Adam state),
    so `model.fit` can go on training it.
    Returns:
      (model, RunConfig).
    Raises:
      FileNotFoundError: `run_dir` has no `config.json` or no checkpoint.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_FILE}; not a tfp-ae run folder")
    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    config = RunConfig.from_dict(saved)
    model = build_and_compile(config, saved["image_shape"])
    manager = recalibrated_manager(model, run_dir)  # the fitted sigma_scale, when σ-scaling ran
    if manager.latest_checkpoint is None:
        manager = checkpoint_manager(model, run_dir)
    if manager.latest_checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {run_dir / CHECKPOINT_DIR}")
    restore_checkpoint(manager.checkpoint, manager.latest_checkpoint)
    return model, config
