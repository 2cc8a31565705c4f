"""The VAE tutorial's 2D study (Section 6): toy densities with known entropy, a 2-latent VAE and
IWAE trained on them, and how far -ELBO and the importance-sampled NLL are from the entropy.

Datasets (the generators of FFJORD's toy data, Grathwohl et al. 2019, with their scales):

- `8gaussians`: equal mixture of 8 isotropic normals with centres 4/sqrt(2) (cos a, sin a),
  a = 0, 45, ..., 315 degrees, and standard deviation 0.5/sqrt(2);
- `checkerboard`: uniform on 8 squares of side 2 in [-4, 4]^2 (a checkerboard);
- `2spirals`: two interleaved spirals, x = +-(s(n) + u)/3 + e, s(n) = n (-cos n, sin n),
  n = 3 pi sqrt(t), t ~ U(0, 1), u ~ U[0, 0.5]^2, e ~ N(0, 0.1^2 I).

For a model p fitted to data with density p*, E[-log p(x)] = H(p*) + KL(p* || p) >= H, and
-ELBO >= -log p(x): the gaps -ELBO - H and NLL - H (nats) measure the model and the bound, and do
not change when a dataset is rescaled (both sides shift by the log of the Jacobian). Our datasets
keep FFJORD's scales, the tutorial used others, so compare the gaps, not the raw numbers.

Points are fed to the package's heads as 1 x 2 single-channel "images" (event shape (1, 2, 1)).
"""
import json
import math
from pathlib import Path

import numpy as np
from scipy.integrate import trapezoid
from scipy.special import logsumexp, ndtr

from tfp_ae import plots
from tfp_ae._tf import tfk
from tfp_ae.errors import InputError
from tfp_ae.models import compile_model
from tfp_ae.rundir import write_json
from tfp_ae.vae import build_vae

TOY_DATASETS = ("8gaussians", "checkerboard", "2spirals")
SPIRAL_NODES = 1000   # quadrature nodes in t for the 2spirals density
_SIGMA_8G = 0.5 / math.sqrt(2)
_CENTRES_8G = 4 / math.sqrt(2) * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)

# The tutorial's Tables 1a and 2 (bits, not nats: ../shared/paper/vae_tutorial_2d.csv; its own dataset
# scales): H, VAE -ELBO, VAE NLL, IWAE NLL
TUTORIAL = {"8gaussians": (-1.92, -1.81, -1.86, -1.91), "checkerboard": (-1.0, -0.73, -0.81, -0.88),
            "2spirals": (-2.34, -1.98, -2.15, -2.30)}


def _check(name):
    if name not in TOY_DATASETS:
        raise InputError(f"unknown toy dataset {name!r}; valid: {', '.join(TOY_DATASETS)}")


def sample_toy(name, num_points, seed=0):
    """`num_points` points `[N, 2]` float32 of a toy dataset, reproducible from `seed`.

    Raises:
      ValueError: unknown name.
    """
    _check(name)
    rng = np.random.default_rng(seed)
    n = num_points
    if name == "8gaussians":
        x = _CENTRES_8G[rng.integers(0, 8, n)] + _SIGMA_8G * rng.standard_normal((n, 2))
    elif name == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
        x = 2 * np.stack([x1, x2], 1)
    else:
        t = 3 * np.pi * np.sqrt(rng.uniform(0, 1, n))
        s = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) + rng.uniform(0, 0.5, (n, 2))
        x = np.where(rng.integers(0, 2, (n, 1)) == 1, s, -s) / 3 + 0.1 * rng.standard_normal((n, 2))
    return x.astype(np.float32)


def toy_log_prob(name, x):
    """The exact log-density `[N]` (nats) of a toy dataset at points `x` `[N, 2]`.

    8gaussians: the mixture density; checkerboard: -log 32 on the squares, -inf elsewhere;
    2spirals: the spiral noise model integrated over the arc position with `SPIRAL_NODES`-point
    midpoint quadrature in t (per axis, uniform (+) normal noise is a difference of normal CDFs).
    """
    _check(name)
    x = np.asarray(x, np.float64)
    if name == "8gaussians":
        d2 = np.sum((x[:, None, :] - _CENTRES_8G[None]) ** 2, -1)
        return logsumexp(-0.5 * d2 / _SIGMA_8G ** 2, axis=1) - np.log(8 * 2 * np.pi * _SIGMA_8G ** 2)
    if name == "checkerboard":
        y = x / 2
        inside = (np.abs(y[:, 0]) <= 2) & (np.abs(y[:, 1]) <= 2) & ((np.floor(y[:, 0]) + np.floor(y[:, 1])) % 2 == 0)
        return np.where(inside, -np.log(32.0), -np.inf)
    t = 3 * np.pi * np.sqrt((np.arange(SPIRAL_NODES) + 0.5) / SPIRAL_NODES)
    a = np.stack([-np.cos(t) * t, np.sin(t) * t], 1) / 3  # [M, 2] arc points; the box is [a, a + 1/6]
    out = np.empty(len(x))
    for i in range(0, len(x), 2000):
        xb = x[i:i + 2000, None, :]  # [b, 1, 2]
        plus = 6 * (ndtr((xb - a) / 0.1) - ndtr((xb - a - 1 / 6) / 0.1))    # +spiral, per axis
        minus = 6 * (ndtr((xb + a + 1 / 6) / 0.1) - ndtr((xb + a) / 0.1))   # -spiral
        dens = 0.5 * (np.prod(plus, -1) + np.prod(minus, -1)).mean(1)
        out[i:i + 2000] = np.log(np.maximum(dens, 1e-300))
    return out


def toy_entropy(name, num_samples=50_000, seed=12345):
    """Differential entropy H = -E[log p(x)] of a toy dataset, nats.

    Returns:
      dict(H, stderr, method): checkerboard exactly log 32; 8gaussians by trapezoid integration of
      -p log p on a 0.01 grid over [-5, 5]^2 (error < 1e-4); 2spirals by Monte Carlo over
      `num_samples` points with the quadrature density (`stderr` its standard error).
    """
    _check(name)
    if name == "checkerboard":
        return dict(H=math.log(32), stderr=0.0, method="exact: log(area 32)")
    if name == "8gaussians":
        g = np.arange(-5, 5.0001, 0.01)
        xx, yy = np.meshgrid(g, g)
        lp = toy_log_prob(name, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(xx.shape)
        h = -trapezoid(trapezoid(np.exp(lp) * lp, g, axis=1), g)
        return dict(H=float(h), stderr=0.0, method="grid integration")
    lp = toy_log_prob(name, sample_toy(name, num_samples, seed))
    return dict(H=float(-lp.mean()), stderr=float(lp.std() / math.sqrt(num_samples)), method="Monte Carlo")


# ---- the study -------------------------------------------------------------------------------
def _as_images(x):
    return np.asarray(x, np.float32).reshape(-1, 1, 2, 1)


def toy_vae(objective="elbo", iw_samples=10, seed=0, hidden=(128, 128)):
    """A compiled VAE with a 2-d latent and a `normal_diag` decoder, ReLU MLPs `hidden` both ways."""
    tfk.utils.set_random_seed(seed)
    return compile_model(build_vae("normal_diag", (1, 2, 1), latent_dim=2, objective=objective,
                                 iw_samples=iw_samples, hidden=hidden))


def train_toy_vae(x_train, objective="elbo", iw_samples=10, steps=30000, batch_size=200, seed=0, verbose=2):
    """`toy_vae` trained for about `steps` Adam steps on `x_train` `[N, 2]` with `model.fit`
    (`verbose`: Keras' progress output, one line per epoch by default)."""
    vae = toy_vae(objective, iw_samples, seed)
    x = _as_images(x_train)
    epochs = max(1, round(steps * batch_size / len(x)))
    vae.fit(x, x, batch_size=batch_size, epochs=epochs, verbose=verbose, shuffle=True)
    return vae


def toy_scores(vae, x, num_samples=250, batch_size=1000):
    """(-ELBO, -IWAE_k training bound, importance-sampled NLL) averaged over points `x` `[N, 2]`, nats."""
    xs = _as_images(x)
    elbo, bound, nll = [], [], []
    for i in range(0, len(xs), batch_size):
        b = xs[i:i + batch_size]
        elbo.append(vae.elbo(b)[0].numpy())
        bound.append(vae.iwae_bound(b, vae.iw_samples).numpy() if vae.objective_name == "iwae" else elbo[-1])
        nll.append(vae.importance_nll(b, num_samples).numpy())
    return -float(np.concatenate(elbo).mean()), -float(np.concatenate(bound).mean()), float(np.concatenate(nll).mean())


def model_log_density(vae, points, num_samples=250, batch_size=1000):
    """log p(x) `[N]` of a toy VAE at points `[N, 2]` by importance sampling."""
    xs = _as_images(points)
    return -np.concatenate([vae.importance_nll(xs[i:i + batch_size], num_samples).numpy()
                            for i in range(0, len(xs), batch_size)])


def run_study(out, steps=30000, datasets=TOY_DATASETS, num_train=100_000, num_test=10_000, seed=0, log=print):
    """Train a VAE and an IWAE (k=10) per dataset; write `results.json` and the weights of each
    finished cell (so an interrupted study resumes without retraining them), `table.md` and
    `toy2d.png`.

    Returns:
      the rows of the table (dicts).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    models = {}
    for name in datasets:
        x_train, x_test = sample_toy(name, num_train, seed), sample_toy(name, num_test, seed + 1)
        for objective in ("elbo", "iwae"):
            key = f"{name}/{objective}"
            weights = out / f"{name}_{objective}.weights.h5"
            if key in results and weights.exists():
                vae = toy_vae(objective, seed=seed)
                vae.load_weights(str(weights))
            else:
                vae = train_toy_vae(x_train, objective, steps=steps, seed=seed)
                vae.save_weights(str(weights))
                results.pop(key, None)
            models[key] = vae
            if key not in results:
                neg_elbo, neg_bound, nll = toy_scores(vae, x_test)
                results[key] = dict(neg_elbo=neg_elbo, neg_bound=neg_bound, nll=nll, steps=steps)
                write_json(results, path)
            log(f"{key}: {results[key]}")
    rows = study_table(results, datasets)
    (out / "table.md").write_text(markdown_table(rows))
    plots.save(study_figure(models, datasets, seed), out / "toy2d.png")
    return rows


def study_table(results, datasets=TOY_DATASETS):
    rows = []
    for name in datasets:
        h = toy_entropy(name)
        v, w = results[f"{name}/elbo"], results[f"{name}/iwae"]
        t = TUTORIAL[name]
        rows.append(dict(dataset=name, H=h["H"], H_stderr=h["stderr"], vae_neg_elbo=v["neg_elbo"], vae_nll=v["nll"],
                         iwae_loss=w["neg_bound"], iwae_nll=w["nll"],
                         tutorial_H=t[0], tutorial_vae_neg_elbo=t[1], tutorial_vae_nll=t[2], tutorial_iwae_nll=t[3]))
    return rows


def markdown_table(rows):
    """The study as Markdown: ours in nats (H, -ELBO, NLL at our data scales), our gaps to H in
    bits (gap in nats / ln 2; gaps do not depend on the data's scale), and the tutorial's numbers
    and gaps, which it reports in bits."""
    lines = ["| dataset | H (nats) | VAE -ELBO (nats) | VAE NLL (nats) | IWAE(k=10) loss (nats) | IWAE NLL (nats) "
             "| our gaps to H, bits: -ELBO, NLL, IWAE NLL | tutorial H, -ELBO, NLL, IWAE NLL (bits) "
             "| tutorial gaps (bits) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        h, th = r["H"], r["tutorial_H"]
        gaps = [(r[k] - h) / math.log(2) for k in ("vae_neg_elbo", "vae_nll", "iwae_nll")]
        lines.append(
            f"| {r['dataset']} | {h:.3f} | {r['vae_neg_elbo']:.3f} | {r['vae_nll']:.3f} | {r['iwae_loss']:.3f} "
            f"| {r['iwae_nll']:.3f} | {', '.join(f'{g:.3f}' for g in gaps)} "
            f"| {th}, {r['tutorial_vae_neg_elbo']}, {r['tutorial_vae_nll']}, {r['tutorial_iwae_nll']} "
            f"| {r['tutorial_vae_neg_elbo'] - th:.2f}, {r['tutorial_vae_nll'] - th:.2f}, "
            f"{r['tutorial_iwae_nll'] - th:.2f} |")
    return "\n".join(lines) + "\n"


def study_figure(models, datasets=TOY_DATASETS, seed=0, grid=100):
    """Per dataset: ground-truth density, VAE and IWAE densities on a grid, and the VAE's latent
    space (posterior means of test points coloured by the angle of the point)."""
    fig, axes = plots.subplots(len(datasets), 4, (12, 3 * len(datasets)))
    g = np.linspace(-4.5, 4.5, grid)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    for r, name in enumerate(datasets):
        panels = [("ground truth", np.exp(toy_log_prob(name, pts)))]
        for objective in ("elbo", "iwae"):
            vae = models.get(f"{name}/{objective}")
            if vae is not None:
                panels.append((f"{'VAE' if objective == 'elbo' else 'IWAE k=10'} density",
                               np.exp(model_log_density(vae, pts, num_samples=100))))
        for c, (title, dens) in enumerate(panels):
            axes[r, c].imshow(dens.reshape(grid, grid), origin="lower", extent=(-4.5, 4.5, -4.5, 4.5), cmap="magma")
            axes[r, c].set_title(f"{name}: {title}", fontsize=8)
        vae = models.get(f"{name}/elbo")
        if vae is not None:
            x = sample_toy(name, 3000, seed + 2)
            z = vae.posterior(_as_images(x)).mean().numpy()
            axes[r, 3].scatter(z[:, 0], z[:, 1], c=np.arctan2(x[:, 1], x[:, 0]), s=2, cmap="hsv")
            axes[r, 3].set_title(f"{name}: VAE latent means (colour = angle of x)", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    return fig
