"""Export a trained model as a TensorFlow SavedModel whose serving signatures return tensors.

A reloaded Keras model with a `DistributionLambda` head would return tensors, not distributions,
and pickled layer functions break across versions. So the SavedModel holds only the model's
variables and these `tf.function`s, which need nothing but TensorFlow to run (images: float32
`[B, H, W, C]` in [0, 1]):

- `serving_default(images)` = `reconstruct(images)` -> `{"reconstruction": [B, H, W, C]}`: the
  head's point estimate (mean, mode for t heads, mean of 50 samples drawn with a fixed stateless
  seed for MAF), clipped to [0, 1]; TF Serving clients that name no signature get it;
- `variance(images)` -> `{"variance": [B, H, W, C]}` (not for `mse`, which models no variance);
- `interval(images, level)` -> `{"lo", "hi", "width"}`, each `[B, H, W, C]` in pixel units: each
  pixel's central `level` interval (`Head.interval`: exact quantiles, or the percentiles of 1000
  draws with a fixed stateless seed for mixtures, MAF and Bernoulli, so the output is
  deterministic); `level` is a scalar float32 in (0, 1), 0.9 when a Python caller omits it
  (`loaded.interval(images)`); not for `mse`;
- `conformal_interval(images)` -> `{"lo", "hi", "width"}`: the risk-controlled interval
  (`Head.conformal_interval`: the 90 % interval scaled by the λ that `tfp-ae train --risk` fitted, per
  pixel group with `--risk-groups`, per image stratum with `--risk-strata`; the 90 % interval itself
  when none was fitted); not for `mse`;
- `log_prob(images)` -> `{"log_prob": [B]}` in nats per image (a VAE: log p(x) by importance
  sampling with `NLL_SAMPLES` = 250 samples and a fixed seed; `reconstruct` etc. decode the
  posterior mean);
- `sample(images, num_samples)` -> `{"samples": [B, num_samples, H, W, C]}`, batch-major like every
  other output; `num_samples` is a scalar int32 >= 1 (TF Serving's REST API: send it with the
  columnar `"inputs"` format, whose inputs need not share a batch axis);
- `score(images)` -> `{"nll": [B], "neg_log_marginal": [B, H, W, C]}` in nats: the per-image OOD
  score and the per-pixel anomaly map of `tfp_ae.scoring` (not for `mse`);
- mixtures (K > 1) only: `component_means(images)` -> `{"component_means": [B, K, H, W, C]}`
  and `component_log_prob(images)` -> `{"component_log_prob": [B, K]}` (the mixture's
  log-density at each component's mean, or mode for t heads; Ciobanu, Figure 4).

Every signature checks its input inside the graph (`checked_images`): a batch of rank 4, the
model's image shape, finite pixels in [0, 1]; otherwise it raises `InvalidArgumentError` whose
message says what was expected. A dtype other than float32 is refused by the signature itself.

Load with `tf.saved_model.load(path)` and call `loaded.reconstruct(images)`, or use
`loaded.signatures["reconstruct"](images=images)` from any TensorFlow runtime.

`export_tflite` (`tfp-ae export RUN --out OUT --tflite`) also writes `OUT/tflite/<name>.tflite`
for the deterministic functions: `reconstruct`, `interval` (level 0.9, fixed), `conformal_interval` and `log_prob`
where it is closed-form (not for a VAE). Each is converted with TensorFlow Lite's built-in ops
only, then run by `tf.lite.Interpreter` on the run's own first test images (dequantised for a
`--dequantize` run) and compared with the SavedModel function (rtol 1e-5); a function that does
not convert, does not run or differs is refused, and `OUT/tflite/report.json` gives the
converter's or interpreter's reason, or the largest difference and where (for example the low-rank
heads' `Cholesky` has no built-in TensorFlow Lite kernel; `docs/benchmarks/tflite.md` per head).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import SHOW_TF_LOGS, native_stderr_silenced, tf, tfd
from tfp_ae.data import dequantize, open_source
from tfp_ae.heads import INTERVAL_LEVEL, SAMPLE_SEED
from tfp_ae.train import load_model

if TYPE_CHECKING:
    from tfp_ae.config import RunConfig
    from tfp_ae.heads.base import Head
    from tfp_ae.models import ProbabilisticModel


def checked_images(images: np.ndarray, image_shape: tuple[int, int, int]) -> tf.Tensor:
    """`images` after in-graph checks, with the static shape `[None, H, W, C]`.

    Args:
      images: float32 tensor of any shape (the signatures accept any, so that a wrong one reaches
        these checks instead of being silently reshaped by the model's Flatten).
      image_shape: `(H, W, C)` of the model.
    Raises (when the graph runs):
      InvalidArgumentError: rank is not 4 (one unbatched image), wrong image shape, NaN/inf or
        pixels outside [0, 1] (e.g. 0-255 data); the message states the expected input.
    """
    want = f"float32 images [batch, {', '.join(str(d) for d in image_shape)}] with pixels in [0, 1]"
    # each check is safe on any input and fails only for its own problem, so the error raised
    # names the problem whatever order the runtime runs them in
    shape = tf.shape(images)
    rank_ok = tf.equal(tf.size(shape), 4)
    shape_ok = tf.cond(rank_ok, lambda: tf.reduce_all(tf.equal(shape[1:], tf.constant(image_shape, tf.int32))),
                       lambda: tf.constant(True))
    values_ok = tf.reduce_all((images >= 0) & (images <= 1))  # False for NaN
    checks = [
        tf.debugging.Assert(rank_ok, [f"images: expected {want}; a single image needs a batch axis "
                                      "(images[None]); got shape", shape], summarize=4),
        tf.debugging.Assert(shape_ok, [f"images: wrong image shape; expected {want}; got shape", shape], summarize=4),
        tf.debugging.Assert(values_ok, [f"images: pixels must be finite and in [0, 1] (divide 0-255 data by "
                                        f"255); expected {want}; got min, max", tf.reduce_min(images),
                                        tf.reduce_max(images)]),
    ]
    with tf.control_dependencies(checks):  # a bad batch reaches the model as an empty one
        return tf.cond(rank_ok & shape_ok, lambda: tf.reshape(images, [-1, *image_shape]),
                       lambda: tf.zeros([0, *image_shape]))


def interval_outputs(head: Head, dist: tfd.Distribution, level: float | None) -> dict[str, tf.Tensor]:
    """The `interval` signature's outputs: `{"lo", "hi", "width"}`, each `[B, H, W, C]`, of `dist`'s
    central `level` interval (`Head.interval`), or with `level` None its risk-controlled interval
    (`Head.conformal_interval`, the `conformal_interval` signature), for the SavedModel and the TFLite
    file alike."""
    lo, hi = head.conformal_interval(dist) if level is None else head.interval(dist, level)
    return {"lo": lo, "hi": hi, "width": hi - lo}


def score_outputs(model: ProbabilisticModel, images: np.ndarray) -> dict[str, tf.Tensor]:
    """The `score` signature's outputs (`tfp_ae.scoring`): `nll` `[B]`, -log p(x) in nats per image
    (the OOD score before any correction), and `neg_log_marginal` `[B, H, W, C]`, -log p(x_pixel |
    input) in nats (`Head.pixel_log_prob`, the anomaly map)."""
    dist = model(images, training=False)
    return {"nll": -model.log_prob(images, seed=SAMPLE_SEED), "neg_log_marginal": -model.head.pixel_log_prob(dist, images)}


class ServingModule(tf.Module):
    """The serving functions of one model (see the module docstring); tracks only its variables."""

    def __init__(self, model: ProbabilisticModel):
        super().__init__(name="tfp_ae_serving")
        head, shape = model.head, tuple(model.image_shape)
        self.model_variables = list(model.variables)  # tracked, so the SavedModel holds them
        images = tf.TensorSpec(None, tf.float32, name="images")  # any shape: checked in the graph

        def signature(fn, *extra):
            return tf.function(fn, input_signature=[images, *extra], autograph=False)

        def dist(x):
            return model(checked_images(x, shape), training=False)

        def sample(images, num_samples):
            n = tf.debugging.assert_positive(num_samples, message="num_samples: expected a scalar int32 >= 1")
            with tf.control_dependencies([n]):
                draws = head.sample(dist(images), num_samples)  # [num_samples, B, H, W, C]
            return {"samples": tf.transpose(draws, [1, 0, *range(2, 2 + len(shape))])}

        def interval(images, level=tf.constant(INTERVAL_LEVEL)):  # noqa: B008 (serving clients may omit it)
            return interval_outputs(head, dist(images), level)

        self.reconstruct = signature(lambda images: {
            "reconstruction": model.point_estimate(checked_images(images, shape))})
        self.log_prob = signature(lambda images: {
            "log_prob": model.log_prob(checked_images(images, shape), seed=SAMPLE_SEED)})
        self.sample = signature(sample, tf.TensorSpec([], tf.int32, name="num_samples"))
        names = ["reconstruct", "log_prob", "sample"]
        if head.has_variance:
            self.variance = signature(lambda images: {"variance": head.variance(dist(images))})
            self.interval = tf.function(interval, autograph=False)
            self.interval.get_concrete_function(images)                                  # level = 0.9
            self.interval.get_concrete_function(images, tf.TensorSpec([], tf.float32, name="level"))
            self.conformal_interval = signature(lambda images: interval_outputs(head, dist(images), None))
            self.score = signature(lambda images: score_outputs(model, checked_images(images, shape)))
            names += ["variance", "interval", "conformal_interval", "score"]
        if head.num_components > 1:
            self.component_means = signature(lambda images: {
                "component_means": head.component_points(dist(images))[0]})
            self.component_log_prob = signature(lambda images: {
                "component_log_prob": head.component_points(dist(images))[1]})
            names += ["component_means", "component_log_prob"]
        self.signature_names = tuple(names)

    def signatures(self) -> dict:
        """Name -> function, with `serving_default` (the point estimate) for clients that name none;
        `interval` takes `images` and `level` (a signature has no default)."""
        sigs = {name: getattr(self, name) for name in self.signature_names}
        if "interval" in sigs:
            sigs["interval"] = self.interval.get_concrete_function(
                tf.TensorSpec(None, tf.float32, name="images"), tf.TensorSpec([], tf.float32, name="level"))
        return dict(sigs, serving_default=self.reconstruct)


def export_saved_model(model: ProbabilisticModel, export_dir: str | os.PathLike, overwrite: bool = False,
                       config: RunConfig | None = None) -> list[str]:
    """Write `model` as a SavedModel with tensor-returning serving signatures (for inference: the custom
    gradients of the ops inside them are not saved, so the loaded functions are not differentiable
    through e.g. a Student-t's quantile).

    Args:
      model: a `tfp_ae.models.ProbabilisticModel` (an autoencoder or a VAE, trained).
      export_dir: output folder; written to a temporary sibling and renamed, so a crash never
        leaves a half-written export.
      overwrite: replace an existing `export_dir`.
      config: optional dict saved beside the model as `tfp_ae_config.json`.
    Returns:
      the list of signature names (besides `serving_default`, the same function as `reconstruct`).
    Raises:
      FileExistsError: `export_dir` exists and `overwrite` is False.
    """
    export_dir = Path(export_dir)
    if export_dir.exists() and not overwrite:
        raise FileExistsError(f"export folder {export_dir} already exists; pass --overwrite "
                              "(overwrite=True) to replace it")
    module = ServingModule(model)
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # serving signatures are evaluated, never differentiated: saving the custom gradients of the ops inside
    # them (TFP's betainc for a Student-t's quantile) made a student_t_diag export 105 s, 11 s without them
    tf.saved_model.save(module, str(tmp), signatures=module.signatures(),
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    if config is not None:
        (tmp / "tfp_ae_config.json").write_text(json.dumps(config, indent=2))
    if export_dir.exists():
        shutil.rmtree(export_dir)
    os.replace(tmp, export_dir)
    return list(module.signature_names)


TFLITE_DIR = "tflite"
TFLITE_RTOL = 1e-5


def tflite_functions(model: ProbabilisticModel) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The deterministic functions TensorFlow Lite may run, name -> function of float32 images
    `[B, H, W, C]` returning a dict of tensors (as the SavedModel signatures of the same name)."""
    head = model.head
    fns = {"reconstruct": lambda images: {"reconstruction": model.point_estimate(images)}}
    if head.has_variance:
        fns["interval"] = lambda images: interval_outputs(head, model(images, training=False), INTERVAL_LEVEL)
        fns["conformal_interval"] = lambda images: interval_outputs(head, model(images, training=False), None)
    if model.log_prob_note is None:  # closed form (a VAE's is an importance-sampled estimate)
        fns["log_prob"] = lambda images: {"log_prob": model.log_prob(images)}
    return fns


def _first_line(e):
    """The converter's or interpreter's reason, without source locations (the converter's `file:0: error:`
    and MLIR's `loc(...): ` before its message): `Type: text`."""
    text = str(e).strip()
    if "error:" in text:
        text = text.split("error:", 1)[1].strip()
    if text.startswith("loc("):  # skip the balanced parentheses of the location
        depth = 0
        for i, c in enumerate(text):
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0 and c == ")":
                text = text[i + 1:].lstrip(": ")
                break
    return f"{type(e).__name__}: {(text.strip().splitlines() or ['?'])[0][:300]}"


class TFLiteMismatch(AssertionError):
    """A TensorFlow Lite function's output is not within rtol `TFLITE_RTOL` of TensorFlow's."""


def check_tflite_output(name: str, key: str, got: np.ndarray, want: np.ndarray) -> None:
    """Raise `TFLiteMismatch` unless `got` (TFLite) is within rtol `TFLITE_RTOL` of `want`
    (TensorFlow), with an absolute floor of `TFLITE_RTOL * max(1, max |want|)`. The message
    names the signature and output, the largest absolute and relative difference and the index
    of each (with both values there)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise TFLiteMismatch(f"{name}/{key}: TensorFlow Lite returns shape {got.shape}, TensorFlow {want.shape}")
    diff = np.abs(got - want)
    if np.all(diff <= TFLITE_RTOL * np.abs(want) + TFLITE_RTOL * max(1.0, float(np.abs(want).max(initial=0)))):
        return
    rel = diff / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    at_abs = np.unravel_index(np.nanargmax(diff), diff.shape)
    at_rel = np.unravel_index(np.nanargmax(rel), rel.shape)
    raise TFLiteMismatch(
        f"{name}/{key}: TensorFlow Lite differs from TensorFlow by up to {diff[at_abs]:.3g} absolute at index "
        f"{tuple(map(int, at_abs))} (TensorFlow {want[at_abs]:.7g}, TensorFlow Lite {got[at_abs]:.7g}) and "
        f"{rel[at_rel]:.3g} relative at {tuple(map(int, at_rel))}; allowed: rtol {TFLITE_RTOL:g}")


def export_tflite(model: ProbabilisticModel, out_dir: str | os.PathLike, probe: np.ndarray | None = None) -> dict[str, str]:
    """Write `OUT_DIR/tflite/<name>.tflite` for each of `tflite_functions(model)` that TensorFlow
    Lite converts with its built-in ops and runs to within rtol 1e-5 of TensorFlow on `probe`
    images, and `report.json` (name -> "converted" or the reason it was refused, with the largest
    absolute and relative difference and where for an output that differs). The files take a
    float32 batch `[B, H, W, C]` of any B (the interpreter's signature runner resizes its input);
    unlike the SavedModel they do not check that pixels are finite and in [0, 1] (TensorFlow Lite
    has no assertion op).

    Args:
      probe: float32 images `[B, H, W, C]` in [0, 1] like the data the model will see (`export_run`
        passes the run's own test images, dequantised for a `--dequantize` run). The default, 4
        seeded uniform-noise images, is far from any data set: a density fitted to dequantised
        pixels gives them log-densities of order -1e8, where float32 sums of TensorFlow and TFLite
        differ by more than rtol 1e-5.
    Returns:
      dict name -> "converted" or "refused: reason".
    """
    folder = Path(out_dir) / TFLITE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    shape = tuple(model.image_shape)
    if probe is None:
        probe = np.random.default_rng(0).uniform(size=(4, *shape)).astype(np.float32)
    probe = np.asarray(probe, np.float32)
    report = {}
    for name, fn in tflite_functions(model).items():
        concrete = tf.function(fn, autograph=False).get_concrete_function(tf.TensorSpec([None, *shape], tf.float32,
                                                                                         name="images"))
        try:
            with _tflite_quiet(), tempfile.TemporaryDirectory() as saved:
                # the converter saves the function as a SavedModel first; saved here without the custom
                # gradients of its ops (`from_concrete_functions` traces them: 100 s for a Student-t head's
                # four functions, most of it TFP betainc's gradient, which a TFLite file never holds)
                holder = tf.Module()
                holder.variables_of_the_model = list(model.variables)
                tf.saved_model.save(holder, saved, signatures={"serving_default": concrete},
                                    options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
                converter = tf.lite.TFLiteConverter.from_saved_model(saved)
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
                blob = converter.convert()
                runner = tf.lite.Interpreter(model_content=blob).get_signature_runner()
                got = runner(images=probe)
            want = {k: v.numpy() for k, v in concrete(tf.constant(probe)).items()}
            for k, v in want.items():
                check_tflite_output(name, k, got[k], v)
        except Exception as e:  # noqa: BLE001 (any failure refuses this function; the reason is reported)
            report[name] = f"refused: {_first_line(e)}"
            continue
        (folder / f"{name}.tflite").write_bytes(blob)
        report[name] = "converted"
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    return report


@contextlib.contextmanager
def _tflite_quiet():
    """TensorFlow Lite's own console lines hidden unless `tfp-ae -v` / `TFP_AE_TF_LOGS=1`: its Python
    deprecation warning for `tf.lite.Interpreter` (LiteRT's, printed on every use) and the C++ "Created
    TensorFlow Lite XNNPACK delegate" line. Errors still raise."""
    with warnings.catch_warnings(), native_stderr_silenced(not SHOW_TF_LOGS):
        if not SHOW_TF_LOGS:
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
        yield


def export_run(run_dir: str | os.PathLike, export_dir: str | os.PathLike, overwrite: bool = False,
               tflite: bool = False) -> tuple[list[str], dict[str, str] | None]:
    """`export_saved_model` of the trained model in a run folder (see `tfp_ae.train.load_model`),
    and with `tflite` also `export_tflite` into the same folder.

    Returns:
      (signature names, TFLite report or None).
    """
    model, config = load_model(run_dir)
    names = export_saved_model(model, export_dir, overwrite, config=config.to_dict())
    return names, (export_tflite(model, export_dir, probe=tflite_probe(config)) if tflite else None)


TFLITE_PROBE_IMAGES = 8


def tflite_probe(config: RunConfig) -> np.ndarray:
    """The images `export_run` checks TensorFlow Lite on: the run's first `TFLITE_PROBE_IMAGES` test
    images `[8, H, W, C]`, dequantised (seed 0) when the run trained on dequantised pixels."""
    source = open_source(config.dataset, **config.source_options)
    with source.reading():
        x, _ = source.splits["test"].take(TFLITE_PROBE_IMAGES)
    return dequantize(x, source.num_levels, seed=0) if config.dequantize else x
