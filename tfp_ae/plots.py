"""Figures: functions return a matplotlib `Figure` built without pyplot (no global state, no
backend switch: a notebook shows the returned figure, `save` writes it)."""
import numpy as np
from matplotlib.figure import Figure


def subplots(rows, cols, figsize):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def reconstruction_figure(images, point, variance=None, title="", variance_note=None):
    """Rows: inputs, point estimates and (if given) per-pixel variance maps.

    Args:
      images, point: `[N, H, W, C]` in [0, 1].
      variance: `[N, H, W, C]` or None; shown clipped to [0, 1]; NaN pixels (no variance) are blank.
      variance_note: caveat printed under the variance row.
    """
    rows = [("input", images, None), ("point estimate", point, None)]
    if variance is not None:
        rows.append(("variance", np.clip(variance, 0, 1), variance_note))
    return image_rows(rows, title)


def _show(ax, img, title=None):
    img = np.asarray(img)[..., 0]
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    if np.all(np.isnan(img)):
        ax.text(0.5, 0.5, "undefined", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_xticks([]), ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=6)


def image_rows(rows, title=""):
    """Rows of images: `rows` is a list of (name, images `[N, H, W, C]` in [0, 1], note or None);
    all-NaN images read "undefined"; a row's note is printed under it."""
    n = len(rows[0][1])
    fig, axes = subplots(len(rows), n, (1.1 * n + 1.6, 1.25 * len(rows) + 0.6))
    for r, (name, batch, note) in enumerate(rows):
        for i in range(n):
            _show(axes[r, i], batch[i])
        axes[r, 0].set_ylabel(name, fontsize=6)
        if note:
            axes[r, n // 2].set_xlabel(note, fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def components_grid(images, points, log_probs, title=""):
    """Figure 4 layout: per row an input `[H, W, C]` then its K component images `points`
    `[N, K, H, W, C]` titled with `log_probs` `[N, K]` (nats)."""
    n, k = log_probs.shape
    fig, axes = subplots(n, k + 1, (1.0 * (k + 1), 1.15 * n + 0.5))
    for r in range(n):
        _show(axes[r, 0], images[r], "input")
        for j in range(k):
            _show(axes[r, j + 1], points[r, j], f"{log_probs[r, j]:.0f}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def latent_panels(samples, inputs, outputs, embedding=None, labels=None, title="", prior_note=""):
    """Figure 3 layout: (a) decoded latent samples `[S, H, W, C]`, (b) inputs `[N, H, W, C]` with
    output samples `[M, N, H, W, C]` beside each, (c) a t-SNE scatter `[P, 2]` coloured by `labels`."""
    fig = Figure(figsize=(13, 4.2))
    left, mid, right = fig.subfigures(1, 3, width_ratios=[1, 1.2, 1.1])
    cols = int(np.ceil(np.sqrt(len(samples))))
    ax = left.subplots(cols, cols, squeeze=False)
    for i, a in enumerate(ax.flat):
        _show(a, samples[i]) if i < len(samples) else a.axis("off")
    left.suptitle(f"{title}\n(a) decoded samples, {prior_note}", fontsize=8)
    ax = mid.subplots(len(inputs), outputs.shape[0] + 1, squeeze=False)
    for r in range(len(inputs)):
        _show(ax[r, 0], inputs[r], "input" if r == 0 else None)
        for j in range(outputs.shape[0]):
            _show(ax[r, j + 1], outputs[j, r], "sample" if r == 0 else None)
    mid.suptitle("(b) samples of p(x | input)", fontsize=8)
    a = right.subplots()
    if embedding is not None:
        sc = a.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="tab10", s=4)
        a.legend(*sc.legend_elements(), fontsize=6, loc="best", markerscale=0.6)
    else:
        a.text(0.5, 0.5, "no t-SNE (no labels or disabled)", ha="center", transform=a.transAxes)
    a.set_xticks([]), a.set_yticks([])
    right.suptitle("(c) t-SNE of test latents", fontsize=8)
    return fig


def image_grid(images, title="", columns=8):
    """A grid of images `[N, H, W, C]` in [0, 1] (e.g. decoded samples)."""
    n = len(images)
    rows = -(-n // columns)
    fig, axes = subplots(rows, columns, (columns, rows + 0.4))
    for i, ax in enumerate(axes.flat):
        if i < n:
            ax.imshow(np.asarray(images[i])[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig, path):
    """Write `fig` as PNG (or the format of `path`'s suffix)."""
    fig.savefig(path, dpi=100)
