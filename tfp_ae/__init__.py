"""tfp_ae: probabilistic autoencoders on TensorFlow Probability and Keras 2.

The decoder of every model ends in a `tfp.layers.DistributionLambda` head, so the model
outputs a probability distribution over images and is trained by negative log-likelihood
with `model.fit(images, images)`. Reproduces Ciobanu, "Vanilla Probabilistic Autoencoder".

`tfp.layers` needs Keras 2, so this package sets `TF_USE_LEGACY_KERAS=1` before TensorFlow
is imported and builds every model with `tf_keras`. Import `tfp_ae` before TensorFlow (or set
the variable yourself) for `tf.keras` to agree with it.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tfp_ae._tf  # noqa: E402,F401  (TensorFlow first, quietly: see tfp_ae._tf)
from tfp_ae.config import RunConfig  # noqa: E402
from tfp_ae.data import dequantize, load_dataset, make_pipeline  # noqa: E402
from tfp_ae.heads import HEADS, get_head, make_head  # noqa: E402
from tfp_ae.models import Autoencoder, ProbabilisticModel, build_model, compile_model  # noqa: E402
from tfp_ae.train import load_model, run  # noqa: E402
from tfp_ae.vae import VAE, build_vae  # noqa: E402

__version__ = "0.8.0"
__all__ = ["HEADS", "get_head", "make_head", "load_dataset", "make_pipeline", "dequantize",
           "Autoencoder", "ProbabilisticModel", "VAE", "build_model", "build_vae", "compile_model", "RunConfig",
           "run", "load_model"]
