"""Prepare the real-data sources of docs/benchmarks/streaming.md, offline:

- `OUT/tfds`: MNIST (the IDX files of $TFP_AE_DATA_DIR) as a TFDS dataset `mnist_local`, written with
  TFDS's own builder API (`tfds.dataset_builders.store_as_tfds_dataset`); read it with
  `--dataset tfds:mnist_local --data-dir OUT/tfds`;
- `OUT/mnist_png`: the same 70,000 digits as PNG files, `train/<label>/NNNNN.png`, `test/<label>/...`;
- `OUT/photos`: 400 crops (48x48 to 160x120, random places) of scikit-learn's two bundled colour
  photographs, for `--image-size 64 --crop center`.

    python benchmarks/prepare_sources.py --out runs/sources
"""
import argparse
from pathlib import Path

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sources")
    args = p.parse_args()
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from tqdm import tqdm

    import tfp_ae  # noqa: F401  (Keras 2)
    from tfp_ae.data import load_dataset
    out = Path(args.out)
    d = load_dataset("mnist")
    splits = {"train": (d.x_train, d.y_train), "test": (d.x_test, d.y_test)}
    if not (out / "tfds" / "mnist_local").exists():
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(28, 28, 1)),
                                               "label": tfds.features.ClassLabel(num_classes=10)})
        data = {s: tf.data.Dataset.from_tensor_slices({"image": np.round(x * 255).astype(np.uint8), "label": y})
                for s, (x, y) in splits.items()}
        tfds.dataset_builders.store_as_tfds_dataset("mnist_local", "1.0.0", features, data, data_dir=str(out / "tfds"),
                                                    disable_shuffling=True)
    if not (out / "mnist_png").exists():
        for s, (x, y) in splits.items():
            for i, (img, label) in enumerate(tqdm(list(zip(x, y)), desc=f"{s} PNGs", mininterval=5)):
                path = out / "mnist_png.tmp" / s / str(label) / f"{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(img[..., 0] * 255).astype(np.uint8)).save(path)
        (out / "mnist_png.tmp").rename(out / "mnist_png")
    if not (out / "photos").exists():
        rng = np.random.default_rng(0)
        (out / "photos.tmp").mkdir(parents=True)
        sizes = [(48, 48), (64, 80), (96, 72), (120, 160)]
        for k, img in enumerate(load_sample_images().images):
            for i in range(200):
                h, w = sizes[i % len(sizes)]
                r, c = rng.integers(0, img.shape[0] - h), rng.integers(0, img.shape[1] - w)
                Image.fromarray(img[r:r + h, c:c + w]).save(out / "photos.tmp" / f"photo{k}_{i:03d}.png")
        (out / "photos.tmp").rename(out / "photos")
    print(f"wrote {out}/tfds, {out}/mnist_png, {out}/photos")


if __name__ == "__main__":
    main()
