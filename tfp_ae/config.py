"""Run configuration: every setting of an experiment and every allowed value, declared once here
and validated here (the CLI's flags and choices are generated from these declarations)."""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from tfp_ae.architectures import ARCHITECTURES, ArchSettings, check_arch
from tfp_ae.data import CROPS, Geometry, SourceOptions
from tfp_ae.errors import InputError
from tfp_ae.heads import DEFAULT_BETA, LOSSES, MAX_RISK_STRATA, check_beta, get_head, head_names

ARCHS = tuple(ARCHITECTURES)  # mlp, cnn, cnn_dense (the paper's and its learning decoder), conv
VAE_ARCHS = ("mlp", "cnn_dense", "conv", "dense_block")   # the paper's `cnn` decoder has no latent bottleneck;
#   dense_block: the VAE tutorial's weight-normalised DenseNet-style MLPs (its 2D study)
MODELS = ("ae", "vae")
OBJECTIVES = ("elbo", "iwae")
STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
UNCERTAINTIES = ("interval", "conformal", "std", "variance")  # maps: 90 % / conformal interval width, std, variance
LOCATION_ACTIVATIONS = ("linear", "sigmoid")  # faithful: of the location output (tfp_ae.models.faithful_decoder)
RECALIBRATION_CRITERIA = ("crps", "nll", "calibration")  # tfp_ae.calibration.fit_sigma_scale
RECALIBRATION_METHODS = ("scale", "local", "pit")  # σ-scaling only, or then local factors of the pixel scales, or
#   then a histogram of the PIT per group of pixel scales (calibration.fit_pit_recalibration)
RECALIBRATION_FRACTION = 0.1  # --recalibrate without --validation-split: the held-out fraction of the training split
DEFAULT_RISK = 0.1   # conformal risk control: α, the fraction of a new image's pixels allowed outside their intervals
DEFAULT_DELTA = 0.1  # δ: the probability that the held-out images give a λ whose risk exceeds α
STEPS_PER_EXECUTION = 32  # training steps per call of Keras' compiled train function (docs/benchmarks/cpu_mlp_bounds.md)


def check_groups(groups: int, strata: int = 1) -> None:
    """Raises `InputError` unless `groups` (`--risk-groups`, K-RCPS's K) is an integer >= 1, `strata`
    (`--risk-strata`) an integer in [1, MAX_RISK_STRATA], and at most one of them above 1."""
    for flag, what, v, top in (("--risk-groups", "pixel groups of K-RCPS", groups, None),
                               ("--risk-strata", "strata of images by interval width", strata, MAX_RISK_STRATA)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 or (top and v > top):
            raise InputError(f"{flag} ({what}) must be an integer >= 1{f' and <= {top}' if top else ''}; got {v!r}")
    if groups > 1 and strata > 1:
        raise InputError(f"--risk-groups {groups} and --risk-strata {strata}: choose one (a λ per pixel group or per "
                         "stratum of images)")


def check_risk(alpha: float, delta: float) -> None:
    """Raises `InputError` unless the risk level `alpha` (`--risk`) and the failure probability `delta`
    (`--delta`) are numbers in (0, 1)."""
    for name, flag, v in (("alpha", "--risk", alpha), ("delta", "--delta", delta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise InputError(f"{flag} ({name}) must be a number in (0, 1); got {v!r}")


@dataclass
class RunConfig:
    """One experiment. Defaults are the paper's (Ciobanu, Section 4): MLP with a 32-unit
    bottleneck, Adam with default settings, 20 epochs, batch 128, shuffle buffer 1024."""
    dataset: str = "fashion_mnist"
    model: str = "ae"                  # MODELS: ae (the paper's autoencoders) | vae
    head: str = "normal_diag"
    components: int = 1
    rank: int | None = None         # low-rank heads: rank r of V (None: the head's default, 10)
    min_df: float | None = None     # Student-t heads: df = min_df + 1e-6 + softplus (None: 0, the paper's)
    parameterization: str | None = None  # full-scale heads: L L^T is the covariance (None: scale) or the precision
    arch: str = "mlp"                  # ARCHS (VAE_ARCHS for a vae)
    latent_dim: int = 32
    conv_width: int | None = None      # arch conv: filters of the first level (None: 16; tfp_ae.architectures.conv)
    conv_depth: int | None = None      # arch conv: stride-2 levels (None: the shorter side halved down to 4-7 pixels)
    loss: str = "nll"                  # LOSSES; ae only: nll (the paper's) | beta_nll | faithful (tfp_ae.heads.Head)
    beta: float = DEFAULT_BETA         # beta_nll: pixel weights stop_gradient(variance)^beta, in [0, 1]
    dispersion_units: int = 256        # faithful: hidden units of the dispersion branch (0: linear readout)
    location_activation: str = "linear"  # LOCATION_ACTIVATIONS: sigmoid puts the location (first D outputs) in (0, 1)
    objective: str = "elbo"            # OBJECTIVES; vae only: elbo | iwae
    iw_samples: int = 10               # vae with objective iwae: k importance samples
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3        # Adam's default
    seed: int = 0
    retries: int = 0                   # re-runs with seed+1, seed+2, ... after a NaN loss
    dequantize: bool = False           # train on uniformly dequantised pixels
    perturb_rate: float = 0.0          # background model (Ren et al. 2019): replace pixels at this rate by noise
    train_limit: int | None = None  # use only the first N training images (quick runs)
    validation_split: float = 0.0      # hold out the last fraction of the training images (val_loss; recalibration)
    recalibrate: bool = False          # sigma-scaling on the held-out images (validation_split, or 0.1 when 0)
    recalibration_criterion: str = "calibration"  # RECALIBRATION_CRITERIA: what sigma-scaling minimises
    recalibration_method: str = "scale"  # RECALIBRATION_METHODS: local adds calibration.fit_local_scales, pit
    #                                      calibration.fit_pit_recalibration
    force_recalibration: bool = False  # apply sigma-scaling where it costs held-out bits/dim (calibration.recalibrate)
    risk: float | None = None          # conformal risk control (RCPS) at this α: λ fitted on the held-out images
    delta: float = DEFAULT_DELTA       # RCPS: the probability that the fitted λ's risk exceeds α
    risk_groups: int = 1               # K-RCPS: pixel groups, each with its own λ (1: RCPS's one λ)
    risk_strata: int = 1               # RCPS within strata of images by mean interval width, a λ each (1: one λ)
    eval_images: int = 1000            # test images for l2_percent (the paper's 1000)
    data_dir: str | None = None     # IDX folder of the named datasets; TFDS's data_dir for tfds: sources
    image_size: str | None = None   # "H" or "HxW": resize every image (antialiased; tfp_ae.data.Geometry)
    crop: str = "none"                 # CROPS: "center" crops to --image-size's aspect ratio first
    channels: int | None = None     # 1 or 3: convert every image to grey or RGB (None: the source's)
    test_fraction: float = 0.1         # image folders without train/ and test/: fraction held out for test
    classes: str | None = None         # keep only these classes (names or indices, comma-separated; tfp_ae.data.classes)
    exclude_classes: str | None = None  # keep every class but these (leave-one-class-out)
    download: bool = False             # tfds: sources: download and prepare a dataset that is not prepared
    skip_bad_images: bool = False      # leave unreadable image files out (counted) instead of stopping
    out: str | None = None
    jit_compile: bool = False
    steps_per_execution: int = STEPS_PER_EXECUTION  # Keras compile argument: steps per compiled call (same results)
    precision: str = "float32"         # PRECISIONS: Keras mixed precision policy of the layers
    rescale: bool = False              # divide the images by 255 (user data given as 0-255)
    strategy: str = "default"          # STRATEGIES: tf.distribute strategy
    deterministic: bool = False        # TensorFlow's op determinism (GPU kernels; CPU runs repeat without it)
    tensorboard: bool = False          # write TensorBoard logs to OUT/logs (needs `tensorboard`)
    fid: bool = True                   # fid_lenet (+ fid_inception when its weights are cached)
    fid_inception: bool = False        # also InceptionV3 FID, downloading its weights if needed
    tsne_images: int = 1000            # test latents in the t-SNE panel of samples.png (0: none)
    extra_figures: bool = True         # samples.png (Figure 3) and components.png (Figure 4)
    uncertainty: str = "interval"      # UNCERTAINTIES: the map of reconstructions.png
    verbose: int = 2

    @property
    def source_options(self) -> SourceOptions:
        """The arguments of `tfp_ae.data.open_source` besides the dataset."""
        return dict(data_dir=self.data_dir, image_size=self.image_size, crop=self.crop, channels=self.channels,
                    test_fraction=self.test_fraction, download=self.download, skip_bad_images=self.skip_bad_images,
                    rescale=self.rescale, classes=self.classes, exclude_classes=self.exclude_classes)

    def to_dict(self) -> dict:
        """Every setting as a plain dict (`config.json`, `metrics.json`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def held_out_fraction(self) -> float:
        """The fraction of the training split held out of training (its last images, a fixed choice):
        `validation_split`, or `RECALIBRATION_FRACTION` when `recalibrate` or `risk` needs images and it is 0."""
        return self.validation_split or (RECALIBRATION_FRACTION if self.recalibrate or self.risk is not None else 0.0)

    @property
    def loss_options(self) -> dict:
        """The training-loss arguments of `build_model` (`loss`, and `beta` / `dispersion_units` /
        `location_activation` where used)."""
        opts = dict(loss=self.loss)
        if self.loss == "beta_nll":
            opts["beta"] = self.beta
        if self.loss == "faithful":
            opts.update(dispersion_units=self.dispersion_units)
        if self.loss == "faithful" or self.location_activation != "linear":
            opts.update(location_activation=self.location_activation)
        return opts

    @property
    def arch_options(self) -> dict:
        """`conv_width` and `conv_depth` where set (`build_model` / `build_vae`; `tfp_ae.architectures.conv`)."""
        return {k: v for k, v in dict(conv_width=self.conv_width, conv_depth=self.conv_depth).items() if v is not None}

    @property
    def arch_settings(self) -> ArchSettings:
        """`latent_dim`, `conv_width` and `conv_depth` as `tfp_ae.architectures.ArchSettings`."""
        return ArchSettings(self.latent_dim, self.conv_width, self.conv_depth)

    @property
    def head_options(self) -> dict:
        """The head's options that are set (`rank`, `min_df`, `parameterization`), for `make_head` / `build_model`."""
        return {k: v for k, v in dict(rank=self.rank, min_df=self.min_df, parameterization=self.parameterization).items()
                if v is not None}

    def validate(self, image_shape: tuple[int, int, int] | None = None) -> RunConfig:
        """Check every setting against its allowed values; returns `self`.

        `image_shape` `(H, W, C)`, when known, also checks the head's options against it (a rank
        below the number of pixel values).

        Raises:
          InputError (a ValueError): the first bad setting, naming it, its value and what is allowed.
        """
        choices = dict(model=MODELS, arch=VAE_ARCHS if self.model == "vae" else ARCHS, objective=OBJECTIVES,
                       strategy=STRATEGIES, precision=PRECISIONS, uncertainty=UNCERTAINTIES, crop=CROPS,
                       recalibration_criterion=RECALIBRATION_CRITERIA, recalibration_method=RECALIBRATION_METHODS,
                       loss=LOSSES,
                       location_activation=LOCATION_ACTIVATIONS)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                                 + (" (a vae needs a latent bottleneck)" if name == "arch" else ""))
        head = get_head(self.head)
        at_least = dict(components=1, latent_dim=1, iw_samples=1, epochs=1, batch_size=1, seed=0, retries=0,
                        eval_images=1, tsne_images=0, steps_per_execution=1, dispersion_units=0)
        if self.train_limit is not None:
            at_least["train_limit"] = 1
        for name, low in at_least.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"{name} must be an integer >= {low}; got {v!r}")
        head.check_options(image_shape, **self.head_options)
        if self.arch != "dense_block":
            check_arch(self.arch, image_shape, self.arch_settings, head, self.components)
        if self.components > 1 and not head.mixable:
            raise InputError(f"head {self.head!r} does not mix: components must be 1, got {self.components}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < float("inf")):
            raise InputError(f"learning_rate must be a positive number; got {self.learning_rate!r}")
        Geometry.parse(self.image_size, self.crop, self.channels)
        if self.classes is not None and self.exclude_classes is not None:
            raise InputError("give classes (--classes) or exclude_classes (--exclude-classes), not both")
        for name in ("classes", "exclude_classes"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (str, int, list, tuple)) and not isinstance(v, bool) and str(v).strip()):
                raise InputError(f"{name} must name classes (names or indices, e.g. '3' or '0,1,2' or 'bag'); got {v!r}")
        if not (isinstance(self.test_fraction, (int, float)) and 0 < self.test_fraction < 1):
            raise InputError(f"test_fraction must be in (0, 1); got {self.test_fraction!r}")
        if not (isinstance(self.perturb_rate, (int, float)) and 0 <= self.perturb_rate < 1):
            raise InputError(f"perturb_rate must be in [0, 1); got {self.perturb_rate!r}")
        if not (isinstance(self.validation_split, (int, float)) and 0 <= self.validation_split < 1):
            raise InputError(f"validation_split must be in [0, 1); got {self.validation_split!r}")
        check_beta(self.beta)  # whatever the loss: a bad --beta is refused, not ignored
        if self.location_activation != "linear" and (self.model != "ae" or not head.location_output or self.components > 1):
            raise InputError(f"--location-activation {self.location_activation} applies to an autoencoder whose head has "
                             "a location output (K = 1: mse, normal, Student-t, low-rank, matrix, logistic); got --model "
                             f"{self.model} --head {self.head} --components {self.components}, where it would be ignored")
        if self.model == "vae" and self.loss != "nll":
            raise InputError(f"loss {self.loss!r} is for autoencoders: a vae trains on its bound (--objective elbo|iwae), "
                             "whose decoder term is the head's log-likelihood")
        head.check_loss(self.loss, self.beta if self.loss == "beta_nll" else None, self.components)
        if self.recalibrate and (self.model != "ae" or not head.has_location):
            raise InputError("--recalibrate (sigma-scaling) takes an autoencoder (--model ae) whose head has a location "
                             f"and scales (normal, Student-t, low-rank, matrix, logistic); got {self.model} {self.head}")
        if self.recalibration_method != "scale":
            which, what = {"local": ("takes_local_scales", "a K = 1 head with per-pixel scales or a low-rank covariance"),
                           "pit": ("takes_pit_recalibration",
                                   "a K = 1 normal, logistic or Student-t head (joint heads through a copula)")
                           }[self.recalibration_method]
            if not (self.recalibrate and getattr(head, which)(self.components)):
                takes = head_names(lambda c: getattr(c, which)())
                raise InputError(f"--recalibration-method {self.recalibration_method} takes --recalibrate and {what} "
                                 f"({takes}); got --head {self.head} --components {self.components}"
                                 + ("" if self.recalibrate else " without --recalibrate"))
        if self.risk is not None:
            check_risk(self.risk, self.delta)
            if not head.has_variance:
                raise InputError(f"--risk (conformal risk control) needs a head with intervals; {self.head!r} models no "
                                 "spread")
        else:
            for flag, v, default in (("--delta", self.delta, DEFAULT_DELTA), ("--risk-groups", self.risk_groups, 1),
                                     ("--risk-strata", self.risk_strata, 1)):
                if v != default:
                    raise InputError(f"{flag} applies to conformal risk control: give --risk too")
        check_groups(self.risk_groups, self.risk_strata)
        if self.model == "ae" and self.objective != "elbo":
            raise InputError(f"objective {self.objective!r} needs --model vae (model='vae'); autoencoders train on "
                             "the NLL")
        return self
