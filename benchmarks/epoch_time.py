"""Benchmark (not a test): seconds per training epoch of each head against its hardware bound.

    python benchmarks/epoch_time.py                                    # default set, MNIST MLP
    python benchmarks/epoch_time.py --heads mse normal_diag --components 1 10 --epochs 3
    python benchmarks/epoch_time.py --steps-per-execution 1            # one step per compiled call
    python benchmarks/epoch_time.py --heads normal_lowrank normal_diag --ranks 1 4 16 64   # low-rank heads per rank
    python benchmarks/epoch_time.py --device gpu --out docs/benchmarks/gpu.md

The same run first measures the machine (one child process): its float32 matmul rate (a
2048 x 2048 x 2048 `tf.matmul`, best of 10) and its memory bandwidth (`y = x * c` on 64M floats:
one read and one write of 256 MB each, best of 10). Then every configuration runs in a fresh
process (so peak memory is its own) and is timed through the two paths users take, each with one
warm-up epoch and then `--epochs` timed epochs (median reported), batch 128, on MNIST (real when
available, else random 28 x 28 images):

- `tfp-ae` path: the package's tf.data pipeline (`tfp_ae.data.make_pipeline`) and `model.fit`,
  what `tfp-ae train` runs;
- `arrays` path: `model.fit(x, x, batch_size=128)` on NumPy arrays (Keras' own shuffling).

Bounds (per epoch of N images, batch B), counted from the model's layers, so they hold for every
`--arch`:

- FLOP bound = N x 3 x (forward FLOPs of the Dense and Conv2D layers per image) / matmul rate: a
  Dense layer is 2 x inputs x units, a Conv2D 2 x H_out x W_out x kh x kw x C_in x filters, and
  training does each product three times (forward, the gradient of the input and of the kernel).
  For the MLP (D = 784 inputs, a 32-unit code, P = the head's decoder outputs `head.size`) that is
  N x 3 x 2 x (D x 32 + 32 x P). The head's own arithmetic is not counted: it is elementwise or,
  for the full-scale heads, a triangular solve of ~2 x 784^2 FLOPs per image, < 7 % of the decoder.
- memory bound = steps x bytes / bandwidth, bytes per step = 7 x 4 x (parameters) (Adam reads
  parameter, gradient, m and v, and writes parameter, m, v) + 4 x 4 x B x A, A = the floats of the
  input and of every layer's output per image (each written forward and read by the next layer,
  its gradient written and read backward; MLP: D + 32 + P; the CNN's 28 x 28 x 320 conv output
  dominates its A): for the MLP a count of the traffic no implementation can avoid; for the CNN
  the traffic of the tensors its layers materialise (a fused conv + pool kernel could skip
  writing the conv output, docs/benchmarks/cpu_cnn.md).
- ratio = measured seconds / the larger bound. Lower is better; 1x is the hardware's limit.

`eval s` is the point estimates plus variance maps of 1000 test images (the figure/metrics path).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

K1 = ["mse", "normal_identity", "normal_diag", "normal_full", "student_t_identity", "student_t_diag",
      "student_t_full", "maf", "matrix_normal_identity", "matrix_normal_diag", "matrix_normal_full",
      "matrix_t_identity", "matrix_t_diag", "matrix_t_full", "bernoulli", "continuous_bernoulli", "logistic"]
K10 = ["normal_identity", "normal_diag", "student_t_identity", "student_t_diag", "matrix_normal_identity",
       "matrix_normal_diag", "matrix_normal_full", "matrix_t_identity", "matrix_t_diag", "matrix_t_full"]
DEFAULT = [(h, 1) for h in K1] + [(h, 10) for h in K10]
PATHS = ("tfp-ae", "arrays")


def machine(args):
    """Child process: the matmul rate (FLOP/s) and memory bandwidth (bytes/s) TensorFlow reaches here."""
    from tfp_ae._tf import tf
    from tfp_ae.runtime import device_summary

    with tf.device("/GPU:0" if args.device == "gpu" else "/CPU:0"):
        a = tf.random.normal([2048, 2048])
        x = tf.random.normal([64 * 2 ** 20])

        def best(fn, n=10):
            fn().numpy()
            times = []
            for _ in range(n):
                t = time.perf_counter()
                fn().numpy().ravel()[:1]
                times.append(time.perf_counter() - t)
            return min(times)

        matmul = best(lambda: tf.reduce_sum(tf.matmul(a, a)))
        copy = best(lambda: tf.reduce_sum((x * 1.0001)[:1]))
    print("RESULT " + json.dumps(dict(flops=2 * 2048 ** 3 / matmul, bandwidth=2 * 4 * x.shape[0] / copy,
                                      device=device_summary())))


def one(args):
    """Child process: time one configuration through both paths, print one JSON line."""
    import numpy as np

    import tfp_ae  # noqa: F401  (Keras 2)
    from tfp_ae._tf import tf, tfk
    from tfp_ae.data import dataset_available, load_dataset, make_pipeline
    from tfp_ae.models import build_model, compile_model
    from tfp_ae.predict import point_and_variance
    from tfp_ae.runtime import device_summary, probe_jit

    if args.device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("--device gpu: TensorFlow sees no GPU")
    if dataset_available("mnist"):
        data = load_dataset("mnist")
        x, x_test, source = data.x_train[:args.train_limit], data.x_test[:1000], "mnist"
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (args.train_limit, 28, 28, 1)).astype(np.float32) / 255
        x_test, source = x[:1000], "random"
    tfk.utils.set_random_seed(0)

    def build(jit):
        return compile_model(build_model(args.head, x.shape[1:], args.k, args.arch, rank=args.rank), jit_compile=jit,
                             steps_per_execution=args.steps_per_execution)

    model, jit = build(args.jit), "off"
    if args.jit:
        ok, why = probe_jit(model, x[:args.batch_size])
        jit = "xla" if ok else f"fallback: {why[:80]}"
        if not ok:
            model = build(False)
    steps = -(-len(x) // args.batch_size)
    seconds = {path: [] for path in PATHS}

    class Timer(tfk.callbacks.Callback):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds[self.path].append(time.perf_counter() - self.t)

    ds = make_pipeline(x, args.batch_size, seed=0, repeat=True)
    model.fit(ds, epochs=1 + args.epochs, steps_per_epoch=steps, verbose=0, callbacks=[Timer("tfp-ae")])
    model.fit(x, x, batch_size=args.batch_size, epochs=1 + args.epochs, verbose=0, callbacks=[Timer("arrays")])
    t = time.perf_counter()
    point_and_variance(model, x_test)
    eval_s = time.perf_counter() - t
    if args.device == "gpu":
        peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops, activations = layer_counts(model)
    print("RESULT " + json.dumps(dict(
        head=args.head, k=args.k, arch=args.arch, steps=steps, eval_s=eval_s, peak_mb=peak_mb, jit=jit,
        flops_per_image=flops, activations_per_image=activations,
        seconds={p: statistics.median(s[1:]) for p, s in seconds.items()}, warmup_s=seconds["tfp-ae"][0],
        params=int(model.count_params()), outputs=int(model.head.size), data=source, device=device_summary())))


def layer_counts(model):
    """(forward FLOPs, floats of the input and of every layer's output) per image, from the
    encoder's and decoder's Keras layers (Dense and Conv2D FLOPs; see the module docstring)."""
    import numpy as np

    flops, activations = 0, int(np.prod(model.image_shape))
    for layer in model.encoder.layers + model.decoder.layers:
        activations += int(np.prod(layer.output_shape[1:]))
        flops += layer_flops(layer)
    return int(flops), activations


def layer_flops(layer):
    """Forward FLOPs per image of a built Keras layer: 2 x multiply-adds of a Dense, Conv2D or Conv2DTranspose
    (each input pixel of a transposed convolution scatters a kh x kw x cout block); 0 for any other layer."""
    from tfp_ae._tf import tfk

    if isinstance(layer, tfk.layers.Conv2DTranspose):
        kh, kw, cout, cin = layer.kernel.shape
        h_in, w_in = layer.input_shape[1:3]
        return 2 * h_in * w_in * kh * kw * cin * cout
    if isinstance(layer, tfk.layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        h_out, w_out = layer.output_shape[1:3]
        return 2 * h_out * w_out * kh * kw * cin * cout
    if isinstance(layer, tfk.layers.Dense):
        return 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 0


def bounds(r, hw, args, images):
    """(FLOP bound, memory bound) in seconds per epoch of `images` images."""
    flop = images * 3 * r["flops_per_image"] / hw["flops"]
    steps = -(-images // args.batch_size)
    memory = steps * (7 * 4 * r["params"] + 4 * 4 * args.batch_size * r["activations_per_image"]) / hw["bandwidth"]
    return flop, memory


def run_child(argv, env):
    r = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        return dict(error=f"exit {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1][:120]}")
    return json.loads(lines[-1][7:])


def main():
    from tfp_ae.config import STEPS_PER_EXECUTION
    from tfp_ae.heads import get_head

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", nargs="+", help="heads to time (default: the set below)")
    p.add_argument("--components", nargs="+", type=int, default=None, help="K values for --heads")
    p.add_argument("--arch", default="mlp")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up, per path")
    p.add_argument("--train-limit", type=int, default=60000)
    p.add_argument("--heavy-limit", type=int, default=2560, help="train images for heads with more than 100k "
                   "decoder outputs (normal_full, student_t_full); their epoch time is projected to --train-limit")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps-per-execution", type=int, default=STEPS_PER_EXECUTION)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--jit", action="store_true", help="XLA (reported fallback where a head does not compile)")
    p.add_argument("--out", help="write the table (Markdown) here")
    p.add_argument("--ranks", nargs="+", type=int, default=[None], help="ranks of the low-rank heads (default: "
                   "the head's); other heads are timed once")
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--one", nargs=2, metavar=("HEAD", "K"), help=argparse.SUPPRESS)
    p.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.machine:
        return machine(args)
    if args.one:
        args.head, args.k = args.one[0], int(args.one[1])
        return one(args)
    configs = DEFAULT if not args.heads else [(h, k) for h in args.heads for k in (args.components or [1])]
    configs = [(h, k, r) for h, k in configs for r in (args.ranks if "rank" in get_head(h).options else [None])]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    common = ["--device", args.device]
    hw = run_child(["--machine", *common], env)
    if "error" in hw:
        raise SystemExit(f"measuring the machine failed: {hw['error']}")
    print(f"machine: {hw['flops'] / 1e9:.0f} GFLOP/s float32 matmul, {hw['bandwidth'] / 1e9:.1f} GB/s memory, "
          f"{hw['device']}", flush=True)
    rows = []
    for head, k, rank in configs:
        heavy = get_head(head).params_size((28, 28, 1), k, rank=rank) > 100_000
        limit = min(args.heavy_limit, args.train_limit) if heavy else args.train_limit
        r = run_child(["--one", head, str(k), "--arch", args.arch, "--epochs", str(args.epochs), "--train-limit",
                       str(limit), "--batch-size", str(args.batch_size), "--steps-per-execution",
                       str(args.steps_per_execution), *common] + (["--jit"] if args.jit else [])
                      + ([] if rank is None else ["--rank", str(rank)]), env)
        r.update(head=head if rank is None else f"{head} r={rank}", k=k, train_images=limit)
        if "error" not in r:  # project to a full epoch of --train-limit images
            scale = -(-args.train_limit // args.batch_size) / r["steps"]
            r["epoch_s"] = {path: sec * scale for path, sec in r["seconds"].items()}
            r["flop_bound"], r["memory_bound"] = bounds(r, hw, args, args.train_limit)
        rows.append(r)
        print(format_row(r, args), flush=True)
    table = render(rows, hw, args)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


def format_row(r, args):
    if "error" in r:
        return f"| {r['head']} | {r['k']} | {r['error']} |" + " - |" * 10
    t, a = r["epoch_s"]["tfp-ae"], r["epoch_s"]["arrays"]
    projected = "" if r["train_images"] == args.train_limit else f" (timed on {r['train_images']})"
    bound = max(r["flop_bound"], r["memory_bound"])
    which = "memory" if r["memory_bound"] > r["flop_bound"] else "FLOP"
    bound_cells = f"{r['flop_bound']:.3f} | {r['memory_bound']:.3f} | {t / bound:.1f}x | {a / bound:.1f}x ({which})"
    return (f"| {r['head']} | {r['k']} | {r['outputs']} | {t:.2f}{projected} | {a:.2f} | {bound_cells} | "
            f"{r['eval_s']:.2f} | {r['peak_mb']:.0f} | {r['params']} | {r['jit']} |")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def render(rows, hw, args):
    ok = next((r for r in rows if "epoch_s" in r), {})
    head = [f"# Epoch time per head against its bound ({args.arch}, batch {args.batch_size}, {ok.get('data', '?')} "
            f"{args.train_limit} images, median of {args.epochs} epochs after 1 warm-up, per path)", "",
            f"Machine: {platform.platform()}, {cpu_name()}, {os.cpu_count()} CPU cores, device {hw['device']}, "
            f"Python {platform.python_version()}; measured in the same run: **{hw['flops'] / 1e9:.0f} GFLOP/s** "
            f"float32 matmul (2048^3), **{hw['bandwidth'] / 1e9:.1f} GB/s** memory (y = c x, 256 MB); "
            f"{datetime.date.today()}; steps per execution {args.steps_per_execution}; command: "
            f"`python benchmarks/epoch_time.py {' '.join(sys.argv[1:])}`", "",
            "s/epoch: `tfp-ae` = the package's tf.data pipeline + `model.fit` (what `tfp-ae train` runs), "
            "`arrays` = `model.fit(x, x, batch_size=128)` on NumPy arrays. FLOP bound = N x 3 x (Dense and Conv2D "
            "FLOPs per image) / matmul rate (MLP: N x 3 x 2 x (784 x 32 + 32 x P)); memory bound = steps x "
            "(7 x 4 x params + 4 x 4 x B x A) bytes / bandwidth (Adam's reads and writes of every parameter; "
            "A = floats of the input and every layer's output per image, each written, read and its gradient "
            "written and read; MLP: 784 + 32 + P); ratio = s/epoch / the larger bound (named). "
            "eval s = point estimates + variance maps of "
            "1000 test images; peak MB = the process's peak resident memory (GPU: peak device memory).", "",
            "| head | K | P | s/epoch tfp-ae | s/epoch arrays | FLOP bound s | memory bound s | ratio tfp-ae | "
            "ratio arrays | eval s | peak MB | params | jit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return "\n".join(head + [format_row(r, args) for r in rows]) + "\n"


if __name__ == "__main__":
    main()
