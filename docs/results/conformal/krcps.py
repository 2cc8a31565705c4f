"""K-RCPS (`--risk-groups K`, Teneggi et al., ICML 2023) against RCPS's one λ, measured on the runs of this
folder: each run of RUNS is loaded and its conformal scale refitted on the same held-out images its
`--risk 0.1` used (training images 57,000-59,999, raw inputs) with K = 1 (RCPS), 4 and 16 pixel groups,
then reported on the first 1,000 test images (`tfp_ae.calibration.conformal_report`: risk, mean width,
width over the single-λ oracle's, the risk of the narrowest quartile of images, 100 random splits).
Writes krcps.csv.

    python benchmarks/uncertainty.py --runs runs/conformal --heads normal_diag student_t_diag \
        --losses nll faithful_sigmoid --out /tmp/table     # the runs (20 epochs each)
    python docs/results/conformal/krcps.py --runs runs/conformal
"""
import argparse
import csv
from pathlib import Path

from tfp_ae.calibration import conformal_report, fit_conformal
from tfp_ae.data import load_dataset
from tfp_ae.train import load_model

RUNS = [("normal_diag", "nll"), ("normal_diag", "faithful_sigmoid"), ("student_t_diag", "faithful_sigmoid")]
GROUPS = (1, 4, 16)
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
            for k in GROUPS:
                fitted = fit_conformal(model, held, ALPHA, DELTA, k, cfg.seed)
                r = conformal_report(model, test, ALPHA, DELTA, k, seed=cfg.seed)
                rows.append(dict(dataset=dataset, head=head, loss=loss, groups_asked=k, groups=fitted["groups"],
                                 group_lambdas=" ".join(f"{v:.3f}" for v in fitted.get("group_lambdas", [fitted["lambda"]])),
                                 risk=round(r["risk"], 4), mean_width=round(r["mean_width"], 4),
                                 width_over_oracle=round(r["width_over_oracle"], 3),
                                 narrowest_quartile_risk=round(r["risk_by_width"][0]["risk"], 4),
                                 widest_quartile_risk=round(r["risk_by_width"][-1]["risk"], 4),
                                 splits_over_alpha=r["splits_over_alpha"]))
                print(rows[-1], flush=True)
    with open(Path(__file__).with_name("krcps.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
