"""Run one experiment: load data, build, `model.fit`, evaluate, write `metrics.json` and figures."""
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from tfp_ae._tf import tf, tfk, tfp
from tfp_ae.config import MODELS, RunConfig
from tfp_ae.data import check_images, dequantize, load_dataset, make_pipeline, prepare_images
from tfp_ae.heads import SAMPLE_SEED, VectorHead, bits_per_dim, get_head
from tfp_ae.models import build_model, compile_model
from tfp_ae.vae import NLL_SAMPLES, VAE, build_vae, compile_vae
from tfp_ae import fid, figures, plots

STATE_FILE = "state.json"          # progress of a run: seed, attempts, finished epochs
CHECKPOINT_DIR = "checkpoints"     # tf.train checkpoints of model + optimizer, one per epoch
CONFIG_FILE = "config.json"        # RunConfig + image shape: what `load_model` rebuilds from
METRICS_FILE = "metrics.json"


class DivergedError(RuntimeError):
    """Training hit a NaN/inf loss in every attempt."""


STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name="default"):
    """A `tf.distribute` strategy by name.

    `default`: one device (TensorFlow's placement: the GPU when there is one). `mirrored`:
    `MirroredStrategy` over all GPUs of the machine, or over all logical CPU devices when there is
    no GPU. `multiworker`: `MultiWorkerMirroredStrategy`, configured by the standard `TF_CONFIG`
    environment variable (create it before other TensorFlow work). The global batch size stays the
    requested one; Keras splits each batch across the replicas and averages the loss over it.
    Raises:
      ValueError: unknown name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")


def device_summary(strategy=None):
    """Where training runs, e.g. `1 x CPU` or `2 x GPU (mirrored)`, for logs and metrics.json."""
    strategy = strategy or tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    kind = "GPU" if gpus else "CPU"
    n = strategy.num_replicas_in_sync
    name = type(strategy).__name__
    return f"{n} x {kind}" + ("" if name.startswith("_Default") else f" ({name})")


class _Progress(tfk.callbacks.Callback):
    """After each finished epoch: record its loss and wall-clock seconds in `state` and write it
    atomically to `state_path`, then checkpoint model and optimizer (so a crash between the two
    at worst re-runs that epoch). Without a path it only records."""

    def __init__(self, state, state_path=None, manager=None):
        super().__init__()
        self.state, self.state_path, self.manager = state, state_path, manager

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])
        self.state["epochs"] = self.state["epochs"][:epoch] + [dict(loss=loss, seconds=time.perf_counter() - self._t)]
        if self.state_path:
            write_json(self.state, self.state_path)
            if self.manager is not None and np.isfinite(loss):
                self.manager.save(checkpoint_number=epoch + 1)


RESUME_IGNORED = ("out", "data_dir", "verbose", "strategy")


def _load_state(run_dir, config):
    """The saved progress of an unfinished run in `run_dir`, or a fresh state.

    Raises:
      ValueError: `run_dir` holds a run with a different configuration (names the fields).
    """
    fresh = dict(config=config.to_dict(), seed=config.seed, attempts=[], epochs=[])
    path = run_dir / STATE_FILE if run_dir else None
    if path is None or not path.exists():
        return fresh
    state = json.loads(path.read_text())
    old, new = state["config"], config.to_dict()
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if k not in RESUME_IGNORED and old.get(k) != new[k]]
    if diff:
        raise ValueError(f"run folder {run_dir} holds an unfinished run with another configuration "
                         f"({'; '.join(diff)}); use another --out, the same settings, or --overwrite")
    return state


def _checkpoint_manager(model, run_dir):
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(ckpt, str(run_dir / CHECKPOINT_DIR), max_to_keep=2)


def _restore(manager, max_epoch):
    """Restore the newest checkpoint with at most `max_epoch` finished epochs; returns its epoch count."""
    numbers = {int(p.rsplit("-", 1)[1]): p for p in manager.checkpoints}
    usable = [n for n in numbers if n <= max_epoch]
    if not usable:
        return 0
    n = max(usable)
    manager.checkpoint.restore(numbers[n]).assert_existing_objects_matched()
    return n


def build_and_compile(config, image_shape):
    """The compiled model a `RunConfig` describes: an autoencoder (`build_model`) or a VAE
    (`tfp_ae.vae.build_vae`), with Adam's state built (so a checkpoint can be restored into it).

    Raises:
      ValueError: unknown model, head or arch; K < 1; an objective the model does not have.
    """
    if config.model == "vae":
        model = compile_vae(build_vae(config.head, image_shape, config.components, config.arch, config.latent_dim,
                                      config.objective, config.iw_samples), config.learning_rate, config.jit_compile)
    elif config.model == "ae":
        if config.objective != "elbo":
            raise ValueError(f"objective {config.objective!r} needs --model vae (autoencoders train on the NLL)")
        model = compile_model(build_model(config.head, image_shape, config.components, config.arch, config.latent_dim),
                              config.learning_rate, config.jit_compile)
    else:
        raise ValueError(f"unknown model {config.model!r}; valid: {', '.join(MODELS)}")
    model.optimizer.build(model.trainable_variables)
    return model


GIB = 2 ** 30
RUNTIME_BYTES = 1 * GIB   # TensorFlow runtime + a cached 60k-image dataset (measured: ~0.9 GiB)


def estimate_train_memory(head, image_shape, num_components=1, batch_size=128, latent_dim=32):
    """Rough peak host memory (bytes) of training an MLP autoencoder with `head`.

    weights x 4 (value, gradient, two Adam moments) x 4 bytes + batch x params_size x c x 4 bytes
    + the runtime, with c = 14 floats of working memory per decoder output for full-scale heads
    (the dense n x n scale matrices and their gradients) and 8 otherwise; calibrated on this
    package's `normal_full` K=1 / 2 / 10 at batch 128 (measured peaks 2.4 / 4.2 / 22.6 GiB with
    benchmarks/epoch_time.py; the estimate is 3.2 / 5.3 / 23.1 GiB).
    Returns:
      dict(total, weights, activations) in bytes.
    """
    cls = head if isinstance(head, type) else type(head)
    size = cls.params_size(tuple(image_shape), num_components)
    weights = 16 * ((latent_dim + 1) * size + (int(np.prod(image_shape)) + 1) * latent_dim)
    per_output = 14 if getattr(cls, "scale", None) == "full" and issubclass(cls, VectorHead) else 8
    activations = 4 * per_output * size * batch_size
    return dict(total=RUNTIME_BYTES + weights + activations, weights=weights, activations=activations)


def available_memory():
    """Bytes of host memory available now (Linux `MemAvailable`), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config, image_shape):
    """Refuse, before building anything, a CPU training run that cannot fit in host memory.

    Raises:
      MemoryError: the estimate (`estimate_train_memory`) exceeds the available memory; the
        message gives both and the largest `--batch-size` that fits.
    """
    if tf.config.list_physical_devices("GPU"):
        return  # device memory: TensorFlow reports an out-of-memory error itself
    free = available_memory()
    head = get_head(config.head)
    need = estimate_train_memory(head, image_shape, config.components, config.batch_size, config.latent_dim)
    if free is None or need["total"] <= 0.9 * free:
        return
    batch = config.batch_size
    while batch > 1 and estimate_train_memory(head, image_shape, config.components, batch,
                                              config.latent_dim)["total"] > 0.9 * free:
        batch //= 2
    fits = estimate_train_memory(head, image_shape, config.components, batch, config.latent_dim)["total"]
    hint = (f"use --batch-size {batch} (about {fits / GIB:.1f} GiB)" if fits <= 0.9 * free
            else "even one image per batch does not fit")
    raise MemoryError(
        f"{config.head} with K={config.components} at batch {config.batch_size} needs about {need['total'] / GIB:.1f} GiB "
        f"to train ({need['weights'] / GIB:.1f} GiB for weights, gradients and Adam; {need['activations'] / GIB:.1f} GiB "
        f"for {head.params_size(tuple(image_shape), config.components)} decoder outputs per image), but only "
        f"{free / GIB:.1f} GiB are available: {hint}, or run on a machine or GPU with more memory.")


def probe_jit(model, images):
    """Whether one training step of `model` (loss and gradients) compiles with XLA, traced with an
    unknown batch size as `model.fit` does (some ops need static shapes under XLA).

    Returns:
      (True, "") or (False, the first line of the compiler's error).
    """
    def loss(x):
        if isinstance(model, VAE):
            return model._objective(x)[0]
        return tf.reduce_mean(model.head.loss(x, model(x, training=True)))

    def step(x):
        with tf.GradientTape() as tape:
            value = loss(x)
        return tape.gradient(value, model.trainable_variables)

    spec = tf.TensorSpec([None, *np.shape(images)[1:]], tf.float32)  # unknown batch size, as in `fit`
    try:
        tf.function(step, jit_compile=True, autograph=False, input_signature=[spec])(tf.constant(images))
        return True, ""
    except (tf.errors.OpError, NotImplementedError, TypeError, ValueError) as e:
        return False, (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def fit(config, x_train, num_levels, callbacks=(), run_dir=None, strategy=None):
    """Build and train a model: resumable, retried with seed+1, seed+2... when the loss becomes NaN.

    With `run_dir`, progress (`state.json`: seed, attempts, per-epoch loss and seconds) and a
    checkpoint of model + optimizer are written after every epoch, and a call on a folder with an
    unfinished run resumes from its last finished epoch. The data order of epoch e depends only on
    the seed and e, so a resumed run reproduces the uninterrupted one.

    Returns:
      (model, history dict with `loss` and `seconds` per epoch, attempts list).
    Raises:
      DivergedError: every attempt diverged.
      ValueError: `run_dir` holds an unfinished run with another configuration.
    """
    strategy = strategy or make_strategy(config.strategy)
    run_dir = Path(run_dir) if run_dir else None
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(run_dir, config)
    if config.model == "ae":
        check_memory(config, x_train.shape[1:])
    steps = math.ceil(len(x_train) / config.batch_size)
    while True:
        seed = state["seed"]
        tfk.utils.set_random_seed(seed)
        with strategy.scope():
            model = build_and_compile(config, x_train.shape[1:])
            if config.jit_compile:
                ok, why = probe_jit(model, x_train[:config.batch_size])
                state["jit"] = "xla" if ok else f"fallback to no XLA: {why}"
                if not ok:
                    print(f"--jit: {config.head} does not compile with XLA ({why}); training without XLA")
                    model = build_and_compile(dataclasses.replace(config, jit_compile=False), x_train.shape[1:])
        manager = _checkpoint_manager(model, run_dir) if run_dir else None
        initial = _restore(manager, len(state["epochs"])) if manager else 0
        state["epochs"] = state["epochs"][:initial]
        if initial:
            print(f"resuming {run_dir} after epoch {initial} (seed {seed})")
        ds = make_pipeline(x_train, config.batch_size, seed=seed, repeat=True, skip_epochs=initial,
                           num_levels=num_levels if config.dequantize else None)
        progress = _Progress(state, run_dir / STATE_FILE if run_dir else None, manager)
        if initial < config.epochs:
            model.fit(ds, epochs=config.epochs, initial_epoch=initial, steps_per_epoch=steps, verbose=config.verbose,
                      callbacks=[tfk.callbacks.TerminateOnNaN(), progress, *callbacks])
        losses = [e["loss"] for e in state["epochs"]]
        history = dict(loss=losses, seconds=[e["seconds"] for e in state["epochs"]])
        if len(losses) == config.epochs and np.all(np.isfinite(losses)):
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
        if run_dir:
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
            write_json(state, run_dir / STATE_FILE)


def model_log_prob(model, images, seed=None):
    """log p(x) `[B]` in nats of images `[B, H, W, C]`: the head's `log_prob`, or for a VAE the
    marginal estimated by importance sampling (`NLL_SAMPLES` samples; `seed`: stateless seed)."""
    if isinstance(model, VAE):
        return -model.importance_nll(images, seed=seed)
    return model(images, training=False).log_prob(images)


_BATCH_FNS = {  # fn(model, images) -> per-image result
    "nll": lambda m, b: -model_log_prob(m, b),
    "elbo": lambda m, b: m.elbo(b)[0],
    "point": lambda m, b: m.head.point_estimate(m(b, training=False)),
    "variance": lambda m, b: m.head.variance(m(b, training=False)),
    "point_variance": lambda m, b: m.head.point_and_variance(m(b, training=False)),
    # per image: fraction of pixels inside the central 95 % interval of CALIBRATION_SAMPLES draws
    "coverage": lambda m, b: _coverage(m.head.sample(m(b, training=False), CALIBRATION_SAMPLES, seed=SAMPLE_SEED), b),
}
CALIBRATION_SAMPLES = 100
CALIBRATION_IMAGES = 200


def _coverage(samples, x, level=0.95):
    """Per image `[B]`: fraction of pixels of `x` `[B, H, W, C]` inside the central `level`
    interval of `samples` `[S, B, H, W, C]` (empirical per-pixel quantiles)."""
    q = tfp.stats.percentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=0, interpolation="linear")
    inside = tf.cast((x >= q[0]) & (x <= q[1]), tf.float32)
    return tf.reduce_mean(inside, axis=[-3, -2, -1])


def calibration(model, x, point=None):
    """Can a variance map be trusted? On images `x` `[N, H, W, C]` in [0, 1]:

    `coverage_95`: fraction of test pixels inside the predicted central 95 % interval (empirical
    quantiles of 100 samples of the head's distribution; 0.95 when calibrated, lower when
    over-confident); `mean_predicted_std`: mean per-pixel predicted standard deviation (over
    pixels where the variance exists); `mean_abs_error`: mean |x - point estimate| (`point`: the
    point estimates of `x` if already computed).
    """
    if point is None:
        point, variance = point_and_variance(model, x)
    else:
        variance = variance_maps(model, x)
    std = np.sqrt(variance)
    return dict(coverage_95=float(np.mean(_map_batches(model, x, "coverage", 50))),
                mean_predicted_std=float(np.nanmean(std)) if np.isfinite(std).any() else None,
                mean_abs_error=float(np.mean(np.abs(x - point))))


def l2_percent(x, prediction):
    """The paper's L2 error (Ciobanu, Section 4): mean squared error x 100 between images `x`
    `[N, H, W, C]` in [0, 1] and `prediction` (point estimates, or anything that broadcasts to
    `x`: one image, a constant)."""
    return float(np.mean(np.square(x - prediction)) * 100)


def psnr_ssim(x, point):
    """Mean PSNR (dB) and SSIM of point estimates against images, both `[N, H, W, C]` in [0, 1]
    (`tf.image.psnr` / `tf.image.ssim`, max_val 1; SSIM's window shrinks to the image size)."""
    x, point = tf.constant(x), tf.constant(point)
    window = min(11, *x.shape[1:3])
    return (float(tf.reduce_mean(tf.image.psnr(x, point, max_val=1.0))),
            float(tf.reduce_mean(tf.image.ssim(x, point, max_val=1.0, filter_size=window))))


def _map_batches(model, x, name, batch_size):
    """`_BATCH_FNS[name]` on `model(images)` batch by batch, concatenated as numpy. One graph per
    model and function (cached on the model; any batch size)."""
    x = check_images(x, "images", image_shape=model.head.event_shape)
    steps = model.__dict__.setdefault("_tfp_ae_steps", {})
    if name not in steps:
        fn, spec = _BATCH_FNS[name], tf.TensorSpec([None, *model.head.event_shape], tf.float32)
        steps[name] = tf.function(lambda b: fn(model, b), input_signature=[spec], autograph=False)
    outs = [steps[name](tf.constant(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    if isinstance(outs[0], (tuple, list)):
        return tuple(np.concatenate([o[j].numpy() for o in outs]) for j in range(len(outs[0])))
    return np.concatenate([o.numpy() for o in outs])


def nll_per_image(model, x, batch_size=500):
    """-log p(x) in nats for each image `[N]` (the head's distribution, not its training loss;
    for a VAE the importance-sampled estimate with 250 samples); `x` `[N, H, W, C]` in [0, 1].
    Raises ValueError for bad images (see `check_images`)."""
    return _map_batches(model, x, "nll", batch_size if not isinstance(model, VAE) else 50)


def elbo_per_image(vae, x, batch_size=500):
    """The ELBO of each image `[N]`, nats (one posterior sample, closed-form KL)."""
    return _map_batches(vae, x, "elbo", batch_size)


def point_estimates(model, x, batch_size=200):
    """The head's point estimate of each image, `[N, H, W, C]` clipped to [0, 1]."""
    return _map_batches(model, x, "point", batch_size)


def variance_maps(model, x, batch_size=200):
    """Per-pixel variance of each image's distribution, `[N, H, W, C]` (NaN where undefined)."""
    return _map_batches(model, x, "variance", batch_size)


def point_and_variance(model, x, batch_size=200):
    """`point_estimates` and `variance_maps` of `x` in one pass (MAF: one draw of 50 samples)."""
    return _map_batches(model, x, "point_variance", batch_size)


def fid_extractors(config, data):
    """The FID feature extractors a run uses (`tfp_ae.fid`): `lenet` (trained once per dataset,
    cached) when `config.fid` and the data has labels; `inception` when `config.fid_inception` or
    its weights are already cached. Returns (extractors, notes)."""
    extractors, notes = [], []
    if config.fid and data.y_train is not None:
        extractors.append(fid.lenet_extractor(data))
    elif config.fid:
        notes.append("no fid_lenet: the dataset has no labels to train its classifier")
    if config.fid_inception or (config.fid and fid.inception_available()):
        extractors.append(fid.inception_extractor())
    return extractors, notes


def evaluate(model, data, eval_images=1000, seed=0, extractors=()):
    """Test metrics of a trained model.

    Returns a dict with `psnr` (dB) and `ssim` of the point estimates, `calibration` (see
    `calibration`, on the first 200 test images; not for `mse`), `test_nll_nats` (mean -log p(x)
    per image on the test split, x in [0, 1]),
    `test_nll_dequantized_nats` and `bits_per_dim` (on the test split dequantised with a fixed
    seed; None for heads that are not densities), and `l2_percent` (mean squared error x 100
    between the first `eval_images` test images and their point estimates, Ciobanu Section 4).
    For a VAE also `test_elbo_nats` (mean ELBO, a lower bound on log p(x)); its `test_nll_nats`
    is the importance-sampled estimate, so `test_nll_nats <= -test_elbo_nats` up to Monte-Carlo error.
    For each FID feature extractor in `extractors` (see `tfp_ae.fid.fid_metrics`): `fid_NAME`
    (the `eval_images` point estimates vs the same real test images), `fid_NAME_vs_noise` (the
    paper's column) and `fid_NAME_real_vs_noise`, plus `fid_NAME_info` (e.g. classifier accuracy).
    """
    head = model.head
    x = data.x_test
    metrics = {}
    if isinstance(model, VAE):
        metrics["test_elbo_nats"] = float(np.mean(elbo_per_image(model, x)))
        metrics["nll_note"] = f"VAE: test_nll_nats is -log p(x) by importance sampling ({NLL_SAMPLES} samples)"
    nll = float(np.mean(nll_per_image(model, x)))
    nll_deq = float(np.mean(nll_per_image(model, dequantize(x, data.num_levels, seed))))
    xe = x[:eval_images]
    point = point_estimates(model, xe)
    d = int(np.prod(x.shape[1:]))
    metrics["psnr"], metrics["ssim"] = psnr_ssim(xe, point)
    for extractor in extractors:
        metrics.update(fid.fid_metrics(extractor, point, xe), **{f"fid_{extractor.name}_info": extractor.info})
    if head.has_variance:
        xc = x[:CALIBRATION_IMAGES]
        metrics["calibration"] = calibration(model, xc, point[:len(xc)] if len(point) >= len(xc) else None)
    metrics.update(test_nll_nats=nll, test_nll_dequantized_nats=nll_deq, l2_percent=l2_percent(xe, point),
                   bits_per_dim=bits_per_dim(nll_deq, d, data.num_levels) if head.is_density else None)
    if head.head_name == "mse":
        metrics["nll_note"] = "mse head: NLL of the unit-variance normal N(mean, I) that MSE training implies"
    if not head.is_density:
        metrics["nll_note"] = f"{head.head_name}: not a normalised density on [0, 1]; NLL not comparable, no bits/dim"
    return metrics


def write_text(text, path):
    """Write a text file atomically (temporary file + rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(obj, path):
    """Write JSON atomically (see `write_text`)."""
    write_text(json.dumps(obj, indent=2, default=float), path)


def run(config: RunConfig, callbacks=(), overwrite=False, strategy=None):
    """Train and evaluate one experiment.

    With `config.out` set, the run folder gets `config.json` (what `load_model` rebuilds from),
    `checkpoints/` (model + optimizer after every epoch), `state.json` (progress), and at the end
    `metrics.json`, `reconstructions.png` (Figures 1/2: input, point estimate, variance map),
    `samples.png` (Figure 3: latent samples, output samples, t-SNE) and for K > 1
    `components.png` (Figure 4: component means sorted by log-density). Calling `run` again on a folder with an unfinished
    run resumes it from its last finished epoch.

    Returns:
      (model, metrics dict).
    Raises:
      FileExistsError: `config.out` holds a finished run and `overwrite` is False.
      ValueError: bad data or settings (see `check_images`, `build_model`), or an unfinished run
        with another configuration in `config.out`.
      DivergedError: NaN loss in every attempt.
    """
    out = Path(config.out) if config.out else None
    if out and (out / METRICS_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"run folder {out} already holds a finished run ({METRICS_FILE}); "
                                  "choose another --out or pass --overwrite to train it again")
    if out and overwrite:
        for name in (METRICS_FILE, STATE_FILE, CONFIG_FILE, CHECKPOINT_DIR):
            shutil.rmtree(out / name, ignore_errors=True) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
    data = load_dataset(config.dataset, config.data_dir)
    x_train = prepare_images(data.x_train, config.rescale, "training images")
    x_test = prepare_images(data.x_test, config.rescale, "test images", image_shape=x_train.shape[1:])
    full = dataclasses.replace(data, x_train=x_train, x_test=x_test)  # the FID classifier trains on all of it
    y_train = None if data.y_train is None else data.y_train[:config.train_limit]
    data = dataclasses.replace(full, x_train=x_train[:config.train_limit], y_train=y_train)
    x_train = data.x_train
    strategy = strategy or make_strategy(config.strategy)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_json(dict(config.to_dict(), image_shape=list(x_train.shape[1:])), out / CONFIG_FILE)
    model, history, attempts = fit(config, x_train, data.num_levels, callbacks, run_dir=out, strategy=strategy)
    metrics = dict(dataset=config.dataset, model=config.model, head=config.head, components=config.components, arch=config.arch,
                   epochs=config.epochs, num_params=int(model.count_params()), seconds_per_epoch=history["seconds"],
                   train_loss=history["loss"], loss_units=_loss_units(config),
                   seed=attempts[-1]["seed"], attempts=attempts, dequantize=config.dequantize,
                   num_levels=data.num_levels, train_images=len(x_train), data_source=data.source,
                   device=device_summary(strategy), jit=history.get("jit", "off"))
    extractors, notes = fid_extractors(config, full)
    metrics.update(evaluate(model, data, config.eval_images, seed=config.seed, extractors=extractors))
    if notes:
        metrics["fid_note"] = "; ".join(notes)
    if isinstance(model, VAE):
        metrics.update(objective=config.objective, iw_samples=config.iw_samples if config.objective == "iwae" else 1)
    if out:
        plots.save(reconstruction_plot(model, data.x_test[:10]), out / "reconstructions.png")
        if config.extra_figures:
            plots.save(figures.latent_figure(model, data, tsne_images=config.tsne_images, seed=config.seed),
                       out / "samples.png")
        if config.extra_figures and model.head.num_components > 1:
            plots.save(figures.components_figure(model, data.x_test[:6]), out / "components.png")
        write_json(dict(metrics, config=config.to_dict()), out / METRICS_FILE)
    return model, metrics


def _loss_units(config):
    if config.model == "vae":
        what = "-ELBO" if config.objective == "elbo" else f"-IWAE bound (k={config.iw_samples})"
        return f"{what}, nats per image"
    return "MSE" if config.head == "mse" else "NLL, nats per image"


def load_model(run_dir):
    """Rebuild a trained model from its run folder: `config.json` + the newest checkpoint.

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
    manager = _checkpoint_manager(model, run_dir)
    if manager.latest_checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {run_dir / CHECKPOINT_DIR}")
    manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return model, config


def reconstruction_plot(model, images):
    """Figure of inputs, point estimates and variance maps for `images` `[N, H, W, C]`."""
    head = model.head
    title = f"{head.head_name} (K={head.num_components}, {model.name.split('_')[0]})"
    return plots.reconstruction_figure(images, *point_and_variance(model, images),
                                       title=title, variance_note=head.variance_note)
