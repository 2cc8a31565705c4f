"""Figures (matplotlib, Agg backend): functions return a `Figure`; the caller saves it."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reconstruction_figure(images, point, variance=None, title="", variance_note=None):
    """Rows: inputs, point estimates and (if given) per-pixel variance maps.

    Args:
      images, point: `[N, H, W, C]` in [0, 1].
      variance: `[N, H, W, C]` or None; shown clipped to [0, 1]; NaN pixels (no variance) are blank.
      variance_note: caveat printed beside the variance row.
    """
    rows = [("input", images), ("point estimate", point)]
    if variance is not None:
        rows.append(("variance", np.clip(variance, 0, 1)))
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.2 * len(rows) + 0.7), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            img = np.asarray(batch[i])[..., 0]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if np.all(np.isnan(img)):
                ax.text(0.5, 0.5, "undefined", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if variance_note else 0, 1, 1))
    if variance_note and variance is not None:
        fig.text(0.5, 0.01, variance_note, ha="center", fontsize=7)
    return fig


def image_grid(images, title="", columns=8):
    """A grid of images `[N, H, W, C]` in [0, 1] (e.g. decoded samples)."""
    n = len(images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            ax.imshow(np.asarray(images[i])[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)
