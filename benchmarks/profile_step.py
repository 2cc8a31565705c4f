"""Where a training step's time goes, per head: the TensorFlow profiler's op statistics.

For each head (and K) it trains one warm-up epoch on `--images` MNIST images (or MNIST-shaped
noise when MNIST is absent), then profiles `--steps` training steps of `model.fit` with
`tf.profiler.experimental` and reads the trace's `framework_op_stats` (the table TensorBoard's
profiler shows). Op self-times are summed into parts of the model by their name scope:
`encoder`, `decoder` (the dense layer that emits the head's parameters), `head` (the
distribution: log_prob, its gradient, the packing of scales), `optimizer` (Adam) and `other`
(data, loss bookkeeping). Prints a Markdown table: ms per step and the share of each part, plus
the most expensive ops of each head. On a CPU the ops run on the host; on a GPU the device's
kernels are counted.

    python benchmarks/profile_step.py --heads mse normal_diag normal_full --components 1 --steps 20
"""
import argparse
import glob
import json
import platform
import shutil
import tempfile
import time
from collections import defaultdict

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.data import dataset_available, load_dataset
from tfp_ae.heads import HEADS
from tfp_ae.models import build_model, compile_model

PARTS = ("encoder", "decoder", "head", "optimizer", "other")


def _part(name, head_layer):
    """Which part of the model an op belongs to, from its (gradient) name scope."""
    n = name.lower()
    if "adam" in n or "resourceapply" in n or "assignaddvariableop" in n:
        return "optimizer"
    if n.startswith("iterator") or "dataset" in n:
        return "other"
    if "/encoder/" in n or n.startswith("encoder/"):
        return "encoder"
    if (head_layer in n or "distribution_lambda" in n or "log_prob" in n or "/loss/" in n or "lambda" in n
            or n.startswith(("fill_triangular", "full_scale", "split"))):
        return "head"
    if "/decoder/" in n:
        return "decoder"
    return "other"


def op_stats(logdir):
    """Rows of the profiler's framework_op_stats table (dicts keyed by column id)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    data, ok = plugin.xspace_to_tools_data(files, "framework_op_stats", {})
    if not ok:
        raise RuntimeError("the profiler could not convert its trace")
    table = json.loads(data)[0]
    ids = [c["id"] for c in table["cols"]]
    return [dict(zip(ids, [cell.get("v") if cell else None for cell in r["c"]])) for r in table["rows"]]


def profile(head, k, x, steps, batch_size, arch="mlp", jit=False, top_n=4):
    """(ms per step, {part: share}, top ops [(name, type, share)]) for one head."""
    tf.keras.utils.set_random_seed(0)
    model = compile_model(build_model(head, x.shape[1:], k, arch), jit_compile=jit)
    model.fit(x, x, batch_size=batch_size, epochs=1, verbose=0)  # warm-up: tracing, first allocations
    xs = x[:steps * batch_size]
    logdir = tempfile.mkdtemp(prefix="tfp_ae_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    model.fit(xs, xs, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    tf.profiler.experimental.stop()
    rows = [r for r in op_stats(logdir) if r["type"] != "IDLE" and r["eager"] != "Eager"]
    if any(r["host_or_device"] == "Device" for r in rows):  # on a GPU: its kernels, not the host's launches
        rows = [r for r in rows if r["host_or_device"] == "Device"]
    shutil.rmtree(logdir, ignore_errors=True)
    total = sum(r["total_self_time"] for r in rows) or 1.0
    parts = defaultdict(float)
    head_layer = model.head.name.lower()
    for r in rows:
        parts[_part(r["operation"], head_layer)] += r["total_self_time"] / total
    top = sorted(rows, key=lambda r: -r["total_self_time"])[:top_n]
    ops = [(r["operation"], r["type"], r["total_self_time"] / total) for r in top]
    return 1000 * seconds / (len(xs) // batch_size), parts, ops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", nargs="+", default=["mse", "normal_diag", "student_t_diag", "continuous_bernoulli",
                                                    "logistic", "maf", "matrix_t_full", "normal_full"])
    p.add_argument("--components", "-K", nargs="+", type=int, default=[1])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--images", type=int, default=2560)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--arch", default="mlp", help="mlp, cnn or cnn_dense")
    p.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    p.add_argument("--top", type=int, default=4, help="ops listed per head")
    args = p.parse_args(argv)
    if dataset_available("mnist"):
        x = load_dataset("mnist").x_train[:max(args.images, args.steps * args.batch_size)]
    else:
        x = np.random.default_rng(0).uniform(size=(args.images, 28, 28, 1)).astype(np.float32)
    print(f"machine: {platform.processor() or platform.machine()}, TF {tf.__version__}, "
          f"{len(tf.config.list_physical_devices('GPU'))} GPU; arch {args.arch}, batch {args.batch_size}, "
          f"{args.steps} profiled steps{', XLA' if args.jit else ''}\n")
    print("ms/step is measured under the profiler (its tracing adds per-op cost): compare shares, and take "
          "speed from benchmarks/epoch_time.py.\n")
    print("| head | K | ms/step | ratio to mse | " + " | ".join(PARTS) + " | top ops (share of device self-time) |")
    print("|---|---|---|---|" + "---|" * len(PARTS) + "---|")
    base = None
    for k in args.components:
        for head in args.heads:
            if k > 1 and (not HEADS[head].mixable or head in ("normal_full", "student_t_full")):
                continue  # no mixture, or ~22 GiB at K=10 (see the README's memory notes)
            steps = min(args.steps, 4) if head in ("normal_full", "student_t_full") else args.steps
            ms, parts, top = profile(head, k, x, steps, args.batch_size, args.arch, args.jit, args.top)
            base = ms if head == "mse" and base is None else base
            ratio = f"{ms / base:.1f}x" if base else "-"
            ops = "; ".join(f"{t} `{n.split('/')[-1]}` {s:.0%}" for n, t, s in top)
            print(f"| {head} | {k} | {ms:.1f} | {ratio} | " + " | ".join(f"{parts[q]:.0%}" for q in PARTS)
                  + f" | {ops} |", flush=True)


if __name__ == "__main__":
    main()
