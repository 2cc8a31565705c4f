"""How much does the paper's L2 depend on *which* 1000 test images? (analysis, not a test)

Trains (or reads) one grid cell per argument with the grid's settings and prints its L2 % on the
first 1000 test images (the grid's number) and on each of the 10 disjoint blocks of 1000 test
images: mean, standard deviation and range over the blocks.

    python docs/results/grid_mlp_k1/l2_subsets.py mnist/normal_diag mnist/student_t_identity \
        fashion_mnist/matrix_t_full --out runs/l2_subsets
"""
import argparse
import json
from pathlib import Path

import numpy as np

from tfp_ae.config import RunConfig
from tfp_ae.data import load_dataset
from tfp_ae.evaluate import l2_percent
from tfp_ae.predict import point_estimates
from tfp_ae.rundir import METRICS_FILE
from tfp_ae.train import load_model, run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cells", nargs="+", help="DATASET/HEAD (K = 1, mlp, 20 epochs, seed 0)")
    p.add_argument("--out", default="runs/l2_subsets")
    args = p.parse_args()
    rows = []
    for spec in args.cells:
        dataset, head = spec.split("/")
        out = Path(args.out) / f"{dataset}_{head}"
        if not (out / METRICS_FILE).exists():
            run(RunConfig(dataset=dataset, head=head, out=str(out), fid=False, tsne_images=0, extra_figures=False,
                          verbose=0))
        model, _ = load_model(out)
        x = load_dataset(dataset).x_test
        point = np.asarray(point_estimates(model, x))
        blocks = np.array([l2_percent(xb, pb) for xb, pb in zip(np.split(x, 10), np.split(point, 10))])
        rows.append(dict(cell=spec, first_1000=float(blocks[0]), mean=float(blocks.mean()),
                         std=float(blocks.std(ddof=1)), min=float(blocks.min()), max=float(blocks.max())))
        print(json.dumps(rows[-1]), flush=True)
    print("| cell | first 1000 (grid) | mean of 10 blocks | std | min | max |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['first_1000']:.3f} | {r['mean']:.3f} | {r['std']:.3f} | {r['min']:.3f} | {r['max']:.3f} |")


if __name__ == "__main__":
    main()
