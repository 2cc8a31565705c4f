"""The small Keras layers the architectures are built of, registered with Keras (`tfp_ae>Name`) so
saved models load after `import tfp_ae`."""
from __future__ import annotations

import math

from tfp_ae._tf import tf, tfk
from tfp_ae.heads import register

L = tfk.layers


@register
class StopGradient(L.Layer):
    """`tf.stop_gradient`: the input passes forward, no gradient flows back to it."""

    def call(self, x: tf.Tensor):
        return tf.stop_gradient(x)


@register
class LeadingActivation(L.Layer):
    """`activation` on the first `n` features of the last axis, the others passed unchanged: a location
    output in (0, 1) (`sigmoid`) ahead of a head's other parameters."""

    def __init__(self, n: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.n, self.activation = int(n), activation
        self._fn = tfk.activations.get(activation)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.concat([self._fn(x[..., :self.n]), x[..., self.n:]], axis=-1)

    def get_config(self) -> dict:
        return dict(super().get_config(), n=self.n, activation=self.activation)


@register
class BiasActivation(L.Layer):
    """`activation(x + bias)` with one bias per channel (the last axis), initialised to zeros as
    Conv2D's: `[..., C]` -> `[..., C]`."""

    def __init__(self, activation: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.activation = tfk.activations.get(activation)

    def build(self, input_shape: tf.TensorShape):
        self.bias = self.add_weight(name="bias", shape=[input_shape[-1]], initializer="zeros")
        super().build(input_shape)

    def call(self, x: tf.Tensor):
        return self.activation(tf.nn.bias_add(x, tf.cast(self.bias, x.dtype)))

    def get_config(self):
        return dict(super().get_config(), activation=tfk.activations.serialize(self.activation))


@register
class TakeFirst(L.Layer):
    """The first `n` values of the last axis, `[B, m]` -> `[B, n]` (the faithful `cnn` discards the
    conv outputs beyond `params_size`)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x: tf.Tensor):
        return x[:, :self.n]

    def get_config(self):
        return dict(super().get_config(), n=self.n)


@register
class ParameterMaps(L.Layer):
    """A head's flat parameters `[B, size]` from parameter maps and global values
    (`tfp_ae.architectures.ParamLayout`, declared by the head's `pixel_layout`).

    Inputs: `maps` `[B, H, W, C * K * S]` (S = sum(widths); channel c * K * S + k * S + s is segment
    value s of component k at image channel c) and, when the layout has global values, `globals`
    `[B, K + K * n_global]` (K > 1: the mixture logits first) or `[B, n_global]` (K = 1). Output: the
    head's layout, `[logits (K > 1), then per component: each segment [H, W, C, w] flattened, its
    n_global values]`. Only reshapes, slices and one concatenation."""

    def __init__(self, image_shape: tuple[int, int, int], widths: tuple[int, ...], n_global: int,
                 num_components: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.widths, self.n_global, self.num_components = tuple(int(w) for w in widths), int(n_global), int(num_components)

    def call(self, inputs):
        k, g = self.num_components, self.n_global
        has_globals = g > 0 or k > 1
        maps, globals_ = inputs if has_globals else (inputs, None)
        d = math.prod(self.image_shape)
        s = sum(self.widths)
        m = tf.reshape(maps, [-1, d, k * s])  # pixel values x (component, segment value): 3-D, as TFLite takes
        parts = [globals_[:, :k]] if k > 1 else []
        offset = k if k > 1 else 0
        for j in range(k):
            start = j * s
            for w in self.widths:
                parts.append(tf.reshape(m[:, :, start:start + w], [-1, d * w]))
                start += w
            if g:
                parts.append(globals_[:, offset + j * g:offset + (j + 1) * g])
        return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]

    def get_config(self):
        return dict(super().get_config(), image_shape=list(self.image_shape), widths=list(self.widths),
                    n_global=self.n_global, num_components=self.num_components)
