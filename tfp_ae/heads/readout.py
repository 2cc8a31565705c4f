"""What a head reads from its distribution: component moments, the mixture's mean and variance,
per-pixel intervals, the mode, each component's point, the paper's point estimate and samples
(`Readouts`, a base class of `tfp_ae.heads.base.Head`, which supplies `point`, `head_name`,
`natural_event_shape`, `marginal` and the image shape)."""
from __future__ import annotations

from scipy import special

from tfp_ae._tf import tf, tfb, tfd, tfp
from tfp_ae.errors import InputError

SAMPLE_SEED = (20, 26)  # stateless seed of sample-based estimates (MAF mean / variance)
INTERVAL_LEVEL = 0.9    # uncertainty maps: width of the central 90 % (5-95 %) interval
MAX_RISK_STRATA = 16    # conformal risk control within strata of images (--risk-strata): the most the head stores
INTERVAL_SAMPLES = 1000  # draws per pixel where the interval is estimated from samples
PIT_SAMPLES = 100  # draws per pixel for the randomised-rank PIT of heads without a closed-form CDF


def sample_interval(samples: tf.Tensor, level: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Empirical central `level` interval `(lo, hi)` of draws `samples` `[S, ...]` along axis 0: the
    `(1 - level) / 2` and `(1 + level) / 2` percentiles (linear interpolation), each `[...]`."""
    return tf.unstack(tfp.stats.percentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=0,
                                           interpolation="linear"))


def central_quantiles(marginal: tfd.Distribution, level: float | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(F^-1((1 - level) / 2), F^-1((1 + level) / 2))` of the distribution `marginal` (any batch).

    For a normal and a number `level`, `loc -/+ scale * Phi^-1((1 + level) / 2)` with the standard
    normal quantile computed once, in float64, by SciPy: the same values as `Normal.quantile`, without
    an `Ndtri` op per pixel (which TensorFlow Lite cannot run)."""
    if isinstance(marginal, tfd.Normal) and not tf.is_tensor(level):
        z = float(special.ndtri((1 + level) / 2))
        return marginal.loc - z * marginal.scale, marginal.loc + z * marginal.scale
    return marginal.quantile((1 - level) / 2), marginal.quantile((1 + level) / 2)


class Readouts:
    """Moments, intervals, modes, point estimates and samples of a head's distribution `dist`
    (a batch `[B]` of distributions over `[H, W, C]` images, as `Head.new` returns)."""

    def _parts(self, dist):
        """(natural-shape distribution, mixture logits or None, component distribution)."""
        d = getattr(dist, "tensor_distribution", dist)
        if isinstance(getattr(d, "bijector", None), tfb.Reshape):  # our image-shape wrapper
            d = d.distribution
        if isinstance(d, tfd.MixtureSameFamily):
            return d, d.mixture_distribution.logits, d.components_distribution
        return d, None, d

    def _to_image(self, t):
        """`[..., *natural_event_shape]` -> `[..., H, W, C]`."""
        nd = len(self.natural_event_shape)
        return tf.reshape(t, tf.concat([tf.shape(t)[:tf.rank(t) - nd], self._image_shape], 0))

    def _per_pixel(self, weights):
        """Per-component weights `[B, K]` reshaped `[B, K, 1, ...]` to broadcast over each component's
        pixels in the natural event shape."""
        return tf.reshape(weights, tf.concat([tf.shape(weights), tf.ones_like(self.natural_event_shape)], 0))

    def component_mean(self, comp: tfd.Distribution) -> tf.Tensor:
        """Mean of each component, `[..., *natural_event_shape]`."""
        return comp.mean()

    def component_variance(self, comp: tfd.Distribution) -> tf.Tensor:
        """Per-pixel variance of each component, `[..., *natural_event_shape]` (NaN where it does not exist)."""
        return comp.variance()

    def component_mode(self, comp: tfd.Distribution) -> tf.Tensor:
        """Mode of each component, `[..., *natural_event_shape]`."""
        return comp.mode()

    def _mixture_moments(self, dist, seed=SAMPLE_SEED):
        """Mean and variance `[B, H, W, C]` (law of total variance over components)."""
        _, logits, comp = self._parts(dist)
        mean, var = self._to_image(self.component_mean(comp)), self._to_image(self.component_variance(comp))
        if logits is None:
            return mean, var
        w = tf.reshape(tf.nn.softmax(logits), tf.concat([tf.shape(logits), [1, 1, 1]], 0))
        m = tf.reduce_sum(w * mean, axis=-4)
        return m, tf.reduce_sum(w * (var + tf.square(mean)), axis=-4) - tf.square(m)

    def mean(self, dist: tfd.Distribution, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """Mean of the distribution, `[B, H, W, C]` (pixels, unclipped). `seed` is used only by
        heads whose mean is estimated from samples (MAF)."""
        _, logits, comp = self._parts(dist)
        return self._weighted(logits, self._to_image(self.component_mean(comp)))

    @staticmethod
    def _weighted(logits, x):
        """`sum_k softmax(logits)_k x_k` `[B, H, W, C]` of per-component images `x` `[B, K, H, W, C]`;
        `x` itself when `logits` is None (K = 1)."""
        if logits is None:
            return x
        w = tf.reshape(tf.nn.softmax(logits), tf.concat([tf.shape(logits), [1, 1, 1]], 0))
        return tf.reduce_sum(w * x, axis=-4)

    def variance(self, dist: tfd.Distribution, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """Per-pixel variance `[B, H, W, C]`; NaN where it does not exist (t with df <= 2, the
        `mse` head, which models no variance). `seed`: as in `mean`."""
        return self._mixture_moments(dist, seed)[1]

    def marginal(self, comp: tfd.Distribution) -> tfd.Distribution | None:
        """Each pixel's marginal distribution under the component distribution `comp`: batch
        `[..., *natural_event_shape]`, scalar event, with a `quantile`; None where it has no
        closed form (`interval` then samples). Overridden by the families."""
        return None

    def interval(self, dist: tfd.Distribution, level: float = INTERVAL_LEVEL,
                 seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED,
                 num_samples: int = INTERVAL_SAMPLES) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-pixel central `level` interval of p(x_pixel | input): `(lo, hi)`, each `[B, H, W, C]`
        in pixel units (pixels in [0, 1]; the bounds may lie outside, and are infinite where the
        quantile overflows float32, e.g. a t with df ~ 0.01), `lo = F^-1((1 - level) / 2)`,
        `hi = F^-1((1 + level) / 2)` of each pixel's marginal F. Unlike the variance it exists for
        every head (Student-t with df <= 2, MAF, mixtures, Bernoulli). Exact from the marginal's
        quantiles (`marginal`) for K = 1 normal, Student-t (Kotz & Nadarajah 2004: the marginals of
        a multivariate or elliptical matrix t are t with the same df), logistic and continuous
        Bernoulli heads; otherwise (mixtures, MAF, Bernoulli) the empirical percentiles of
        `num_samples` draws (default 1000) with the stateless `seed` (linear interpolation). NaN for `mse`,
        which models no spread.
        `level` may be a scalar tensor (a serving input): then it is checked when the graph runs.
        Raises:
          InputError: a number `level` outside (0, 1).
          InvalidArgumentError (when the graph runs): a tensor `level` outside (0, 1).
        """
        if tf.is_tensor(level):
            ok = tf.debugging.Assert((level > 0) & (level < 1), ["interval level must be in (0, 1), got", level])
            with tf.control_dependencies([ok]):
                level = tf.identity(level)
        elif not 0 < level < 1:
            raise InputError(f"interval level must be in (0, 1), got {level!r}")
        _, logits, comp = self._parts(dist)
        marginal = self.marginal(comp) if logits is None else None
        if marginal is not None:
            return tuple(self._to_image(q) for q in central_quantiles(marginal, level))
        return sample_interval(self.sample(dist, num_samples, seed=seed), level)

    def pixel_log_prob(self, dist: tfd.Distribution, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED,
                       num_samples: int = 200) -> tf.Tensor:
        """log p(x_pixel | input) of each pixel's marginal at images `x` `[B, H, W, C]`, nats, `[B, H, W, C]`.

        Exact where the head has closed-form marginals (`marginal`; for a mixture, the log-sum-exp
        over components of log w_k + log p_k(x_pixel)); per-pixel heads without a quantile
        (Bernoulli) use their pixel distribution; otherwise (MAF) a Gaussian kernel density
        estimate from `num_samples` draws (Silverman's bandwidth, at least 1e-3) with the stateless
        `seed`. NaN for `mse`, which models no spread.
        """
        _, logits, comp = self._parts(dist)
        marginal = self.marginal(comp)
        if marginal is None and isinstance(comp, tfd.Independent) and comp.event_shape == self.natural_event_shape:
            marginal = comp.distribution  # an independent per-pixel family without quantiles (Bernoulli)
        if marginal is not None:
            xn = tf.reshape(x, tf.concat([tf.shape(x)[:1], self.natural_event_shape], 0))
            if logits is None:
                return self._to_image(marginal.log_prob(xn))
            w = self._per_pixel(tf.nn.log_softmax(logits))
            return self._to_image(tf.reduce_logsumexp(w + marginal.log_prob(xn[:, None]), axis=1))
        samples = self.sample(dist, num_samples, seed=seed)  # [S, B, H, W, C]
        std = tf.math.reduce_std(samples, axis=0)
        h = tf.maximum(1.06 * std * num_samples ** -0.2, 1e-3)
        kernel = tfd.Normal(samples, h)
        return tf.reduce_logsumexp(kernel.log_prob(x), axis=0) - tf.math.log(float(num_samples))

    def pit(self, dist: tfd.Distribution, x: tf.Tensor, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED,
            num_samples: int = PIT_SAMPLES) -> tf.Tensor:
        """Probability integral transform of each pixel: u = F(x_pixel) under its marginal given the
        input, `[B, H, W, C]` in [0, 1], for images `x` `[B, H, W, C]` (dequantised pixels, so that F
        is continuous there). When x is drawn from the model itself, u ~ U[0, 1], so the fraction
        of pixels with |u - 1/2| <= level / 2 is the coverage of the central `level` interval
        (Dawid 1984; Gneiting, Balabdaoui & Raftery 2007, "Probabilistic forecasts, calibration and
        sharpness").

        Exact from the marginal's CDF (`marginal`) for normal, Student-t, logistic, low-rank,
        matrix and continuous-Bernoulli heads, and for mixtures of them the weighted component
        CDFs sum_k w_k F_k(x). Otherwise (MAF, Bernoulli) the randomised rank of x among
        `num_samples` draws (stateless `seed`): u = (#{s < x} + V (#{s = x} + 1)) / (S + 1),
        V ~ U[0, 1), uniform on [0, 1] when x is a draw of the same distribution (Czado, Gneiting &
        Held 2009, randomised PIT). NaN for `mse`, which models no spread.
        """
        _, logits, comp = self._parts(dist)
        marginal = self.marginal(comp) if self.is_density else None
        if marginal is not None:
            xn = tf.reshape(x, tf.concat([tf.shape(x)[:1], self.natural_event_shape], 0))
            if logits is None:
                return self._to_image(marginal.cdf(xn))
            w = self._per_pixel(tf.nn.softmax(logits))
            return self._to_image(tf.reduce_sum(w * marginal.cdf(xn[:, None]), axis=1))
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
        samples = self.sample(dist, num_samples, seed=seeds[0])  # [S, B, H, W, C]
        below = tf.reduce_sum(tf.cast(samples < x, x.dtype), axis=0)
        ties = tf.reduce_sum(tf.cast(samples == x, x.dtype), axis=0)
        v = tf.random.stateless_uniform(tf.shape(x), seeds[1], dtype=x.dtype)
        return (below + v * (ties + 1)) / (num_samples + 1)

    def interval_width(self, dist: tfd.Distribution, level: float = INTERVAL_LEVEL,
                       seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED, num_samples: int = INTERVAL_SAMPLES) -> tf.Tensor:
        """`hi - lo` of `interval`, `[B, H, W, C]`, pixel units (may exceed 1, or be inf)."""
        lo, hi = self.interval(dist, level, seed, num_samples)
        return hi - lo

    def conformal_interval(self, dist: tfd.Distribution, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED,
                           num_samples: int = INTERVAL_SAMPLES) -> tuple[tf.Tensor, tf.Tensor]:
        """The risk-controlled interval of each pixel, `(lo, hi)` each `[B, H, W, C]` in pixel units:
        the central `INTERVAL_LEVEL` interval `[l, u]` (`interval`) scaled about its midpoint by the
        head's `conformal_lambda` λ times the pixel's entry of `conformal_lambda_map` (K-RCPS: its
        group's λ) times the image's stratum's entry of `conformal_strata_lambdas` (`image_strata`),
        `m -/+ λ (u - l) / 2` with `m = (l + u) / 2` (for a normal head `mean -/+ λ z σ`: the
        heuristic interval of Angelopoulos et al., ICML 2022, "Image-to-Image Regression with
        Distribution-Free Uncertainty Quantification and Applications in Imaging", Section 2). λ = 1
        (the head's own 90 % interval) until `tfp_ae.calibration.fit_conformal` fits it; an infinite
        interval stays `(-inf, inf)`. NaN for `mse`, which models no spread."""
        lo, hi = self.interval(dist, INTERVAL_LEVEL, seed, num_samples)
        scale = getattr(self, "conformal_lambda", None)
        if scale is None:
            return lo, hi
        half = (hi - lo) / 2
        finite = tf.math.is_finite(half)
        mid = tf.where(finite, lo + half, tf.zeros_like(half))
        per_image = tf.gather(self.conformal_strata_lambdas, self.image_strata(half))
        half = half * tf.cast(scale * self.conformal_lambda_map, half.dtype) \
            * tf.reshape(tf.cast(per_image, half.dtype), [-1] + [1] * (half.shape.rank - 1))
        inf = tf.fill(tf.shape(half), tf.constant(float("inf"), half.dtype))
        return tf.where(finite, mid - half, -inf), tf.where(finite, mid + half, inf)

    def image_strata(self, half: tf.Tensor) -> tf.Tensor:
        """Each image's stratum for conformal risk control within strata (`--risk-strata`), `[B]` int32: the
        number of the head's `conformal_strata_edges` below the image's mean finite half-width of its 90 %
        intervals (`half` `[B, H, W, C]`, pixels); 0 for every image until fitted (edges at float32's max)."""
        finite = tf.math.is_finite(half)
        axes = list(range(1, half.shape.rank))
        width = tf.reduce_sum(tf.where(finite, half, tf.zeros_like(half)), axes) \
            / tf.maximum(tf.reduce_sum(tf.cast(finite, half.dtype), axes), 1.0)
        above = tf.cast(width[:, None] > tf.cast(self.conformal_strata_edges, half.dtype)[None, :], tf.int32)
        return tf.reduce_sum(above, axis=1)

    def _mixture_log_prob_at(self, inner, points):
        """Mixture log-density at each component's point: points `[B, K, *natural]` -> `[B, K]`."""
        nd = len(self.natural_event_shape)
        r = points.shape.rank
        perm = [r - nd - 1] + list(range(r - nd - 1)) + list(range(r - nd, r))
        lp = inner.log_prob(tf.transpose(points, perm))  # [K, B]
        return tf.transpose(lp, list(range(1, lp.shape.rank)) + [0])

    def mode(self, dist: tfd.Distribution) -> tf.Tensor:
        """Mode `[B, H, W, C]`. For a mixture: the mode of the component with the highest mixture
        density at its own mode (Ciobanu, Section 3), exact for K=1."""
        inner, logits, comp = self._parts(dist)
        modes = self.component_mode(comp)  # [B, (K,) *natural]
        if logits is not None:
            best = tf.argmax(self._mixture_log_prob_at(inner, modes), axis=-1)
            modes = tf.gather(modes, best, axis=1, batch_dims=1)
        return self._to_image(modes)

    def component_points(self, dist: tfd.Distribution) -> tuple[tf.Tensor, tf.Tensor]:
        """Every mixture component's point estimate and the mixture's log-density there.

        For Figure 4 of the paper (and the `component_means` / `component_log_prob` serving
        signatures): the mean of each component (the mode for t heads), clipped to [0, 1],
        `[B, K, H, W, C]`, and `log p_mixture(point_k)` in nats, `[B, K]`, at that clipped image
        (the image shown and saved, not the unclipped mean).
        Raises:
          ValueError: the head is not a mixture (K = 1).
        """
        inner, logits, comp = self._parts(dist)
        if logits is None:
            raise InputError(f"{self.head_name}: component_points needs a mixture (K > 1), got K=1")
        pts = self.component_mode(comp) if self.point == "mode" else self.component_mean(comp)
        pts = tf.clip_by_value(pts, 0.0, 1.0)
        return self._to_image(pts), self._mixture_log_prob_at(inner, pts)

    def point_estimate(self, dist: tfd.Distribution, seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tf.Tensor:
        """The paper's point estimate `[B, H, W, C]` clipped to [0, 1]: mean for normals and
        per-pixel heads, mode for t heads, mean of 50 samples for MAF (drawn with the stateless
        `seed`, so the estimate is reproducible; None draws fresh samples)."""
        if self.point == "mode":
            x = self.mode(dist)
        else:
            x = self.mean(dist, seed=seed)
        return tf.clip_by_value(x, 0.0, 1.0)

    def point_and_variance(self, dist: tfd.Distribution,
                           seed: tuple[int, int] | tf.Tensor = SAMPLE_SEED) -> tuple[tf.Tensor, tf.Tensor]:
        """`point_estimate` and `variance` together, both `[B, H, W, C]` (heads that estimate
        them from samples draw the samples once)."""
        return self.point_estimate(dist, seed=seed), self.variance(dist, seed=seed)

    def _tensor(self, dist):
        """The cheap tensor the Keras layer carries (`convert_to_tensor_fn`), `[B, H, W, C]`:
        never a sample, finite for every head. The mean, or for heads whose point estimate is the
        mode (t heads, whose mean does not exist for df <= 1) the mixture-weighted component modes
        (the mode for K = 1). `model.predict` returns `point_estimate` instead."""
        if self.point != "mode":
            return self.mean(dist)
        _, logits, comp = self._parts(dist)
        return self._weighted(logits, self._to_image(self.component_mode(comp)))

    def sample(self, dist: tfd.Distribution, num_samples: int, seed: tuple[int, int] | tf.Tensor | None = None) -> tf.Tensor:
        """`num_samples` draws of `dist`, `[num_samples, B, H, W, C]` (`seed`: int or stateless pair)."""
        return dist.sample(num_samples, seed=seed)
