"""Where a texture run's test bits/dim comes from: per-image bits/dim (dequantised, seeded) of a trained run on
its first 200 training crops, its good test crops and each kind of defective test crop, and the
standardised residuals z = (x - mean) / std on the first two. The run's metrics.json averages over the
whole test/ folder, three quarters of it defective.

    python docs/results/real_images/density_by_split.py RUN DATA_FOLDER OUT.csv
    # e.g. runs/real_images36/grass_conv_faithful runs/real_images36/data/grass grass_..._density.csv
"""
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tfp_ae.train import load_model


def load(paths):
    return np.stack([np.asarray(Image.open(p), np.float32)[..., None] / 255.0 for p in paths])


def main():
    run, folder, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    model, _ = load_model(run)
    rng = np.random.default_rng(0)
    sets = {"train (first 200 crops)": sorted((folder / "train" / "good").glob("*.png"))[:200]}
    sets.update({f"test {p.name}": sorted(p.glob("*.png")) for p in sorted((folder / "test").iterdir())})
    rows = []
    for name, paths in sets.items():
        x = load(paths)
        xd = x + rng.uniform(0, 1 / 256, x.shape).astype(np.float32)
        lp, z = [], []
        for i in range(0, len(x), 25):
            dist = model(x[i:i + 25])
            lp.append(dist.log_prob(xd[i:i + 25]).numpy())
            z.append(((xd[i:i + 25] - dist.mean().numpy()) / dist.stddev().numpy()).ravel())
        bpd = -(np.concatenate(lp) / np.prod(x.shape[1:]) - np.log(256)) / np.log(2)
        z = np.concatenate(z)
        rows.append(dict(images=name, count=len(x), bits_per_dim_mean=round(float(bpd.mean()), 3),
                         bits_per_dim_median=round(float(np.median(bpd)), 3), z2_mean=round(float(np.mean(z ** 2)), 3)))
        print(rows[-1], flush=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
