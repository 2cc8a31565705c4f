"""The one place that imports TensorFlow, Keras 2 (`tf_keras`) and TensorFlow Probability.

Quiet by default: TensorFlow's C++ libraries write log lines to the process's stderr while they
load (before their logging is initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot stop them, and twice,
once per copy of the logging library), e.g. `Could not find cuda drivers` or `failed call to
cuInit` on a machine without a GPU. They are not errors of this package, so file descriptor 2 is
pointed at /dev/null while TensorFlow is imported, and later C++ messages below FATAL are hidden
(`TF_CPP_MIN_LOG_LEVEL=3`). Set `TFP_AE_TF_LOGS=1` (`tfp-ae -v`) to see them all. Python
exceptions raised by the import still propagate with their traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
SHOW_TF_LOGS = os.environ.get("TFP_AE_TF_LOGS", "") not in ("", "0")
if not SHOW_TF_LOGS:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Point file descriptor 2 at /dev/null inside the block (what C and C++ code writes is dropped;
    Python's `sys.stderr` is flushed first and restored after)."""
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebook kernels, closed streams)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with native_stderr_silenced(not SHOW_TF_LOGS):
    import tensorflow as tf  # noqa: E402
    import tensorflow_probability as tfp  # noqa: E402
    import tf_keras as tfk  # noqa: E402


class _NoRetracingNotice:
    """Each evaluated model traces its own cached tf.functions once; TensorFlow counts those
    traces across models and warns about "retracing", which is expected here."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


tf.get_logger().addFilter(_NoRetracingNotice())
tfd = tfp.distributions
tfb = tfp.bijectors
tfpl = tfp.layers

__all__ = ["tf", "tfk", "tfp", "tfd", "tfb", "tfpl", "native_stderr_silenced", "SHOW_TF_LOGS"]
