"""How far the point estimates of runs miss the black pixels of Fashion-MNIST (about half of its pixels):
the median |mean - 0| over the pixels that are 0 in the first 1000 test images, unclipped means, for the
Fashion-MNIST runs of benchmarks/uncertainty.py in RUNS (a linear location by squared error: `mse nll`; a
sigmoid location by squared error: `mse nll_sigmoid` and `normal_diag faithful_sigmoid`; NLL training:
`normal_diag nll`), beside the spread of a dequantised level, 1 / (256 sqrt(12)). Writes black_pixels.csv.

    python docs/results/conformal/black_pixels.py --runs runs/conformal
"""
import argparse
import csv
import math
from pathlib import Path

import numpy as np

from tfp_ae.data import load_dataset
from tfp_ae.train import load_model

RUNS = [("mse", "nll"), ("mse", "nll_sigmoid"), ("normal_diag", "faithful_sigmoid"), ("normal_diag", "nll")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/conformal")
    a = p.parse_args()
    x = load_dataset("fashion_mnist").x_test[:1000]
    black = x == 0
    level_spread = 1 / (256 * math.sqrt(12))
    rows = []
    for head, loss in RUNS:
        model, _ = load_model(Path(a.runs) / f"fashion_mnist_{head}_{loss}")
        mean = model.head.mean(model(x)).numpy()
        err = float(np.median(np.abs(mean[black])))
        rows.append(dict(head=head, loss=loss, black_fraction=round(float(black.mean()), 4),
                         median_abs_error=round(err, 5), times_level_spread=round(err / level_spread, 1)))
        print(rows[-1])
    with open(Path(__file__).with_name("black_pixels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
