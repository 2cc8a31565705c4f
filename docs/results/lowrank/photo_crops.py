"""Write an .npz of colour crops of scikit-learn's two bundled photographs (china.jpg, flower.jpg,
427x640 RGB; `sklearn.datasets.load_sample_images`), usable as `tfp-ae train --dataset FILE`.

Crops are `size` x `size` windows at the photos' own resolution (no resizing), at seeded random
positions: training crops lie in the left 80 % of each photo's width, test crops in the right
20 %, so no test pixel was seen in training. Pixels in [0, 1]; no labels (`y_train` / `y_test`
name the source photo, 0 or 1).

    python docs/results/lowrank/photo_crops.py --size 32 --train 20000 --test 2000 --out crops32.npz
"""
import argparse

import numpy as np
from sklearn.datasets import load_sample_images


def crops(images, size, count, lo, hi, rng):
    """`count` crops `[count, size, size, 3]` in [0, 1] whose left edge is in [lo, hi - size] of
    the width fraction (of each photo in turn), and the index of their photo."""
    out, src = [], []
    for i in range(count):
        k = i % len(images)
        img = images[k]
        h, w, _ = img.shape
        x0 = rng.integers(int(lo * w), int(hi * w) - size + 1)
        y0 = rng.integers(0, h - size + 1)
        out.append(img[y0:y0 + size, x0:x0 + size])
        src.append(k)
    return np.stack(out).astype(np.float32) / 255.0, np.array(src, np.int64)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    images = load_sample_images().images
    rng = np.random.default_rng(a.seed)
    x_train, y_train = crops(images, a.size, a.train, 0.0, 0.8, rng)
    x_test, y_test = crops(images, a.size, a.test, 0.8, 1.0, rng)
    np.savez_compressed(a.out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {a.out}: x_train {x_train.shape}, x_test {x_test.shape}")


if __name__ == "__main__":
    main()
