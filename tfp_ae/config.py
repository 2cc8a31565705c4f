"""Run configuration: every setting of an experiment, in one place (CLI flags map onto it)."""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

ARCHS = ("mlp", "cnn", "cnn_dense")
MODELS = ("ae", "vae")


@dataclass
class RunConfig:
    """One experiment. Defaults are the paper's (Ciobanu, Section 4): MLP with a 32-unit
    bottleneck, Adam with default settings, 20 epochs, batch 128, shuffle buffer 1024."""
    dataset: str = "fashion_mnist"
    model: str = "ae"                  # ae (the paper's autoencoders) | vae
    head: str = "normal_diag"
    components: int = 1
    arch: str = "mlp"
    latent_dim: int = 32
    objective: str = "elbo"            # vae only: elbo | iwae
    iw_samples: int = 10               # vae with objective iwae: k importance samples
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3        # Adam's default
    seed: int = 0
    retries: int = 0                   # re-runs with seed+1, seed+2, ... after a NaN loss
    dequantize: bool = False           # train on uniformly dequantised pixels
    train_limit: Optional[int] = None  # use only the first N training images (quick runs)
    eval_images: int = 1000            # test images for l2_percent (the paper's 1000)
    data_dir: Optional[str] = None
    out: Optional[str] = None
    jit_compile: bool = False
    rescale: bool = False              # divide the images by 255 (user data given as 0-255)
    strategy: str = "default"          # tf.distribute strategy: default | mirrored | multiworker
    fid: bool = True                   # fid_lenet (+ fid_inception when its weights are cached)
    fid_inception: bool = False        # also InceptionV3 FID, downloading its weights if needed
    tsne_images: int = 1000            # test latents in the t-SNE panel of samples.png (0: none)
    extra_figures: bool = True         # samples.png (Figure 3) and components.png (Figure 4)
    verbose: int = 2

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
