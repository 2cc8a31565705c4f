"""Where and how a run executes: tf.distribute strategy, device summary, precision policy, the
host-memory guard and the XLA probe."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfp_ae._tf import tf, tfk
from tfp_ae.architectures import ARCHITECTURES, ArchSettings, ParamLayout
from tfp_ae.config import STRATEGIES
from tfp_ae.errors import InputError
from tfp_ae.heads import get_head

if TYPE_CHECKING:
    from tfp_ae.config import RunConfig
    from tfp_ae.heads.base import Head
    from tfp_ae.models import ProbabilisticModel


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
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
    raise InputError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")


def num_workers(strategy: tf.distribute.Strategy | None = None) -> int:
    """How many worker processes train together (1 unless `MultiWorkerMirroredStrategy`)."""
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return max(1, sum(len(v) for v in strategy.cluster_resolver.cluster_spec().as_dict().values()))
    return 1


def worker(strategy: tf.distribute.Strategy | None = None) -> tuple[int, int]:
    """`(index, count)` of this process among the workers that train together (`(0, 1)` alone)."""
    strategy = strategy or tf.distribute.get_strategy()
    count = num_workers(strategy)
    return (int(strategy.cluster_resolver.task_id or 0) if count > 1 else 0), count


def device_summary(strategy: tf.distribute.Strategy | None = None) -> str:
    """Where training runs, e.g. `1 x CPU` or `2 x GPU (mirrored)`, for logs and metrics.json."""
    strategy = strategy or tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    kind = "GPU" if gpus else "CPU"
    n = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # class name: CollectiveAllReduceStrategy
        return f"{n} x {kind} on {num_workers(strategy)} workers (MultiWorkerMirroredStrategy)"
    name = type(strategy).__name__
    return f"{n} x {kind}" + ("" if name.startswith("_Default") else f" ({name})")


@contextlib.contextmanager
def precision_policy(name: str):
    """Keras' global mixed precision policy set to `name` (`float32`, `mixed_float16`,
    `mixed_bfloat16`) while models are built inside the block, then restored: layers keep the
    policy they were built with. Heads stay float32 (see `tfp_ae.heads.Head`)."""
    old = tfk.mixed_precision.global_policy()
    tfk.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tfk.mixed_precision.set_global_policy(old)


GIB = 2 ** 30
RUNTIME_BYTES = 1 * GIB   # TensorFlow runtime + a cached 60k-image dataset (measured: ~0.9 GiB)
ACTIVATION_COPIES = 3     # an activation, its gradient and the op's workspace


def estimate_train_memory(head: Head, image_shape: tuple[int, int, int], num_components: int = 1, batch_size: int = 128,
                          latent_dim: int = 32, arch: str = "mlp", conv_width: int | None = None,
                          conv_depth: int | None = None, **head_options) -> dict[str, int]:
    """Rough peak host memory (bytes) of training an autoencoder with `head` on `arch`.

    weights x 4 (value, gradient, two Adam moments) x 4 bytes + batch x (params_size x c +
    `ACTIVATION_COPIES` x the arch's activation values per image, `activation_values`) x 4 bytes + the
    runtime, with c = 14 floats of working memory per decoder output for full-scale heads (the dense
    n x n scale matrices and their gradients) and 8 otherwise; calibrated on this package's
    `normal_full` K=1 / 2 / 10 at batch 128 with the MLP (measured peaks 2.4 / 4.2 / 22.6 GiB with
    benchmarks/epoch_time.py; the estimate is 3.2 / 5.3 / 23.1 GiB) and on `conv` and `cnn_dense`
    (benchmarks/conv.py). The weights are counted as the MLP's (the convolutions' are fewer).
    Returns:
      dict(total, weights, activations) in bytes.
    """
    cls = head if isinstance(head, type) else type(head)
    options = cls.check_options(tuple(image_shape), **head_options)
    size = cls.params_size(tuple(image_shape), num_components, **options)
    weights = 16 * ((latent_dim + 1) * size + (int(np.prod(image_shape)) + 1) * latent_dim)
    per_output = 14 if cls.full_covariance else 8
    layout = ParamLayout.of(cls, image_shape, num_components, **options)
    module = ARCHITECTURES.get(arch, ARCHITECTURES["mlp"])  # a VAE's dense_block: dense layers
    maps = module.activation_values(tuple(image_shape), layout, ArchSettings(latent_dim, conv_width, conv_depth))
    activations = 4 * batch_size * (per_output * size + ACTIVATION_COPIES * maps)
    return dict(total=RUNTIME_BYTES + weights + activations, weights=weights, activations=activations)


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux `MemAvailable`), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config: RunConfig, image_shape: tuple[int, int, int]) -> None:
    """Refuse, before building anything, a CPU training run that cannot fit in host memory.

    Raises:
      MemoryError: the estimate (`estimate_train_memory`) exceeds the available memory; the
        message gives both and the largest `--batch-size` that fits.
    """
    if tf.config.list_physical_devices("GPU"):
        return  # device memory: TensorFlow reports an out-of-memory error itself
    free = available_memory()
    head = get_head(config.head)
    opts = dict(config.head_options, latent_dim=config.latent_dim, arch=config.arch, **config.arch_options)
    need = estimate_train_memory(head, image_shape, config.components, config.batch_size, **opts)
    if free is None or need["total"] <= 0.9 * free:
        return
    batch = config.batch_size
    while batch > 1 and estimate_train_memory(head, image_shape, config.components, batch, **opts)["total"] > 0.9 * free:
        batch //= 2
    fits = estimate_train_memory(head, image_shape, config.components, batch, **opts)["total"]
    hint = (f"use --batch-size {batch} (about {fits / GIB:.1f} GiB)" if fits <= 0.9 * free
            else "even one image per batch does not fit")
    raise MemoryError(
        f"{config.head} with K={config.components} at batch {config.batch_size} needs about {need['total'] / GIB:.1f} GiB "
        f"to train ({need['weights'] / GIB:.1f} GiB for weights, gradients and Adam; {need['activations'] / GIB:.1f} GiB "
        f"for {config.arch}'s activations and "
        f"{head.params_size(tuple(image_shape), config.components, **config.head_options)} decoder outputs per image), "
        "but only "
        f"{free / GIB:.1f} GiB are available: {hint}, or run on a machine or GPU with more memory.")


def probe_jit(model: ProbabilisticModel, images: np.ndarray) -> tuple[bool, str]:
    """Whether one training step of `model` (loss and gradients) compiles with XLA, traced with an
    unknown batch size as `model.fit` does (some ops need static shapes under XLA).

    Returns:
      (True, "") or (False, the first line of the compiler's error).
    """
    def step(x):
        with tf.GradientTape() as tape:
            value = model.objective(x)
        return tape.gradient(value, model.trainable_variables)

    spec = tf.TensorSpec([None, *np.shape(images)[1:]], tf.float32)  # unknown batch size, as in `fit`
    try:
        tf.function(step, jit_compile=True, autograph=False, input_signature=[spec])(tf.constant(images))
        return True, ""
    except (tf.errors.OpError, NotImplementedError, TypeError, ValueError) as e:
        return False, (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
