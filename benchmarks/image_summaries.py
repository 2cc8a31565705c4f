"""Benchmark (not a test): the cost of `tfp_ae.callbacks.ImageSummaries` against a training epoch.

Trains the paper's MLP on MNIST (real when available, else random 28 x 28 images) through the
package's tf.data pipeline, as `tfp-ae train` does, for `--epochs` epochs with the callback, and
prints for each head: the median epoch time (the callback's time subtracted), the callback's time
in the first epoch (which traces its compiled function once per `fit`) and its median afterwards,
and their ratios to the epoch.

    python benchmarks/image_summaries.py --heads normal_diag normal_diag:10 student_t_diag maf \
        --out docs/benchmarks/image_summaries.md
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", nargs="+", default=["normal_diag", "normal_diag:10", "student_t_diag", "maf"],
                   help="HEAD or HEAD:K")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", help="write the table (Markdown) here")
    args = p.parse_args()

    import numpy as np

    import tfp_ae  # noqa: F401  (Keras 2)
    from tfp_ae._tf import tfk
    from tfp_ae.callbacks import ImageSummaries
    from tfp_ae.data import dataset_available, load_dataset, make_pipeline
    from tfp_ae.models import build_model, compile_model

    if dataset_available("mnist"):
        data = load_dataset("mnist")
        x, x_val, source = data.x_train, data.x_test, "MNIST"
    else:
        x = np.random.default_rng(0).integers(0, 256, (60000, 28, 28, 1)).astype(np.float32) / 255
        x_val, source = x[:8], "random images"
    rows = []
    for spec in args.heads:
        head, k = (spec.split(":") + ["1"])[:2]
        tfk.utils.set_random_seed(0)
        model = compile_model(build_model(head, x.shape[1:], int(k)))
        epochs = []

        class Timer(tfk.callbacks.Callback):
            def __init__(self, seconds):
                super().__init__()
                self.seconds = seconds

            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.t)

        with tempfile.TemporaryDirectory() as log_dir:
            summaries = ImageSummaries(log_dir, x_val)
            steps = -(-len(x) // 128)
            # the Timer's epoch_end runs after the summaries', so an epoch's time includes them
            model.fit(make_pipeline(x, 128, seed=0, repeat=True), epochs=args.epochs, steps_per_epoch=steps, verbose=0,
                      callbacks=[summaries, Timer(epochs)])
        train = statistics.median(e - s for e, s in zip(epochs[1:], summaries.seconds[1:]))
        first, later = summaries.seconds[0], statistics.median(summaries.seconds[1:])
        rows.append(f"| {head} | {k} | {train:.2f} | {first:.3f} | {later:.3f} | {100 * first / train:.1f} % | "
                    f"{100 * later / train:.2f} % |")
        print(rows[-1], flush=True)
    table = "\n".join([
        f"# Cost of `ImageSummaries` (8 {source} test images per epoch) against an MLP training epoch",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"{datetime.date.today()}; `python benchmarks/image_summaries.py {' '.join(sys.argv[1:])}`; "
        f"{len(x)} training images, batch 128, {args.epochs} epochs per head (median over epochs 2-{args.epochs}).",
        "",
        "| head | K | epoch s (without summaries) | summaries s, first epoch (traces once per fit) | "
        "summaries s, later epochs | first / epoch | later / epoch |",
        "| --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
