"""Which lossless compressor for the complexity score (Serrà et al., ICLR 2020)? PNG (`tf.io.encode_png`,
what `tfp_ae.scoring` uses) against Pillow's lossless WebP and lossless JPEG 2000, on the scores that
`tfp-ae score` wrote for Fashion-MNIST in / MNIST out: complexity = bits/dim - compressed bits/dim, so a
compressor changes the score without rescoring the model. Prints the mean compressed bits/dim, the
compression time relative to PNG, and the complexity AUROC of each run.

    python benchmarks/compressors.py docs/results/ood/scores/fashion_mnist_vs_mnist_vae ...

(each folder must hold the `scores.csv` of `tfp-ae score RUN --data fashion_mnist --ood mnist`; the
benchmark in docs/results/ood writes them, and they are not kept in the repository.)
"""
import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

import tfp_ae  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfp_ae.data import load_dataset
from tfp_ae.scoring import png_bits_per_dim


def pillow_bits_per_dim(x, fmt, **options):
    """Bits/dim of each 8-bit grey image `[N, H, W, 1]` in [0, 1] written by Pillow as `fmt`."""
    out = np.empty(len(x))
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(np.round(img[..., 0] * 255).astype(np.uint8)).save(buf, format=fmt, **options)
        out[i] = 8 * len(buf.getvalue()) / img.size
    return out


COMPRESSORS = {
    "png": lambda x: png_bits_per_dim(x, 256),
    "webp_lossless": lambda x: pillow_bits_per_dim(x, "WEBP", lossless=True, quality=100, method=6),
    "jpeg2000_lossless": lambda x: pillow_bits_per_dim(x, "JPEG2000", irreversible=False),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scores", nargs="+", help="folders holding scores.csv (Fashion-MNIST in, MNIST out)")
    args = p.parse_args()
    x_in, x_ood = load_dataset("fashion_mnist").x_test, load_dataset("mnist").x_test
    runs = {}
    for folder in args.scores:
        with open(Path(folder) / "scores.csv") as f:
            rows = list(csv.DictReader(f))
        runs[Path(folder).name] = {s: np.array([float(r["bits_per_dim"]) for r in rows if r["set"] == s])
                                   for s in ("in", "ood")}
        if [len(v) for v in runs[Path(folder).name].values()] != [len(x_in), len(x_ood)]:
            raise SystemExit(f"{folder}/scores.csv does not score the whole test splits (was --limit given?)")
    png_seconds = None
    for name, compress in COMPRESSORS.items():
        t = time.perf_counter()
        c_in, c_ood = compress(x_in), compress(x_ood)
        seconds = time.perf_counter() - t
        png_seconds = png_seconds or seconds
        line = [f"{name:18s}", f"bits/dim in {c_in.mean():.3f} ood {c_ood.mean():.3f}",
                f"time {seconds / png_seconds:5.1f}x png"]
        for run, b in runs.items():
            labels = np.r_[np.zeros(len(b["in"])), np.ones(len(b["ood"]))]
            line.append(f"{run} AUROC {roc_auc_score(labels, np.r_[b['in'] - c_in, b['ood'] - c_ood]):.4f}")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
