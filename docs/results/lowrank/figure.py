"""Figures of several trained runs side by side, for the same test inputs:

- `--kind samples`: samples of p(x | input). Per-pixel heads (`normal_diag`) draw independent
  noise on every pixel; a low-rank covariance draws correlated structure (strokes, edges, whole
  regions brighter or darker).
- `--kind maps`: point estimates and 90 % interval maps on one colour scale
  (`tfp_ae.figures.heads_figure`), e.g. a Student-t head with and without `--min-df`.

    python docs/results/lowrank/figure.py RUN_A RUN_B ... --out samples.png [--kind samples --inputs 6 --samples 3]
"""
import argparse

from tfp_ae import plots
from tfp_ae.data import load_dataset, prepare_images
from tfp_ae.figures import heads_figure, output_samples
from tfp_ae.train import load_model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of `tfp-ae train` on the same dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--inputs", type=int, default=6, help="test images (the first N)")
    p.add_argument("--samples", type=int, default=3, help="samples per run and input")
    p.add_argument("--kind", choices=["samples", "maps"], default="samples")
    a = p.parse_args()
    models = [load_model(r) for r in a.runs]
    cfg = models[0][1]
    data = load_dataset(cfg.dataset, cfg.data_dir)
    x = prepare_images(data.x_test[:a.inputs], cfg.rescale, "test images")
    if a.kind == "maps":
        plots.save(heads_figure([m for m, _ in models], x, f"90 % interval maps, {cfg.dataset} test images"), a.out)
        print(f"wrote {a.out}")
        return
    rows = [("input", x, None)]
    for model, c in models:
        name = c.head + (f" r={c.rank}" if c.rank else "")
        rows.append((f"{name}\npoint", model.point_estimate(x).numpy(), None))
        for s, draw in enumerate(output_samples(model, x, a.samples)):
            rows.append((f"{name}\nsample {s + 1}", draw, None))
    fig = plots.image_rows(rows, f"samples of p(x | input), {cfg.dataset} test images (clipped to [0, 1])")
    plots.save(fig, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
