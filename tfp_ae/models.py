"""Model builders: the paper's MLP and CNN autoencoders, ending in a head from `tfp_ae.heads`.

Every model is a `tf_keras.Model` from images `[B, H, W, C]` in [0, 1] to a distribution over
images, with `model.encoder` (images -> latent code), `model.decoder` (code -> distribution) and
`model.head` (the `Head` layer) attached.
"""
import math

from tfp_ae._tf import tfk
from tfp_ae.config import ARCHS
from tfp_ae.heads import make_head

L = tfk.layers


def _mlp(image_shape, head, latent_dim):
    """Ciobanu, Section 4: flatten, Dense(32, ReLU, Glorot uniform), Dense(params_size), head."""
    encoder = tfk.Sequential([L.InputLayer(image_shape), L.Flatten(),
                              L.Dense(latent_dim, "relu", kernel_initializer="glorot_uniform")],
                             name="encoder")
    decoder = tfk.Sequential([L.InputLayer((latent_dim,)),
                              L.Dense(head.size, kernel_initializer="glorot_uniform"), head], name="decoder")
    return encoder, decoder


def _take(n):
    return L.Lambda(lambda t: t[:, :n], name="take_params")


def _cnn(image_shape, head):
    """Ciobanu, Section 4: Conv2D(320, 3x3, same, ReLU), MaxPool 2x2 | Conv2D(F, 3x3, same),
    UpSampling 2x2, flatten, the first `params_size` values; F = ceil(params_size / (H*W))."""
    h, w, _ = image_shape
    filters = math.ceil(head.size / (h * w))
    encoder = tfk.Sequential([L.InputLayer(image_shape), L.Conv2D(320, 3, padding="same", activation="relu"),
                              L.MaxPool2D(2)], name="encoder")
    decoder = tfk.Sequential([L.InputLayer(encoder.output_shape[1:]), L.Conv2D(filters, 3, padding="same"),
                              L.UpSampling2D(2), L.Flatten(), _take(head.size), head], name="decoder")
    return encoder, decoder


def build_model(head, image_shape, num_components=1, arch="mlp", latent_dim=32):
    """Build a probabilistic autoencoder.

    Args:
      head: a head name from `tfp_ae.heads.HEADS` (or a `Head` instance).
      image_shape: `(H, W, C)`.
      num_components: K, mixture components of the head.
      arch: `mlp` or `cnn` (see `ARCHS`).
      latent_dim: MLP bottleneck width (32 in the paper).
    Returns:
      an uncompiled `tf_keras.Model` mapping images to a distribution; `model.head` is the head.
    Raises:
      ValueError: unknown head or architecture, invalid K.
    """
    image_shape = tuple(int(d) for d in image_shape)
    if isinstance(head, str):
        head = make_head(head, image_shape, num_components)
    if arch == "mlp":
        encoder, decoder = _mlp(image_shape, head, latent_dim)
    elif arch == "cnn":
        encoder, decoder = _cnn(image_shape, head)
    else:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    x = tfk.Input(image_shape, name="images")
    model = tfk.Model(x, decoder(encoder(x)), name=f"{arch}_{head.head_name}_k{head.num_components}")
    model.encoder, model.decoder, model.head = encoder, decoder, head
    return model


def compile_model(model, learning_rate=1e-3, jit_compile=False):
    """Compile with Adam (Keras defaults) on the head's loss (NLL in nats per image)."""
    model.compile(optimizer=tfk.optimizers.Adam(learning_rate), loss=model.head.loss, jit_compile=jit_compile)
    return model
