"""Does the choice of the 1000 test images explain a gap to the paper's L2? (analysis, not a test)

The grid's L2 % (`tfp_ae.evaluate.l2_percent`: mean squared error x 100, pixels in [0, 1]) is
measured on the first 1000 test images; the paper does not say which 1000 it used. For each
finished run folder this prints the L2 % of the cell's point estimates on the whole test split,
on each of its ten disjoint blocks of 1000 images (0-999, 1000-1999, ...), and the standard
deviation of the L2 over 200 random 1000-image subsets (the sampling error of a random choice).

    python docs/results/l2_subsets.py runs/k10_seeds/mnist_normal_diag_k10_seed3
"""
import argparse

import numpy as np

from tfp_ae.data import load_dataset
from tfp_ae.predict import point_estimates
from tfp_ae.train import load_model

BLOCK = 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dirs", nargs="+", help="finished run folders")
    args = p.parse_args()
    print("| run | first 1000 (the grid's) | whole test split | ten blocks of 1000 | min / max block | s.d. of a random 1000 |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for run_dir in args.run_dirs:
        model, config = load_model(run_dir)
        x = load_dataset(config.dataset, config.data_dir).x_test
        per_image = np.mean(np.square(x - point_estimates(model, x)), axis=(1, 2, 3)) * 100   # [N]
        blocks = per_image[:len(x) // BLOCK * BLOCK].reshape(-1, BLOCK).mean(1)
        random = [per_image[rng.choice(len(x), BLOCK, replace=False)].mean() for _ in range(200)]
        print(f"| {run_dir} | {blocks[0]:.3f} | {per_image.mean():.3f} | {', '.join(f'{b:.3f}' for b in blocks)} | "
              f"{blocks.min():.3f} / {blocks.max():.3f} | {np.std(random):.3f} |", flush=True)


if __name__ == "__main__":
    main()
