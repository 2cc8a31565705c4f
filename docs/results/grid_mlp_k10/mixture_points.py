"""Where does a K = 10 mixture's L2 come from? (analysis, not a test)

For each finished mixture run folder, on the first 1000 test images (the grid's L2 images),
prints the L2 % (mean squared error x 100, pixels in [0, 1]) of:
- `point`: the cell's point estimate (the grid's number: the mixture mean for normal heads; for
  t heads the mode of the component with the highest mixture density at its mode);
- `average`: the average of those point estimates, one image for every input (about as good:
  the point estimate ignores the input);
- `top weight`: the point of the component with the largest mixture weight;
- `weighted`: the mixture-weight average of the component points;
- `oracle`: the component point closest to the input (looks at the answer: a lower bound for any
  rule that picks one component);
and the mixture weights' mean largest value, and for t heads the learned df (median, 5 / 95 %).

    python docs/results/grid_mlp_k10/mixture_points.py runs/grid_mlp_k10/mnist/mlp/ae_student_t_identity_k10
"""
import argparse

import numpy as np

from tfp_ae._tf import tf
from tfp_ae.data import load_dataset
from tfp_ae.evaluate import l2_percent
from tfp_ae.predict import component_points, point_estimates
from tfp_ae.train import load_model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dirs", nargs="+", help="finished mixture run folders (grid cells with K > 1)")
    p.add_argument("--images", type=int, default=1000)
    args = p.parse_args()
    print("| run | point | average | top weight | weighted | oracle | mean max weight | df median (5 %, 95 %) |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        model, config = load_model(run_dir)
        x = load_dataset(config.dataset, config.data_dir).x_test[:args.images]
        point = point_estimates(model, x)
        points, _ = component_points(model, x)                             # [N, K, H, W, C]
        weights, dfs = [], []
        for i in range(0, len(x), 200):
            _, logits, comp = model.head._parts(model(x[i:i + 200], training=False))
            weights.append(tf.nn.softmax(logits).numpy())                   # [b, K]
            if hasattr(comp, "df"):
                dfs.append(np.ravel(tf.convert_to_tensor(comp.df).numpy()))
        w = np.concatenate(weights)
        n = np.arange(len(x))
        per_comp = np.mean(np.square(points - x[:, None]), axis=(2, 3, 4)) * 100
        weighted = np.einsum("nk,nkhwc->nhwc", w, points)
        df = np.concatenate(dfs) if dfs else None
        df_text = "-" if df is None else f"{np.median(df):.3g} ({np.quantile(df, 0.05):.3g}, {np.quantile(df, 0.95):.3g})"
        print(f"| {run_dir} | {l2_percent(x, point):.3f} | {l2_percent(x, point.mean(0)):.3f} | "
              f"{per_comp[n, w.argmax(1)].mean():.3f} | {l2_percent(x, weighted):.3f} | {per_comp.min(1).mean():.3f} | "
              f"{w.max(1).mean():.3f} | {df_text} |", flush=True)


if __name__ == "__main__":
    main()
