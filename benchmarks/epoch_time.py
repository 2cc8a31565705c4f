"""Benchmark (not a test): seconds per training epoch of each head, as a ratio to the plain `mse`
autoencoder measured in the same run, plus peak memory and the cost of the evaluation paths.

    python benchmarks/epoch_time.py                                    # default set, MNIST MLP
    python benchmarks/epoch_time.py --heads mse normal_diag maf --components 1 --epochs 3 --jit
    python benchmarks/epoch_time.py --device gpu --out docs/benchmarks/gpu.md

Each configuration runs in a fresh process (so peak memory is its own): one warm-up epoch, then
`--epochs` timed epochs (median reported) on MNIST-shaped data (real MNIST when it is available,
else random 28x28 images), batch 128, the package's tf.data pipeline and `model.fit`. `eval s` is
the point estimates plus variance maps of 1000 test images (the figure/metrics path).
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


def one(args):
    """Child process: time one configuration, print one JSON line."""
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
    model = compile_model(build_model(args.head, x.shape[1:], args.k, args.arch), jit_compile=args.jit)
    jit = "off"
    if args.jit:
        ok, why = probe_jit(model, x[:args.batch_size])
        jit = "xla" if ok else f"fallback: {why[:80]}"
        if not ok:
            model = compile_model(build_model(args.head, x.shape[1:], args.k, args.arch))
    steps = -(-len(x) // args.batch_size)
    ds = make_pipeline(x, args.batch_size, seed=0, repeat=True)
    seconds = []

    class Timer(tfk.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.t)

    model.fit(ds, epochs=1 + args.epochs, steps_per_epoch=steps, verbose=0, callbacks=[Timer()])
    t = time.perf_counter()
    point_and_variance(model, x_test)
    eval_s = time.perf_counter() - t
    if args.device == "gpu":
        peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sec = statistics.median(seconds[1:])
    print("RESULT " + json.dumps(dict(head=args.head, k=args.k, arch=args.arch, seconds=sec, steps_per_s=steps / sec,
                                      warmup_s=seconds[0], eval_s=eval_s, peak_mb=peak_mb, jit=jit,
                                      params=int(model.count_params()), data=source, device=device_summary())))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", nargs="+", help="heads to time (default: the set below)")
    p.add_argument("--components", nargs="+", type=int, default=None, help="K values for --heads")
    p.add_argument("--arch", default="mlp")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up")
    p.add_argument("--train-limit", type=int, default=60000)
    p.add_argument("--heavy-limit", type=int, default=2560, help="train images for heads with more than 100k "
                   "decoder outputs (normal_full, student_t_full); their epoch time is projected to --train-limit")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--jit", action="store_true", help="XLA (reported fallback where a head does not compile)")
    p.add_argument("--out", help="write the table (Markdown) here")
    p.add_argument("--one", nargs=2, metavar=("HEAD", "K"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.head, args.k = args.one[0], int(args.one[1])
        return one(args)
    configs = DEFAULT if not args.heads else [(h, k) for h in args.heads for k in (args.components or [1])]
    if ("mse", 1) not in configs:
        configs = [("mse", 1)] + configs
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    rows = []
    from tfp_ae.heads import get_head
    for head, k in configs:
        heavy = get_head(head).params_size((28, 28, 1), k) > 100_000
        limit = min(args.heavy_limit, args.train_limit) if heavy else args.train_limit
        cmd = [sys.executable, __file__, "--one", head, str(k), "--arch", args.arch, "--epochs", str(args.epochs),
               "--train-limit", str(limit), "--batch-size", str(args.batch_size), "--device", args.device]
        r = subprocess.run(cmd + (["--jit"] if args.jit else []), capture_output=True, text=True, env=env)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not lines:
            err = (r.stderr.strip().splitlines() or ["?"])[-1][:120]
            rows.append(dict(head=head, k=k, error=f"exit {r.returncode}: {err}"))
        else:
            r = json.loads(lines[-1][7:])
            r["train_images"] = limit
            r["epoch_s"] = r["seconds"] * (-(-args.train_limit // args.batch_size)) / (-(-limit // args.batch_size))
            rows.append(r)
        print(format_row(rows[-1], rows[0]), flush=True)
    table = render(rows, args)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


def format_row(r, base):
    if "error" in r:
        return f"| {r['head']} | {r['k']} | - | - | - | - | - | - | {r['error']} |"
    ratio = r["epoch_s"] / base["epoch_s"] if "epoch_s" in base else float("nan")
    projected = "" if r["train_images"] == base.get("train_images") else f" (timed on {r['train_images']} images)"
    return (f"| {r['head']} | {r['k']} | {r['epoch_s']:.2f}{projected} | {ratio:.2f}x | {r['steps_per_s']:.1f} | "
            f"{r['eval_s']:.2f} | {r['peak_mb']:.0f} | {r['params']} | {r['jit']} |")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def render(rows, args):
    ok = next((r for r in rows if "seconds" in r), {})
    head = [f"# Epoch time per head ({args.arch}, batch {args.batch_size}, {ok.get('data', '?')} "
            f"{args.train_limit} images, median of {args.epochs} epochs after 1 warm-up)", "",
            f"Machine: {platform.platform()}, {cpu_name()}, {os.cpu_count()} CPU cores, device {ok.get('device', '?')}, "
            f"Python {platform.python_version()}; {datetime.date.today()}; command: "
            f"`python benchmarks/epoch_time.py {' '.join(sys.argv[1:])}`", "",
            "ratio = seconds per epoch / the mse head's in the same run; eval s = point estimates + variance maps "
            "of 1000 test images; peak MB = the process's peak resident memory (GPU: peak device memory).", "",
            "| head | K | s/epoch | ratio to mse | steps/s | eval s | peak MB | params | jit |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return "\n".join(head + [format_row(r, rows[0]) for r in rows]) + "\n"


if __name__ == "__main__":
    main()
