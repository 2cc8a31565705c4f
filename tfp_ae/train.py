"""Run one experiment: load data, build, `model.fit`, evaluate, write `metrics.json` and figures."""
import json
import os
import time
from pathlib import Path

import numpy as np

from tfp_ae._tf import tf, tfk
from tfp_ae.config import RunConfig
from tfp_ae.data import check_images, dequantize, load_dataset, make_pipeline
from tfp_ae.heads import bits_per_dim
from tfp_ae.models import build_model, compile_model
from tfp_ae import plots


class DivergedError(RuntimeError):
    """Training hit a NaN/inf loss in every attempt."""


class EpochTimer(tfk.callbacks.Callback):
    """Wall-clock seconds of each training epoch, in `self.seconds`."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


def _map_batches(model, x, fn, batch_size):
    """`fn(model(images), images)` batch by batch (one compiled graph), concatenated as numpy."""
    step = tf.function(lambda b: fn(model(b, training=False), b), autograph=False)
    return np.concatenate([step(tf.constant(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def nll_per_image(model, x, batch_size=500):
    """-log p(x) in nats for each image, `[N]` (the head's distribution, not its training loss)."""
    return _map_batches(model, x, lambda d, b: -d.log_prob(b), batch_size)


def point_estimates(model, x, batch_size=200):
    """The head's point estimate of each image, `[N, H, W, C]` clipped to [0, 1]."""
    return _map_batches(model, x, lambda d, b: model.head.point_estimate(d), batch_size)


def variance_maps(model, x, batch_size=200):
    """Per-pixel variance of each image's distribution, `[N, H, W, C]` (NaN where undefined)."""
    return _map_batches(model, x, lambda d, b: model.head.variance(d), batch_size)


def evaluate(model, data, eval_images=1000, seed=0):
    """Test metrics of a trained model.

    Returns a dict with `test_nll_nats` (mean -log p(x) per image on the test split, x in [0, 1]),
    `test_nll_dequantized_nats` and `bits_per_dim` (on the test split dequantised with a fixed
    seed; None for heads that are not densities), and `l2_percent` (mean squared error x 100
    between the first `eval_images` test images and their point estimates, Ciobanu Section 4).
    """
    head = model.head
    x = data.x_test
    nll = float(np.mean(nll_per_image(model, x)))
    nll_deq = float(np.mean(nll_per_image(model, dequantize(x, data.num_levels, seed))))
    xe = x[:eval_images]
    l2 = float(np.mean(np.square(xe - point_estimates(model, xe))) * 100)
    d = int(np.prod(x.shape[1:]))
    metrics = dict(test_nll_nats=nll, test_nll_dequantized_nats=nll_deq, l2_percent=l2,
                   bits_per_dim=bits_per_dim(nll_deq, d, data.num_levels) if head.is_density else None)
    if head.head_name == "mse":
        metrics["nll_note"] = "mse head: NLL of the unit-variance normal N(mean, I) that MSE training implies"
    if not head.is_density:
        metrics["nll_note"] = f"{head.head_name}: not a normalised density on [0, 1]; NLL not comparable, no bits/dim"
    return metrics


def write_json(obj, path):
    """Write JSON atomically (temporary file + rename): a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def fit(config, x_train, num_levels, callbacks=()):
    """Build and train a model, retrying with seed+1, seed+2... when the loss becomes NaN.

    Returns (model, history dict, seconds per epoch, attempts).
    Raises:
      DivergedError: every attempt diverged.
    """
    attempts = []
    for attempt in range(config.retries + 1):
        seed = config.seed + attempt
        tfk.utils.set_random_seed(seed)
        model = build_model(config.head, x_train.shape[1:], config.components, config.arch, config.latent_dim)
        compile_model(model, config.learning_rate, config.jit_compile)
        ds = make_pipeline(x_train, config.batch_size, seed=seed, num_levels=num_levels if config.dequantize else None)
        timer = EpochTimer()
        history = model.fit(ds, epochs=config.epochs, verbose=config.verbose,
                            callbacks=[timer, tfk.callbacks.TerminateOnNaN(), *callbacks])
        losses = history.history.get("loss", [])
        if len(losses) == config.epochs and np.all(np.isfinite(losses)):
            attempts.append(dict(seed=seed, status="ok"))
            return model, history.history, timer.seconds, attempts
        attempts.append(dict(seed=seed, status="diverged", epoch=len(losses)))
        print(f"attempt {attempt + 1}: loss became NaN/inf in epoch {len(losses)} (seed {seed})")
    raise DivergedError(f"training {config.head} (K={config.components}, {config.arch}) diverged: NaN loss in all "
                        f"{len(attempts)} attempt(s) {attempts}. Retry with --retries N (new seeds), --dequantize, "
                        "or a lower --learning-rate.")


def run(config: RunConfig, callbacks=()):
    """Train and evaluate one experiment; write `metrics.json` and `reconstructions.png` to
    `config.out` when it is set.

    Returns:
      (model, metrics dict).
    """
    data = load_dataset(config.dataset, config.data_dir)
    x_train = check_images(data.x_train[:config.train_limit], "training images")
    model, history, seconds, attempts = fit(config, x_train, data.num_levels, callbacks)
    metrics = dict(dataset=config.dataset, head=config.head, components=config.components, arch=config.arch,
                   epochs=config.epochs, num_params=int(model.count_params()), seconds_per_epoch=seconds,
                   train_loss=history["loss"], loss_units="nats per image" if config.head != "mse" else "MSE",
                   seed=attempts[-1]["seed"], attempts=attempts, dequantize=config.dequantize,
                   num_levels=data.num_levels, train_images=len(x_train), data_source=data.source,
                   device=tf.config.list_logical_devices()[-1].device_type)
    metrics.update(evaluate(model, data, config.eval_images, seed=config.seed))
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(dict(metrics, config=config.to_dict()), out / "metrics.json")
        plots.save(reconstruction_plot(model, data.x_test[:10]), out / "reconstructions.png")
    return model, metrics


def reconstruction_plot(model, images):
    """Figure of inputs, point estimates and variance maps for `images` `[N, H, W, C]`."""
    head = model.head
    title = f"{head.head_name} (K={head.num_components}, {model.name.split('_')[0]})"
    return plots.reconstruction_figure(images, point_estimates(model, images), variance_maps(model, images),
                                       title=title, variance_note=head.variance_note)
