"""The `--min-df` table of README.md in this folder, from three run folders of
`tfp-ae train --dataset fashion_mnist --head student_t_diag --epochs 20 --no-fid [--min-df M]`:
the learned df over the first 1000 test images (5th / 50th / 95th percentile), the fraction of
pixels whose variance exists (df > 2), and the runs' bits/dim, L2 % and PIT calibration.

    python docs/results/lowrank/min_df_table.py RUN_NONE RUN_2 RUN_3
"""
import argparse
import json
from pathlib import Path

import numpy as np

from tfp_ae.data import load_dataset
from tfp_ae.train import load_model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    print("| `--min-df` | learned df (5th / 50th / 95th percentile) | variance exists | bits/dim | L2 % "
          "| coverage of the 50 % / 90 % intervals | calibration error |")
    print("|---|---|---|---|---|---|---|")
    for run in a.runs:
        model, cfg = load_model(run)
        m = json.loads((Path(run) / "metrics.json").read_text())
        x = load_dataset(cfg.dataset, cfg.data_dir).x_test[:1000]
        df = np.concatenate([np.ravel(model(x[i:i + 250]).tensor_distribution.distribution.df) for i in range(0, 1000, 250)])
        q = np.percentile(df, [5, 50, 95])
        cover = dict(zip(m["calibration"]["levels"], m["calibration"]["coverage"]))
        print(f"| {cfg.min_df if cfg.min_df is not None else 'none (0, the paper’s)'} | "
              f"{q[0]:.4f} / {q[1]:.4f} / {q[2]:.4f} | on {np.mean(df > 2):.0%} of images | {m['bits_per_dim']:.3f} "
              f"| {m['l2_percent']:.3f} | {cover[0.5]:.3f} / {cover[0.9]:.3f} | {m['calibration']['calibration_error']:.3f} |")


if __name__ == "__main__":
    main()
