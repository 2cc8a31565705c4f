"""Export a trained model as a TensorFlow SavedModel whose serving signatures return tensors.

A reloaded Keras model with a `DistributionLambda` head would return tensors, not distributions,
and pickled layer functions break across versions. So the SavedModel holds only the model's
variables and these `tf.function`s (images: float32 `[B, H, W, C]` in [0, 1]):

- `reconstruct(images)` -> `{"reconstruction": [B, H, W, C]}`: the head's point estimate (mean,
  mode for t heads, mean of 50 samples drawn with a fixed stateless seed for MAF), clipped to [0, 1];
- `variance(images)` -> `{"variance": [B, H, W, C]}` (not for `mse`, which models no variance);
- `log_prob(images)` -> `{"log_prob": [B]}` in nats per image (a VAE: log p(x) by importance
  sampling with `NLL_SAMPLES` = 250 samples and a fixed seed; `reconstruct` etc. decode the
  posterior mean);
- `sample(images, num_samples)` -> `{"samples": [num_samples, B, H, W, C]}`;
- mixtures (K > 1) only: `component_means(images)` -> `{"component_means": [B, K, H, W, C]}`
  and `component_log_prob(images)` -> `{"component_log_prob": [B, K]}` (the mixture's
  log-density at each component's mean, or mode for t heads; Ciobanu, Figure 4).

Load with `tf.saved_model.load(path)` and call `loaded.reconstruct(images)`, or use
`loaded.signatures["reconstruct"](images=images)` from any TensorFlow runtime.
"""
import json
import os
import shutil
from pathlib import Path

from tfp_ae._tf import tf
from tfp_ae.heads import SAMPLE_SEED
from tfp_ae.train import load_model


class ServingModule(tf.Module):
    """The serving functions of one model (see the module docstring); tracks only its variables."""

    def __init__(self, model):
        super().__init__(name="tfp_ae_serving")
        head = model.head
        self.model_variables = list(model.variables)  # tracked, so the SavedModel holds them
        images = tf.TensorSpec([None, *head.event_shape], tf.float32, name="images")

        def dist(x):
            return model(x, training=False)

        self.reconstruct = tf.function(lambda images: {"reconstruction": model.point_estimate(images)},
                                       input_signature=[images], autograph=False)
        self.log_prob = tf.function(lambda images: {"log_prob": model.log_prob(images, seed=SAMPLE_SEED)},
                                    input_signature=[images], autograph=False)
        self.sample = tf.function(lambda images, num_samples: {"samples": head.sample(dist(images), num_samples)},
                                  input_signature=[images, tf.TensorSpec([], tf.int32, name="num_samples")],
                                  autograph=False)
        names = ["reconstruct", "log_prob", "sample"]
        if head.has_variance:
            self.variance = tf.function(lambda images: {"variance": head.variance(dist(images))},
                                        input_signature=[images], autograph=False)
            names.append("variance")
        if head.num_components > 1:
            self.component_means = tf.function(
                lambda images: {"component_means": head.component_points(dist(images))[0]},
                input_signature=[images], autograph=False)
            self.component_log_prob = tf.function(
                lambda images: {"component_log_prob": head.component_points(dist(images))[1]},
                input_signature=[images], autograph=False)
            names += ["component_means", "component_log_prob"]
        self.signature_names = tuple(names)

    def signatures(self):
        return {name: getattr(self, name) for name in self.signature_names}


def export_saved_model(model, export_dir, overwrite=False, config=None):
    """Write `model` as a SavedModel with tensor-returning serving signatures.

    Args:
      model: a `tfp_ae.models.ProbabilisticModel` (an autoencoder or a VAE, trained).
      export_dir: output folder; written to a temporary sibling and renamed, so a crash never
        leaves a half-written export.
      overwrite: replace an existing `export_dir`.
      config: optional dict saved beside the model as `tfp_ae_config.json`.
    Returns:
      the list of signature names.
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
    tf.saved_model.save(module, str(tmp), signatures=module.signatures())
    if config is not None:
        (tmp / "tfp_ae_config.json").write_text(json.dumps(config, indent=2))
    if export_dir.exists():
        shutil.rmtree(export_dir)
    os.replace(tmp, export_dir)
    return list(module.signature_names)


def export_run(run_dir, export_dir, overwrite=False):
    """`export_saved_model` of the trained model in a run folder (see `tfp_ae.train.load_model`)."""
    model, config = load_model(run_dir)
    return export_saved_model(model, export_dir, overwrite, config=config.to_dict())
