"""Build `results.csv` and the tables of `README.md` for the low-rank study from finished run
folders (`metrics.json` of `tfp-ae train`) and the Table 1 baselines (`../table1_mlp/results.csv`,
trained with the same settings: MLP, 20 epochs, batch 128, seed 0, no dequantisation).

    python docs/results/lowrank/table.py RUNS_ROOT      # RUNS_ROOT/{mnist,fashion_mnist,photos32,photos64}/RUN
"""
import csv
import json
import sys
from pathlib import Path

from tfp_ae.heads import DEFAULT_RANK, HEADS

HERE = Path(__file__).parent
BASELINES = [("normal_diag", 1), ("normal_diag", 10), ("normal_full", 1), ("matrix_normal_full", 1)]
COLUMNS = ["dataset", "head", "components", "rank", "min_df", "dequantize", "bits_per_dim", "l2_percent",
           "calibration_error", "seconds_per_epoch", "num_params", "source"]


def run_row(dataset, run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    c = json.loads((run_dir / "config.json").read_text())
    rank = c.get("rank") or (DEFAULT_RANK if "rank" in HEADS[m["head"]].options else "")
    return dict(dataset=dataset, head=m["head"], components=m["components"], rank=rank,
                min_df=c.get("min_df") if c.get("min_df") is not None else "", dequantize=c["dequantize"],
                bits_per_dim=m["bits_per_dim"], l2_percent=m["l2_percent"],
                calibration_error=(m.get("calibration") or {}).get("calibration_error", ""),
                seconds_per_epoch=sum(m["seconds_per_epoch"]) / len(m["seconds_per_epoch"]),
                num_params=m["num_params"], source=f"this study: {run_dir.name}")


def table1_rows():
    rows = list(csv.DictReader((HERE.parent / "table1_mlp" / "results.csv").open()))
    out = []
    for r in rows:
        if r["model"] != "ae" or r["arch"] != "mlp":
            continue
        if (r["head"], int(r["components"])) in BASELINES or int(r["components"]) == 1:
            out.append(dict(dataset=r["dataset"], head=r["head"], components=int(r["components"]), rank="",
                            min_df="", dequantize=False, bits_per_dim=float(r["bits_per_dim"] or "nan"),
                            l2_percent=float(r["l2_percent"]), calibration_error=r.get("calibration_error", ""),
                            seconds_per_epoch=float(r["seconds_per_epoch"]), num_params=int(r["num_params"]),
                            source="Table 1 (../table1_mlp)"))
    return out


def fmt(v, digits=3):
    if v in ("", None):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    try:
        return f"{float(v):.{digits}f}"
    except ValueError:
        return str(v)


def markdown(rows):
    head = "| head | K | rank | min df | dequantised training | bits/dim | L2 % | calibration error | s/epoch | parameters |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['head']} | {r['components']} | {r['rank'] or '-'} | {fmt(r['min_df'], 0)} | "
        f"{'yes' if str(r['dequantize']) == 'True' else 'no'} | {fmt(r['bits_per_dim'])} | {fmt(r['l2_percent'])} | "
        f"{fmt(r['calibration_error'])} | {fmt(r['seconds_per_epoch'], 2)} | {r['num_params']} |\n" for r in rows)


def main(root):
    root = Path(root)
    ours = [run_row(ds.name, run) for ds in sorted(root.iterdir()) if ds.is_dir()
            for run in sorted(ds.iterdir()) if (run / "metrics.json").exists()]
    ours.sort(key=lambda r: (r["dataset"], r["head"], str(r["min_df"]), r["dequantize"], int(r["rank"] or 0)))
    base = table1_rows()
    rows = ours + [r for r in base if (r["head"], r["components"]) in BASELINES]
    with (HERE / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    for ds in ("mnist", "fashion_mnist", "photos32", "photos64"):
        sel = [r for r in rows if r["dataset"] == ds]
        if sel:
            print(f"\n### {ds}\n\n" + markdown(sel))
    for ds in ("mnist", "fashion_mnist"):
        k1 = [r for r in base + ours if r["dataset"] == ds and r["components"] == 1
              and r["bits_per_dim"] == r["bits_per_dim"] and not r["dequantize"] and r["min_df"] == ""]
        best = min(k1, key=lambda r: r["bits_per_dim"])
        full = next(r for r in base if r["dataset"] == ds and r["head"] == "normal_full")
        print(f"\n{ds}: best K=1 bits/dim {best['bits_per_dim']:.3f} ({best['head']} {best['rank']}, {best['source']}); "
              f"normal_full {full['seconds_per_epoch']:.1f} s/epoch (1/10: {full['seconds_per_epoch'] / 10:.1f})")


if __name__ == "__main__":
    main(sys.argv[1])
