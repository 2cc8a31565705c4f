"""Streaming from TFRecord shards: peak memory of `tfp-ae train` against the decoded size of the
data, and the input pipeline's rate beside the models' training rates.

The 70,000 MNIST digits resized to 64x64x3 (`tfp-ae convert mnist OUT --image-size 64 --channels 3
--shards 16`, done once) are 3.4 GB as float32; training must stream them in a fraction of that.

    python benchmarks/streaming.py --shards runs/mnist64 --out docs/benchmarks/streaming.md
    python benchmarks/streaming.py --shards runs/mnist96 --size 96 --archs mlp --out docs/benchmarks/streaming.md --append

Each table also runs the MLP on the first 1,000 training images only: the same peak means the
memory does not grow with the data.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sh(argv):
    """Run a command under /usr/bin/time -v; returns (seconds, peak RSS bytes, stdout)."""
    t = time.time()
    r = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{r.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) * 1024
    return time.time() - t, rss, r.stdout


def pipeline_rate(shards, batch_size=128, batches=300):
    """Images per second of the training input pipeline alone (read, shuffle, decode, batch)."""
    import tfp_ae  # noqa: F401
    from tfp_ae.data import open_source
    split = open_source(shards).splits["train"]
    it = iter(split.pipeline(batch_size, seed=0, repeat=True))
    for _ in range(20):
        next(it)
    t = time.time()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.time() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default="runs/mnist64")
    p.add_argument("--out")
    p.add_argument("--cnn-images", type=int, default=6000, help="training images of the CNN run (its rate)")
    p.add_argument("--size", type=int, default=64, help="--image-size of the converted MNIST shards")
    p.add_argument("--archs", nargs="+", default=["mlp", "cnn_dense"])
    p.add_argument("--append", action="store_true", help="append this table to --out")
    args = p.parse_args()
    tfp_ae_cli = [sys.executable, "-m", "tfp_ae"]
    lines = []
    shards = Path(args.shards)
    if not (shards / "tfp_ae_shards.json").exists():
        secs, rss, _ = sh([*tfp_ae_cli, "convert", "mnist", str(shards), "--image-size", str(args.size), "--channels",
                           "3", "--shards", "16"])
        lines.append(f"- `tfp-ae convert mnist {shards} --image-size {args.size} --channels 3 --shards 16`: {secs:.0f} s, "
                     f"peak RSS {rss / 2**30:.2f} GiB")
    info = json.loads((shards / "tfp_ae_shards.json").read_text())
    n = sum(info["counts"].values())
    h, w, c = info["image_shape"]
    decoded = n * h * w * c * 4
    on_disk = sum(f.stat().st_size for f in shards.glob("*.tfrecord"))
    lines.append(f"- data: {n} images {h}x{w}x{c}, {decoded / 2**30:.2f} GiB as float32, "
                 f"{on_disk / 2**20:.0f} MiB of PNG records in {len(list(shards.glob('*.tfrecord')))} files")
    rate = pipeline_rate(str(shards))
    print(f"pipeline: {rate:.0f} images/s", flush=True)
    rows = ["| run | training images | s/epoch | training images/s | pipeline / training | peak RSS | decoded / peak |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    common = ["--dataset", str(shards), "--epochs", "1", "--no-fid", "--no-extra-figures", "--tsne-images", "0",
              "--eval-images", "200"]
    runs = [("mlp", None), ("mlp", 1000)] + [(a, args.cnn_images) for a in args.archs if a != "mlp"]
    for arch, limit in runs:
        with tempfile.TemporaryDirectory() as tmp:
            extra = [] if limit is None else ["--train-limit", str(limit)]
            secs, rss, _ = sh([*tfp_ae_cli, "train", *common, "--arch", arch, "--out", f"{tmp}/run", *extra])
            m = json.loads(Path(f"{tmp}/run/metrics.json").read_text())
        images = m["train_images"]
        epoch = m["seconds_per_epoch"][0]
        train_rate = images / epoch
        rows.append(f"| {arch} normal_diag | {images} | {epoch:.1f} | {train_rate:.0f} | {rate / train_rate:.1f}x | "
                    f"{rss / 2**30:.2f} GiB | {decoded / rss:.1f}x |")
        print(rows[-1], flush=True)
    text = "\n".join([
        *([] if args.append else ["# Streaming from TFRecord shards: memory and input rate", ""]),
        f"## {n} MNIST digits at {h}x{w}x{c}", "",
        f"`python benchmarks/streaming.py --shards {shards}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, no GPU. Every run is `tfp-ae train --dataset {shards} --epochs 1 --no-fid "
        "--no-extra-figures --tsne-images 0 --eval-images 200` (the test NLL still streams over all 10,000 test "
        "images); peak RSS from `/usr/bin/time -v`, for the whole process (training and evaluation).", "",
        *lines,
        f"- input pipeline alone (`Split.pipeline`: shuffle files and records, decode PNG, batch 128): "
        f"**{rate:.0f} images/s**", "",
        *rows, ""])
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
