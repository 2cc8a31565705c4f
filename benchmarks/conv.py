"""Benchmark (not a test): `conv` against `mlp` and `cnn_dense` at 32, 64, 128 and 256 pixels (issue 51).

    python benchmarks/conv.py                                  # grey, every size, the three archs
    python benchmarks/conv.py --channels 3 --sizes 64 256      # colour
    python benchmarks/conv.py --jit                            # also with XLA (compile_model(jit_compile=True))
    python benchmarks/conv.py --out docs/benchmarks/cpu_conv.md
    python benchmarks/conv.py --stream 256 --channels 3                # peak RSS of `tfp-ae train` from a folder

Each configuration (`normal_diag`, `--loss nll`, batch `--batch-size`) runs in a fresh process (its peak
memory is its own): `model.fit` on `--images` random images for one warm-up epoch, then one timed epoch.
Printed: seconds per epoch of the images and per 4,000 images, images per second, the FLOP bound (N x 3
x the Dense, Conv2D and Conv2DTranspose FLOPs per image / the float32 matmul rate this machine reaches,
`epoch_time.layer_counts` and `epoch_time.machine`), the ratio measured / bound (1x: the hardware's
limit), the peak resident memory of the process, and the package's estimate of it
(`tfp_ae.runtime.estimate_train_memory`). A configuration whose estimate exceeds the memory available
is skipped with the estimate. The same script runs unchanged on a GPU (`--device gpu`).

`--stream SIZE` instead writes a folder of `--images` SIZE x SIZE crops of scikit-learn's two sample
photographs (PNG, grey or colour by `--channels`) and runs `tfp-ae train --arch conv --head normal_diag
--dequantize` on it for one epoch under /usr/bin/time: the peak resident memory of a streamed run
(training decodes each batch from the files; nothing is loaded whole).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from epoch_time import layer_counts  # noqa: E402

ARCHS = ("mlp", "cnn_dense", "conv")
GIB = 2 ** 30


def one(args):
    """Child process: one (arch, size) configuration; prints `RESULT {json}`."""
    import numpy as np

    from tfp_ae.models import build_model, compile_model
    shape = (args.size, args.size, args.channels)
    x = np.random.default_rng(0).uniform(size=(args.images, *shape)).astype(np.float32)
    model = compile_model(build_model("normal_diag", shape, arch=args.arch, latent_dim=args.latent_dim),
                          jit_compile=args.jit)
    model.fit(x[:args.batch_size], x[:args.batch_size], batch_size=args.batch_size, epochs=1, verbose=0)
    t = time.perf_counter()
    model.fit(x, x, batch_size=args.batch_size, epochs=1, verbose=0)
    seconds = time.perf_counter() - t
    flops, _ = layer_counts(model)
    print("RESULT " + json.dumps(dict(seconds=seconds, params=model.count_params(), flops_per_image=flops,
                                      peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))


def stream(args):
    """Peak RSS of a one-epoch `tfp-ae train --arch conv` streamed from a folder of photo crops."""
    import tempfile

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images
    size, rng = args.stream, np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for j in range(args.images):
            photo = load_sample_images().images[j % 2]
            top, left = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
            crop = Image.fromarray(photo[top:top + size, left:left + size])
            (crop if args.channels == 3 else crop.convert("L")).save(f"{tmp}/{j:05d}.png")
        argv = ["/usr/bin/time", "-f", "RSS %M", sys.executable, "-m", "tfp_ae", "train", "--dataset", tmp, "--arch",
                "conv", "--head", "normal_diag", "--dequantize", "--epochs", "1", "--batch-size", str(args.batch_size),
                "--latent-dim", str(args.latent_dim), "--no-fid", "--no-extra-figures", "--tsne-images", "0",
                "--eval-images", "50", "--out", f"{tmp}/run"]
        t = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True)
        rss = [int(ln.split()[1]) * 1024 for ln in r.stderr.splitlines() if ln.startswith("RSS ")]
        if r.returncode or not rss:
            raise SystemExit(r.stderr[-2000:])
        m = json.loads(Path(f"{tmp}/run/metrics.json").read_text())
        print(f"tfp-ae train --arch conv, {args.images} images of {size} x {size} x {args.channels} streamed from PNG "
              f"files, batch {args.batch_size}: peak RSS {rss[-1] / GIB:.2f} GiB, {m['seconds_per_epoch'][0]:.1f} s for "
              f"the epoch, {time.perf_counter() - t:.0f} s in all (evaluation included)")


def machine_flops(device):
    """The float32 matmul rate (FLOP/s), from `epoch_time.py --machine` in a child process."""
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "epoch_time.py"), "--machine", "--device", device],
                       capture_output=True, text=True)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[-1][7:])["flops"] if line else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128, 256])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--images", type=int, default=512, help="images of the timed epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=100, help="the code (Bergmann et al.'s 100)")
    p.add_argument("--jit", action="store_true", help="also time each configuration with XLA")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--stream", type=int, default=None, metavar="SIZE",
                   help="peak RSS of one streamed `tfp-ae train --arch conv` epoch on SIZE x SIZE photo crops")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", default="conv", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return one(args)
    if args.stream:
        return stream(args)

    from tfp_ae.heads import get_head
    from tfp_ae.runtime import available_memory, estimate_train_memory
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    flops = machine_flops(args.device)
    rows = []
    print(f"machine: {flops / 1e9:.0f} GFLOP/s float32 matmul; {args.images} random images, batch {args.batch_size}, "
          f"{args.channels} channel(s), normal_diag nll", flush=True)
    for size in args.sizes:
        for arch in args.archs:
            for jit in ([False, True] if args.jit else [False]):
                est = estimate_train_memory(get_head("normal_diag"), (size, size, args.channels), 1, args.batch_size,
                                            args.latent_dim, arch=arch)["total"]
                row = dict(size=size, arch=arch, jit=jit, estimate_gib=est / GIB)
                free = available_memory()
                if free and est > 0.9 * free:
                    row["skipped"] = f"estimate {est / GIB:.1f} GiB > 90 % of {free / GIB:.1f} GiB available"
                else:
                    argv = [sys.executable, __file__, "--child", "--arch", arch, "--size", str(size), "--channels",
                            str(args.channels), "--images", str(args.images), "--batch-size", str(args.batch_size),
                            "--latent-dim", str(args.latent_dim)] + (["--jit"] if jit else [])
                    r = subprocess.run(argv, capture_output=True, text=True, env=env)
                    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
                    if not line:
                        row["skipped"] = f"exit {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1][:100]}"
                    else:
                        row.update(json.loads(line[-1][7:]))
                        row["bound"] = args.images * 3 * row["flops_per_image"] / flops
                rows.append(row)
                print(format_row(row, args), flush=True)
    table = render(rows, args, flops)
    print(table)
    if args.out:
        Path(args.out).write_text(table)


def format_row(r, args):
    head = f"| {r['size']} | {r['arch']}{' (jit)' if r['jit'] else ''} |"
    if "skipped" in r:
        return head + f" skipped: {r['skipped']} | | | | | | |"
    s = r["seconds"]
    return (head + f" {r['params']:,} | {s:.2f} | {s * 4000 / args.images:.0f} | {args.images / s:.0f} | "
            f"{r['flops_per_image'] / 1e6:.0f} | {s / r['bound']:.1f}x | {r['peak_rss'] / GIB:.2f} | "
            f"{r['estimate_gib']:.2f} |")


def render(rows, args, flops):
    lines = [f"# `conv` against `mlp` and `cnn_dense` ({args.device.upper()}, {args.channels} channel(s))", "",
             f"`python benchmarks/conv.py {' '.join(sys.argv[1:])}` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; {flops / 1e9:.0f} GFLOP/s float32 matmul measured in the same run. "
             f"`normal_diag`, NLL, batch {args.batch_size}, latent {args.latent_dim}, one timed epoch of "
             f"{args.images} random images after a warm-up epoch, each configuration in its own process.", "",
             "| px | arch | params | s/epoch | s per 4,000 | images/s | MFLOP/image (fwd) | ratio to FLOP bound | "
             "peak RSS GiB | estimate GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [format_row(r, args) for r in rows]) + "\n"


if __name__ == "__main__":
    main()
