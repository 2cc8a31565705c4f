"""The one place that imports TensorFlow, Keras 2 (`tf_keras`) and TensorFlow Probability."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as tfk  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

class _NoRetracingNotice:
    """Each evaluated model traces its own cached tf.functions once; TensorFlow counts those
    traces across models and warns about "retracing", which is expected here."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_NoRetracingNotice())
tfd = tfp.distributions
tfb = tfp.bijectors
tfpl = tfp.layers

__all__ = ["tf", "tfk", "tfp", "tfd", "tfb", "tfpl"]
