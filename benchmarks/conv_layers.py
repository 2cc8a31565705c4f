"""Benchmark (not a test): where a `conv` training step's time goes, layer by layer (issue 51's speed goal).

    python benchmarks/conv_layers.py --size 128 --out docs/benchmarks/cpu_conv_layers.md

Builds the `conv` autoencoder (`normal_diag`, latent 100, grey `--size` x `--size` images) and times, for each
of its Conv2D and Conv2DTranspose layers, a copy of the layer (same config, fresh weights) on a batch of
`--batch-size` random inputs of its input shape: forward and backward (the gradients of the input and the
weights) in one `tf.function`, the median of `--repeats` calls after a warm-up. Beside it: its forward FLOPs
per batch (`epoch_time.layer_flops`) and its time over the FLOP bound (3 x those / the float32 matmul rate
measured here, `conv.machine_flops`), and the whole model's `model.fit` step at the same batch for reference
(its share is the layer's time over the step's; the layers' sum differs from the step by the head, the dense
code layers, Adam and Keras' bookkeeping). Then the output convolution again with a 1 x 1 kernel (the same parameter
maps from the last feature maps, 9x fewer multiply-adds): what that design change would save.
The same script runs unchanged on a GPU.
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conv import machine_flops  # noqa: E402
from epoch_time import layer_flops  # noqa: E402

from tfp_ae._tf import tf, tfk  # noqa: E402
from tfp_ae.models import build_model, compile_model  # noqa: E402

CONVS = (tfk.layers.Conv2D, tfk.layers.Conv2DTranspose)


def median_seconds(fn, repeats):
    fn()  # trace and warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def layer_step_seconds(layer, input_shape, batch, repeats):
    """Median seconds of the forward and backward pass of a fresh copy of `layer` on `[batch, *input_shape]`."""
    copy = type(layer).from_config(layer.get_config())
    x = tf.random.uniform([batch, *input_shape])
    copy(x)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = copy(x)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, *copy.trainable_variables])

    return median_seconds(step, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the Markdown here")
    args = p.parse_args()

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    rate = machine_flops(device.lower())
    model = compile_model(build_model("normal_diag", (args.size, args.size, 1), 1, "conv", latent_dim=100))
    x = np.random.default_rng(0).uniform(size=(args.batch_size * (args.repeats + 1), args.size, args.size, 1))
    x = x.astype(np.float32)
    model.fit(x[:args.batch_size], x[:args.batch_size], batch_size=args.batch_size, epochs=1, verbose=0)
    t = time.perf_counter()
    model.fit(x, x, batch_size=args.batch_size, epochs=1, verbose=0)
    step = (time.perf_counter() - t) / (args.repeats + 1)
    convs = [m for m in model.encoder.layers + model.decoder.layers if isinstance(m, CONVS)]
    rows, total = [], 0.0
    for i, layer in enumerate(convs):
        shape = tuple(layer.input_shape[1:])
        seconds = layer_step_seconds(layer, shape, args.batch_size, args.repeats)
        total += seconds
        rows.append((f"{i + 1}. {type(layer).__name__} {layer.kernel_size[0]}x{layer.kernel_size[1]}/"
                     f"{layer.strides[0]}", shape, tuple(layer.output_shape[1:]), seconds,
                     layer_flops(layer) * args.batch_size))
        print(rows[-1], flush=True)
    last = convs[-1]
    one_by_one = tfk.layers.Conv2D.from_config(dict(last.get_config(), kernel_size=(1, 1), name="output_1x1"))
    shape = tuple(last.input_shape[1:])
    alt = ("the output conv as 1x1 (not in the model)", shape, tuple(last.output_shape[1:]),
           layer_step_seconds(one_by_one, shape, args.batch_size, args.repeats),
           layer_flops(last) // int(np.prod(last.kernel_size)) * args.batch_size)

    lines = [f"# Where a `conv` step's time goes, layer by layer ({args.size} x {args.size} grey, {device})", "",
             f"`python benchmarks/conv_layers.py {' '.join(sys.argv[1:])}` on {platform.machine()}, "
             f"{os.cpu_count()} cores, {rate / 1e9:.0f} GFLOP/s float32 matmul measured in the same run; "
             "`normal_diag`, latent 100, "
             f"batch {args.batch_size}; each layer's forward and backward, median of {args.repeats}.", "",
             f"The whole training step (`model.fit`, batch {args.batch_size}): **{step * 1000:.0f} ms**; the "
             f"convolutions below sum to {total * 1000:.0f} ms ({total / step:.0%} of it).", "",
             "| layer | input | output | ms (fwd + bwd) | share of the step | GFLOP (fwd, batch) | ratio to FLOP bound |",
             "|---|---|---|---|---|---|---|"]
    for name, shape_in, shape_out, seconds, flops in [*rows, alt]:
        bound = 3 * flops / rate
        lines.append(f"| {name} | {shape_in} | {shape_out} | {seconds * 1000:.0f} | {seconds / step:.0%} | "
                     f"{flops / 1e9:.2f} | {seconds / bound:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
