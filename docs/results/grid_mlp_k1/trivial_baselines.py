"""Does a trained cell reconstruct its input at all? (analysis, not a test)

For each finished run folder, on the first 1000 test images (the grid's L2 images), prints the
L2 % (mean squared error x 100, pixels in [0, 1]) of:
- the cell's point estimates (the grid's number);
- the average of those point estimates, the same image for every input (if this is about as good,
  the decoder's mean ignores the input);
- two constant predictions that need no model: an all-black image and the mean training image.

    python docs/results/grid_mlp_k1/trivial_baselines.py runs/grid_full/mnist/mlp/ae_normal_full_k1
"""
import argparse
import json

import numpy as np

from tfp_ae.data import load_dataset
from tfp_ae.evaluate import l2_percent
from tfp_ae.predict import point_estimates
from tfp_ae.train import load_model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dirs", nargs="+", help="finished run folders (e.g. grid cells)")
    p.add_argument("--images", type=int, default=1000)
    args = p.parse_args()
    rows = []
    for run_dir in args.run_dirs:
        model, config = load_model(run_dir)
        data = load_dataset(config.dataset, config.data_dir)
        x = data.x_test[:args.images]
        point = np.asarray(point_estimates(model, x))
        rows.append(dict(cell=f"{config.dataset}/{config.head}", l2=l2_percent(x, point),
                         l2_average_point=l2_percent(x, point.mean(0, keepdims=True)),
                         l2_black=l2_percent(x, 0.0), l2_train_mean=l2_percent(x, data.x_train.mean(0)),
                         mean_pixel_point=float(point.mean()), mean_pixel_data=float(x.mean())))
        print(json.dumps(rows[-1]), flush=True)
    print("| cell | L2 % | L2 % of the average point estimate | all black | mean training image "
          "| mean pixel: point / data |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cell']} | {r['l2']:.3f} | {r['l2_average_point']:.3f} | {r['l2_black']:.3f} "
              f"| {r['l2_train_mean']:.3f} | {r['mean_pixel_point']:.3f} / {r['mean_pixel_data']:.3f} |")


if __name__ == "__main__":
    main()
