"""The README's figures from real runs: `python docs/make_figures.py [--epochs 5] [--train-limit N]`.

Trains (or resumes, or reuses: run folders under `runs/docs/`) MLP autoencoders on Fashion-MNIST
with the heads below through `tfp_ae.train.run`, then writes `docs/figures/uncertainty.png`
(inputs, point estimates and 90 % interval-width maps on one colour scale, `heads_figure`) and
`docs/figures/components.png` (the K = 10 mixture's components sorted by log-density,
`components_figure`).
"""
import argparse
from pathlib import Path

from tfp_ae import figures, plots
from tfp_ae.config import RunConfig
from tfp_ae.data import load_dataset
from tfp_ae.rundir import METRICS_FILE
from tfp_ae.train import load_model, run

# (head, K, RunConfig options). The Student-t head with the paper's df (min_df 0) learns df < 1 on most pixels:
# every 90 % interval then spans the whole pixel range, a solid row that tells nothing; with min_df 3 its
# variance exists and its intervals are finite.
HEADS = [("normal_diag", 1, {}), ("student_t_diag", 1, dict(min_df=3.0)), ("matrix_normal_diag", 1, {}),
         ("normal_diag", 10, {})]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default="runs/docs")
    p.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for i, (head, k, options) in enumerate(HEADS):
        run_dir = Path(args.runs) / (f"fashion_mnist_{head}_k{k}" + "".join(f"_{o}{v:g}" for o, v in options.items()))
        print(f"[{i + 1}/{len(HEADS)}] {head} K={k}: {run_dir}", flush=True)
        if not (run_dir / METRICS_FILE).exists():
            run(RunConfig(dataset="fashion_mnist", head=head, components=k, epochs=args.epochs, **options,
                          train_limit=args.train_limit, data_dir=args.data_dir, out=str(run_dir), fid=False,
                          extra_figures=False, tsne_images=0))
        models.append(load_model(run_dir)[0])
    x = load_dataset("fashion_mnist", args.data_dir).x_test[:8]
    plots.save(figures.heads_figure(models, x, f"Fashion-MNIST, MLP, {args.epochs} epochs: point estimates and "
                                    "90 % interval widths (one colour scale)"), out / "uncertainty.png")
    plots.save(figures.components_figure(models[-1], x[:4]), out / "components.png")
    print(f"wrote {out / 'uncertainty.png'} and {out / 'components.png'}")


if __name__ == "__main__":
    main()
