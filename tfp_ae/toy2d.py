"""The VAE tutorial's 2D study (Section 6): toy densities with known entropy, a 2-latent VAE and
IWAE trained on them, and how far -ELBO and the importance-sampled NLL are from the entropy.

Datasets (the generators of FFJORD's toy data, Grathwohl et al. 2019, with their scales):

- `8gaussians`: equal mixture of 8 isotropic normals with centres 4/sqrt(2) (cos a, sin a),
  a = 0, 45, ..., 315 degrees, and standard deviation 0.5/sqrt(2);
- `checkerboard`: uniform on 8 squares of side 2 in [-4, 4]^2 (a checkerboard);
- `2spirals`: two interleaved spirals, x = +-(s(n) + u)/3 + e, s(n) = n (-cos n, sin n),
  n = 3 pi sqrt(t), t ~ U(0, 1), u ~ U[0, 0.5]^2, e ~ N(0, 0.1^2 I).

The tutorial (its notebook `VAEtoy2d.ipynb`, ../shared/paper/vae_tutorial_2d_setup.md) divides
every point by 8 and draws its spirals without the uniform term u: `scale="tutorial"` gives those.

For a model p fitted to data with density p*, E[-log p(x)] = H(p*) + KL(p* || p) >= H, and
-ELBO >= -log p(x): the gaps -ELBO - H and NLL - H measure the model and the bound, and do not
change when a dataset is rescaled (both sides shift by the log of the Jacobian, 2 log2 8 = 6 bits
between the two scales). Tables report bits (nats / ln 2), as the tutorial does.

How the study trains is a `ToySetup`; `TOY_SETUPS` holds two presets: `laptop` (FFJORD scales,
ReLU MLPs 128-128, Adam 1e-3, 30000 steps on a fixed set of 100000 points: minutes on a CPU) and
`tutorial` (the tutorial's own: its scales, weight-normalised dense blocks of 6 x 1024, free bits
0.05, Adam 1e-4 with AMSGrad halved at 60/70/80/90 % of the steps, 60000 VAE and 30000 IWAE
steps at batch 200 on a fresh batch per step; `growth` shrinks the blocks for a CPU).

Points are fed to the package's heads as 1 x 2 single-channel "images" (event shape (1, 2, 1)).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.integrate import trapezoid
from scipy.special import logsumexp, ndtr

from tfp_ae import plots
from tfp_ae._tf import tf, tfk
from tfp_ae.errors import InputError
from tfp_ae.models import compile_model
from tfp_ae.rundir import write_json
from tfp_ae.vae import build_vae

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tfp_ae.vae import VAE

TOY_DATASETS = ("8gaussians", "checkerboard", "2spirals")
TOY_SCALES = ("ffjord", "tutorial")   # FFJORD's generators; the tutorial's (divided by 8, spirals without u)
_TUTORIAL_DIVISOR = 8.0
SPIRAL_NODES = 1000   # quadrature nodes in t for the 2spirals density
_SIGMA_8G = 0.5 / math.sqrt(2)
_CENTRES_8G = 4 / math.sqrt(2) * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)

# The tutorial's Tables 1a and 2 (bits, not nats: ../shared/paper/vae_tutorial_2d.csv; its own dataset
# scales): H, VAE -ELBO, VAE NLL, IWAE NLL
TUTORIAL = {"8gaussians": (-1.92, -1.81, -1.86, -1.91), "checkerboard": (-1.0, -0.73, -0.81, -0.88),
            "2spirals": (-2.34, -1.98, -2.15, -2.30)}


@dataclasses.dataclass(frozen=True)
class ToySetup:
    """How the 2D study trains each model (presets: `TOY_SETUPS`).

    Fields: `scale` (`TOY_SCALES`); `arch` and `hidden` (the VAE's networks, `tfp_ae.vae.build_vae`);
    `free_bits` (bits per latent dimension, VAE only); Adam's `learning_rate` and `amsgrad`;
    `halve_at`: fractions of the steps at which the learning rate halves; `vae_steps`,
    `iwae_steps` and `batch_size`; `num_train`: size of a fixed training set, or None for a
    fresh batch at every step (steps x batch_size points drawn once, each seen once).
    """
    scale: str = "ffjord"
    arch: str = "mlp"
    hidden: tuple = (128, 128)
    free_bits: float = 0.0
    learning_rate: float = 1e-3
    amsgrad: bool = False
    halve_at: tuple = ()
    vae_steps: int = 30000
    iwae_steps: int = 30000
    batch_size: int = 200
    num_train: int = 100_000

    def steps(self, objective: str) -> int:
        """Adam steps of the VAE (`elbo`) or the IWAE (`iwae`) in this set-up."""
        return self.vae_steps if objective == "elbo" else self.iwae_steps

    def learning_rate_schedule(self, steps: int):
        """Adam's learning rate: constant, or halved at each of `halve_at` x `steps` optimizer steps."""
        if not self.halve_at:
            return self.learning_rate
        return tfk.optimizers.schedules.PiecewiseConstantDecay(
            [int(f * steps) for f in self.halve_at], [self.learning_rate / 2 ** i for i in range(len(self.halve_at) + 1)])


TOY_SETUPS = {
    "laptop": ToySetup(),
    "tutorial": ToySetup(scale="tutorial", arch="dense_block", hidden=(1024,) * 6, free_bits=0.05, learning_rate=1e-4,
                         amsgrad=True, halve_at=(0.6, 0.7, 0.8, 0.9), vae_steps=60000, iwae_steps=30000, num_train=None),
}


def resolve_setup(setup: str | ToySetup = "laptop", steps: int | None = None, growth: int | None = None,
                  num_train: int | None = None) -> ToySetup:
    """A `ToySetup`: the preset `setup` (a name or a ToySetup) with overrides. `steps`: VAE steps
    (IWAE steps keep the preset's ratio); `growth`: the width of every hidden layer (the tutorial's
    dense-block growth); `num_train`: a fixed training set of that size.

    Raises:
      ValueError: unknown preset, steps or growth < 1.
    """
    if isinstance(setup, str):
        if setup not in TOY_SETUPS:
            raise InputError(f"unknown toy2d setup {setup!r}; valid: {', '.join(TOY_SETUPS)}")
        setup = TOY_SETUPS[setup]
    changes = {}
    if steps is not None:
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        changes.update(vae_steps=int(steps), iwae_steps=max(1, round(steps * setup.iwae_steps / setup.vae_steps)))
    if growth is not None:
        if growth < 1:
            raise InputError(f"growth must be >= 1, got {growth}")
        changes["hidden"] = (int(growth),) * len(setup.hidden)
    if num_train is not None:
        changes["num_train"] = int(num_train)
    return dataclasses.replace(setup, **changes)


def _check(name, scale="ffjord"):
    if name not in TOY_DATASETS:
        raise InputError(f"unknown toy dataset {name!r}; valid: {', '.join(TOY_DATASETS)}")
    if scale not in TOY_SCALES:
        raise InputError(f"unknown toy scale {scale!r}; valid: {', '.join(TOY_SCALES)}")


def sample_toy(name: str, num_points: int, seed: int = 0, scale: str = "ffjord") -> np.ndarray:
    """`num_points` points `[N, 2]` float32 of a toy dataset, reproducible from `seed`; `scale`
    `ffjord` (the definitions above) or `tutorial` (divided by 8; spirals without u).

    Raises:
      ValueError: unknown name or scale.
    """
    _check(name, scale)
    tutorial = scale == "tutorial"
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
        s = np.stack([-np.cos(t) * t, np.sin(t) * t], 1)
        if not tutorial:
            s = s + rng.uniform(0, 0.5, (n, 2))
        x = np.where(rng.integers(0, 2, (n, 1)) == 1, s, -s) / 3 + 0.1 * rng.standard_normal((n, 2))
    return (x / _TUTORIAL_DIVISOR if tutorial else x).astype(np.float32)


def toy_log_prob(name: str, x: np.ndarray, scale: str = "ffjord") -> np.ndarray:
    """The exact log-density `[N]` (nats) of a toy dataset at points `x` `[N, 2]`.

    8gaussians: the mixture density; checkerboard: -log 32 on the squares, -inf elsewhere;
    2spirals: the spiral noise model integrated over the arc position with `SPIRAL_NODES`-point
    midpoint quadrature in t (per axis, uniform (+) normal noise is a difference of normal CDFs;
    the tutorial's spirals have normal noise only). `scale="tutorial"`: the density of the
    points divided by 8, log p(x) = log p_8(8 x) + 2 log 8.
    """
    _check(name, scale)
    x = np.asarray(x, np.float64)
    if scale == "tutorial":
        return _log_prob_unscaled(name, _TUTORIAL_DIVISOR * x, box=False) + 2 * math.log(_TUTORIAL_DIVISOR)
    return _log_prob_unscaled(name, x, box=True)


def _log_prob_unscaled(name, x, box):
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
        if box:
            plus = 6 * (ndtr((xb - a) / 0.1) - ndtr((xb - a - 1 / 6) / 0.1))    # +spiral, per axis
            minus = 6 * (ndtr((xb + a + 1 / 6) / 0.1) - ndtr((xb + a) / 0.1))   # -spiral
        else:  # normal noise only: N(x; +-a, 0.1^2) per axis
            plus = np.exp(-0.5 * ((xb - a) / 0.1) ** 2) / (0.1 * math.sqrt(2 * math.pi))
            minus = np.exp(-0.5 * ((xb + a) / 0.1) ** 2) / (0.1 * math.sqrt(2 * math.pi))
        dens = 0.5 * (np.prod(plus, -1) + np.prod(minus, -1)).mean(1)
        out[i:i + 2000] = np.log(np.maximum(dens, 1e-300))
    return out


def toy_entropy(name: str, num_samples: int = 50_000, seed: int = 12345, scale: str = "ffjord") -> dict:
    """Differential entropy H = -E[log p(x)] of a toy dataset, nats.

    Returns:
      dict(H, stderr, method): checkerboard exactly log 32; 8gaussians by trapezoid integration of
      -p log p on a 0.01 grid over [-5, 5]^2 (error < 1e-4); 2spirals by Monte Carlo over
      `num_samples` points with the quadrature density (`stderr` its standard error). At
      `scale="tutorial"` the first two are shifted by -2 log 8 (exact for a scaling by 1/8).
    """
    _check(name, scale)
    shift = 2 * math.log(_TUTORIAL_DIVISOR) if scale == "tutorial" else 0.0
    if name == "checkerboard":
        return dict(H=math.log(32) - shift, stderr=0.0, method="exact: log(area)")
    if name == "8gaussians":
        g = np.arange(-5, 5.0001, 0.01)
        xx, yy = np.meshgrid(g, g)
        lp = toy_log_prob(name, np.stack([xx.ravel(), yy.ravel()], 1)).reshape(xx.shape)
        h = -trapezoid(trapezoid(np.exp(lp) * lp, g, axis=1), g)
        return dict(H=float(h) - shift, stderr=0.0, method="grid integration")
    lp = toy_log_prob(name, sample_toy(name, num_samples, seed, scale), scale)
    return dict(H=float(-lp.mean()), stderr=float(lp.std() / math.sqrt(num_samples)), method="Monte Carlo")


# ---- the study -------------------------------------------------------------------------------
def _as_images(x):
    return np.asarray(x, np.float32).reshape(-1, 1, 2, 1)


def toy_vae(objective: str = "elbo", iw_samples: int = 10, seed: int = 0, setup: ToySetup = TOY_SETUPS["laptop"],
            steps: int | None = None) -> VAE:
    """A compiled VAE with a 2-d latent and a `normal_diag` decoder, built and optimised as `setup`
    says (`steps`: the length of its learning-rate schedule, default the setup's)."""
    tfk.utils.set_random_seed(seed)
    vae = build_vae("normal_diag", (1, 2, 1), latent_dim=2, objective=objective, iw_samples=iw_samples,
                    arch=setup.arch, hidden=setup.hidden, free_bits=setup.free_bits if objective == "elbo" else 0.0)
    schedule = setup.learning_rate_schedule(steps or setup.steps(objective))
    return compile_model(vae, schedule, amsgrad=setup.amsgrad)


def train_toy_vae(name: str, objective: str = "elbo", setup: ToySetup = TOY_SETUPS["laptop"], seed: int = 0,
                  iw_samples: int = 10, verbose: int = 2, epochs: int = 20) -> VAE:
    """`toy_vae` trained with `model.fit` for `setup.steps(objective)` Adam steps at
    `setup.batch_size` on dataset `name` (a fixed set of `setup.num_train` points drawn with
    `seed`, shuffled every epoch, or a fresh batch per step); progress: Keras' line per epoch,
    `epochs` of them for the fresh-batch set-up."""
    steps, batch = setup.steps(objective), setup.batch_size
    vae = toy_vae(objective, iw_samples, seed, setup, steps)
    if setup.num_train:
        x = _as_images(sample_toy(name, setup.num_train, seed, setup.scale))
        vae.fit(x, x, batch_size=batch, epochs=max(1, round(steps * batch / len(x))), verbose=verbose, shuffle=True)
    else:
        x = _as_images(sample_toy(name, steps * batch, seed, setup.scale))
        ds = tf.data.Dataset.from_tensor_slices(x).repeat().batch(batch).map(lambda b: (b, b))
        epochs = min(epochs, steps)
        vae.fit(ds, epochs=epochs, steps_per_epoch=steps // epochs, verbose=verbose)
    return vae


def toy_scores(vae: VAE, x: np.ndarray, num_samples: int = 250, batch_size: int = 1000) -> tuple[float, float, float]:
    """(-ELBO, -IWAE_k training bound, importance-sampled NLL) averaged over points `x` `[N, 2]`, nats."""
    xs = _as_images(x)
    elbo, bound, nll = [], [], []
    for i in range(0, len(xs), batch_size):
        b = xs[i:i + batch_size]
        elbo.append(vae.elbo(b)[0].numpy())
        bound.append(vae.iwae_bound(b, vae.iw_samples).numpy() if vae.objective_name == "iwae" else elbo[-1])
        nll.append(vae.importance_nll(b, num_samples).numpy())
    return -float(np.concatenate(elbo).mean()), -float(np.concatenate(bound).mean()), float(np.concatenate(nll).mean())


def model_log_density(vae: VAE, points: np.ndarray, num_samples: int = 250, batch_size: int = 1000) -> np.ndarray:
    """log p(x) `[N]` of a toy VAE at points `[N, 2]` by importance sampling."""
    xs = _as_images(points)
    return -np.concatenate([vae.importance_nll(xs[i:i + batch_size], num_samples).numpy()
                            for i in range(0, len(xs), batch_size)])


def run_study(out: str | os.PathLike, setup: str | ToySetup = "laptop", steps: int | None = None, growth: int | None = None,
              num_train: int | None = None, datasets: Sequence[str] = TOY_DATASETS, num_test: int = 10_000, seed: int = 0,
              log: Callable[[str], None] = print) -> list[dict]:
    """Train a VAE and an IWAE (k=10) per dataset as the set-up says (`resolve_setup(setup, steps,
    growth, num_train)`); write `results.json` (with the set-up) and the weights of each finished
    cell (so an interrupted study resumes without retraining them), `table.md` and `toy2d.png`.

    Returns:
      the rows of the table (dicts; numbers in bits).
    Raises:
      ValueError: `out` holds a study with another set-up.
    """
    setup = resolve_setup(setup, steps, growth, num_train)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    described = json.loads(json.dumps(dataclasses.asdict(setup)))
    if results.setdefault("setup", described) != described:
        raise InputError(f"{out} holds a study with another set-up ({results['setup']}); use a new --out")
    models = {}
    for name in datasets:
        x_test = sample_toy(name, num_test, seed + 1, setup.scale)
        for objective in ("elbo", "iwae"):
            key = f"{name}/{objective}"
            weights = out / f"{name}_{objective}.weights.h5"
            if key in results and weights.exists():
                vae = toy_vae(objective, seed=seed, setup=setup)
                vae.load_weights(str(weights))
            else:
                vae = train_toy_vae(name, objective, setup, seed)
                vae.save_weights(str(weights))
                results.pop(key, None)
            models[key] = vae
            if key not in results:
                neg_elbo, neg_bound, nll = toy_scores(vae, x_test)
                results[key] = dict(neg_elbo=neg_elbo, neg_bound=neg_bound, nll=nll, steps=setup.steps(objective))
                write_json(results, path)
            log(f"{key}: {results[key]}")
    rows = study_table(results, datasets, setup.scale)
    (out / "table.md").write_text(markdown_table(rows, setup))
    plots.save(study_figure(models, datasets, seed, scale=setup.scale), out / "toy2d.png")
    return rows


def study_table(results: dict, datasets: Sequence[str] = TOY_DATASETS, scale: str = "ffjord") -> list[dict]:
    """One row per dataset: H and our scores (`results`: nats) in bits, with the tutorial's (bits)."""
    rows = []
    bits = 1 / math.log(2)
    for name in datasets:
        h = toy_entropy(name, scale=scale)
        v, w = results[f"{name}/elbo"], results[f"{name}/iwae"]
        t = TUTORIAL[name]
        rows.append(dict(dataset=name, H=h["H"] * bits, H_stderr=h["stderr"] * bits, vae_neg_elbo=v["neg_elbo"] * bits,
                         vae_nll=v["nll"] * bits, iwae_loss=w["neg_bound"] * bits, iwae_nll=w["nll"] * bits,
                         tutorial_H=t[0], tutorial_vae_neg_elbo=t[1], tutorial_vae_nll=t[2], tutorial_iwae_nll=t[3]))
    return rows


def markdown_table(rows: list[dict], setup: ToySetup = TOY_SETUPS["laptop"]) -> str:
    """The study as Markdown, all in bits: ours (H, -ELBO, NLL at the set-up's data scale), our gaps
    to H, and the tutorial's numbers and gaps (at its scale; gaps do not depend on the scale)."""
    note = ("at the tutorial's data scale" if setup.scale == "tutorial" else
            "at FFJORD's data scale, 2 log2 8 = 6 bits above the tutorial's scale")
    lines = [f"Set-up: {setup}. Our numbers {note}; all in bits.", "",
             "| dataset | H | VAE -ELBO | VAE NLL | IWAE(k=10) loss | IWAE NLL "
             "| our gaps to H: -ELBO, NLL, IWAE NLL | tutorial H, -ELBO, NLL, IWAE NLL "
             "| tutorial gaps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        h, th = r["H"], r["tutorial_H"]
        gaps = [r[k] - h for k in ("vae_neg_elbo", "vae_nll", "iwae_nll")]
        lines.append(
            f"| {r['dataset']} | {h:.3f} | {r['vae_neg_elbo']:.3f} | {r['vae_nll']:.3f} | {r['iwae_loss']:.3f} "
            f"| {r['iwae_nll']:.3f} | {', '.join(f'{g:.3f}' for g in gaps)} "
            f"| {th}, {r['tutorial_vae_neg_elbo']}, {r['tutorial_vae_nll']}, {r['tutorial_iwae_nll']} "
            f"| {r['tutorial_vae_neg_elbo'] - th:.2f}, {r['tutorial_vae_nll'] - th:.2f}, "
            f"{r['tutorial_iwae_nll'] - th:.2f} |")
    return "\n".join(lines) + "\n"


LOG_DENSITY_RANGE = 12.0  # nats shown below a row's highest log-density (the rest is the darkest colour)


def study_figure(models: dict[str, VAE], datasets: Sequence[str] = TOY_DATASETS, seed: int = 0, grid: int = 100,
                 scale: str = "ffjord") -> Figure:
    """Per dataset: ground-truth, VAE and IWAE log-densities log p(x) (nats) on a grid, on one colour
    scale per row (from the row's highest value down `LOG_DENSITY_RANGE` nats, with a colour bar;
    a density panel scaled to its own maximum is black but for its one hottest pixel), and the VAE's
    latent space (posterior means of test points coloured by the angle of the point)."""
    fig, axes = plots.subplots(len(datasets), 4, (12, 3 * len(datasets)))
    lim = 4.5 / (_TUTORIAL_DIVISOR if scale == "tutorial" else 1)
    g = np.linspace(-lim, lim, grid)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    for r, name in enumerate(datasets):
        panels = [("ground truth log p(x)", toy_log_prob(name, pts, scale))]
        for objective in ("elbo", "iwae"):
            vae = models.get(f"{name}/{objective}")
            if vae is not None:
                panels.append((f"{'VAE' if objective == 'elbo' else 'IWAE k=10'} log p(x)",
                               model_log_density(vae, pts, num_samples=100)))
        top = max(float(np.max(lp[np.isfinite(lp)], initial=-np.inf)) for _, lp in panels)
        shown = None
        for c, (title, lp) in enumerate(panels):
            lp = np.where(np.isfinite(lp), lp, top - LOG_DENSITY_RANGE)  # log 0 (off the checkerboard): darkest
            shown = axes[r, c].imshow(lp.reshape(grid, grid), origin="lower", extent=(-lim, lim, -lim, lim),
                                      cmap="magma", vmin=top - LOG_DENSITY_RANGE, vmax=top)
            axes[r, c].set_title(f"{name}: {title}", fontsize=8)
        fig.colorbar(shown, ax=axes[r, :len(panels)].tolist(), fraction=0.02, pad=0.01,
                     label="log p(x), nats").ax.tick_params(labelsize=6)
        vae = models.get(f"{name}/elbo")
        if vae is not None:
            x = sample_toy(name, 3000, seed + 2, scale)
            z = vae.posterior(_as_images(x)).mean().numpy()
            axes[r, 3].scatter(z[:, 0], z[:, 1], c=np.arctan2(x[:, 1], x[:, 0]), s=2, cmap="hsv")
            axes[r, 3].set_title(f"{name}: VAE latent means\n(colour: angle of x)", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    return fig
