"""Local recalibration (`tfp_ae.calibration.fit_local_scales`) measured on the runs of this folder: each
per-pixel-scale run of RUNS is loaded (its σ-scale as the run left it), the local factors are fitted on the
σ-scaling half of its held-out images (training images 54,000-56,999, raw inputs, dequantised targets, as
`--recalibrate` does), and the test calibration (first 200 test images: over all pixels and within the
quartiles of the predicted std) and the test bits/dim are compared before and after, with the held-out
bits/dim and whether the guard (at most 0.1 bits/dim worse on the held-out images) would apply it.
Writes local.csv.

    python docs/results/conformal/local_recalibration.py --runs runs/conformal
"""
import argparse
import csv
from pathlib import Path

from tfp_ae.calibration import HELD_OUT_SEED, MAX_BITS_PER_DIM_LOSS, calibration, fit_local_scales
from tfp_ae.data import array_split, load_dataset
from tfp_ae.models import build_model
from tfp_ae.predict import bits_per_dim_summary, dequantized_batches, split_log_probs
from tfp_ae.train import load_model

HEADS = ["normal_diag", "student_t_diag", "logistic"]
LOSSES = ["nll", "faithful_sigmoid"]


def bits(model, split, seed):
    s = split_log_probs(model, split, 256, seed, elbo=False, raw=False)["log_prob_dequantized"]
    return bits_per_dim_summary(s, 784, 256)["bits_per_dim"]


def with_local_scales(model, cfg):
    """The run's model rebuilt with local recalibration's weights (`local_scales=True`; the runs were
    trained without them), its trained weights and σ-scale copied."""
    local = build_model(**dict(model.build_args, local_scales=True))
    local.encoder.set_weights(model.encoder.get_weights())
    local.decoder.set_weights(model.decoder.get_weights())
    local.head.sigma_scale.assign(model.head.sigma_scale)
    return local, cfg


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/conformal")
    a = p.parse_args()
    rows = []
    for dataset in ("mnist", "fashion_mnist"):
        data = load_dataset(dataset)
        held, test = array_split(data.x_train[54000:57000], 256), array_split(data.x_test, 256)
        for head in HEADS:
            for loss in LOSSES:
                model, cfg = with_local_scales(*load_model(Path(a.runs) / f"{dataset}_{head}_{loss}"))
                cal0 = calibration(model, data.x_test[:200], num_levels=256)
                test0, held0 = bits(model, test, 0), bits(model, held, cfg.seed + HELD_OUT_SEED)
                pairs = dequantized_batches(held, 256, cfg.seed + HELD_OUT_SEED, 100, with_raw=True)
                fit_local_scales(model, pairs)
                cal1 = calibration(model, data.x_test[:200], num_levels=256)
                test1, held1 = bits(model, test, 0), bits(model, held, cfg.seed + HELD_OUT_SEED)
                rows.append(dict(dataset=dataset, head=head, loss=loss,
                                 calibration_error_before=round(cal0["calibration_error"], 4),
                                 calibration_error_after=round(cal1["calibration_error"], 4),
                                 by_std_before=" ".join(f"{v:.3f}" for v in cal0["by_std"]["calibration_error"]),
                                 by_std_after=" ".join(f"{v:.3f}" for v in cal1["by_std"]["calibration_error"]),
                                 worst_quartile_before=round(max(cal0["by_std"]["calibration_error"]), 4),
                                 worst_quartile_after=round(max(cal1["by_std"]["calibration_error"]), 4),
                                 test_bits_per_dim_before=round(test0, 4), test_bits_per_dim_after=round(test1, 4),
                                 held_out_bits_per_dim_before=round(held0, 4), held_out_bits_per_dim_after=round(held1, 4),
                                 guard_applies=bool(held1 - held0 <= MAX_BITS_PER_DIM_LOSS)))
                print(rows[-1], flush=True)
    with open(Path(__file__).with_name("local.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
