"""A λ per pixel group (K-RCPS, `--risk-groups K`, Teneggi et al., ICML 2023) and a λ per stratum of images
by interval width (`--risk-strata S`) against RCPS's one λ, measured on the runs of this folder: each run
of RUNS is loaded and its conformal scale refitted on the same held-out images its `--risk 0.1` used
(training images 57,000-59,999, raw inputs): one λ, K = 4 and 16 pixel groups, S = 4 strata; then
reported on the first 1,000 test images (`tfp_ae.calibration.conformal_report`: risk, mean width, width
over the single-λ oracle's, the risk of the narrowest and widest quartiles of images by interval width,
100 random splits). Writes groups_and_strata.csv.

    python benchmarks/uncertainty.py --runs runs/conformal --heads normal_diag student_t_diag \
        --losses nll faithful_sigmoid --out /tmp/table     # the runs (20 epochs each)
    python docs/results/conformal/groups_and_strata.py --runs runs/conformal
"""
import argparse
import csv
from pathlib import Path

from tfp_ae.calibration import conformal_report, fit_conformal
from tfp_ae.data import load_dataset
from tfp_ae.train import load_model

RUNS = [("normal_diag", "nll"), ("normal_diag", "faithful_sigmoid"), ("student_t_diag", "faithful_sigmoid")]
METHODS = {"rcps": dict(), "krcps_4": dict(groups=4), "krcps_16": dict(groups=16), "strata_4": dict(strata=4)}
ALPHA = DELTA = 0.1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/conformal")
    a = p.parse_args()
    rows = []
    for dataset in ("mnist", "fashion_mnist"):
        data = load_dataset(dataset)
        held, test = data.x_train[57000:60000], data.x_test[:1000]
        for head, loss in RUNS:
            model, cfg = load_model(Path(a.runs) / f"{dataset}_{head}_{loss}")
            for method, kw in METHODS.items():
                fitted = fit_conformal(model, held, ALPHA, DELTA, seed=cfg.seed, **kw)
                r = conformal_report(model, test, ALPHA, DELTA, seed=cfg.seed, **kw)
                per = fitted.get("group_lambdas") or fitted.get("strata_lambdas") or [fitted["lambda"]]
                rows.append(dict(dataset=dataset, head=head, loss=loss, method=method, groups=fitted["groups"],
                                 lambdas=" ".join(f"{v:.3f}" for v in per),
                                 risk=round(r["risk"], 4), mean_width=round(r["mean_width"], 4),
                                 width_over_oracle=round(r["width_over_oracle"], 3),
                                 narrowest_quartile_risk=round(r["risk_by_width"][0]["risk"], 4),
                                 widest_quartile_risk=round(r["risk_by_width"][-1]["risk"], 4),
                                 splits_over_alpha=r["splits_over_alpha"]))
                print(rows[-1], flush=True)
    with open(Path(__file__).with_name("groups_and_strata.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
