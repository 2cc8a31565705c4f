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
    return encoder, _dense_decoder(head, latent_dim)


def _dense_decoder(head, latent_dim):
    """Dense(latent_dim -> params_size, Glorot uniform), then the head."""
    return tfk.Sequential([L.InputLayer((latent_dim,)), L.Dense(head.size, kernel_initializer="glorot_uniform"),
                           head], name="decoder")


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


def _cnn_dense(image_shape, head, latent_dim):
    """The paper's CNN front end with a decoder that learns: Conv2D(320, 3x3, same, ReLU),
    MaxPool 2x2, a 1x1 Conv2D to 16 channels (ReLU), flatten, Dense(latent_dim, ReLU) | Dense to
    exactly `params_size`, head. Every decoder output is used (the paper's `cnn` discards the conv
    outputs beyond `params_size`, and a 2x2 upsampling makes its means blocky); the 1x1 reduction
    keeps the dense layer at 16*(H/2)*(W/2)*latent_dim weights instead of 320*(H/2)*(W/2)*params_size
    (about 100k instead of 98M for a 28x28 `normal_diag`)."""
    encoder = tfk.Sequential([L.InputLayer(image_shape), *cnn_features(),
                              L.Dense(latent_dim, "relu", kernel_initializer="glorot_uniform")], name="encoder")
    return encoder, _dense_decoder(head, latent_dim)


def cnn_features():
    """The `cnn_dense` front end: Conv2D(320, 3x3, same, ReLU), MaxPool 2x2, Conv2D(16, 1x1, ReLU), flatten."""
    return [L.Conv2D(320, 3, padding="same", activation="relu"), L.MaxPool2D(2),
            L.Conv2D(16, 1, activation="relu"), L.Flatten()]


def build_model(head, image_shape, num_components=1, arch="mlp", latent_dim=32):
    """Build a probabilistic autoencoder.

    Args:
      head: a head name from `tfp_ae.heads.HEADS` (or a `Head` instance).
      image_shape: `(H, W, C)`.
      num_components: K, mixture components of the head.
      arch: `mlp`, `cnn` (the paper's, faithful) or `cnn_dense` (a CNN whose decoder learns).
      latent_dim: bottleneck width of `mlp` and `cnn_dense` (32 in the paper).
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
    elif arch == "cnn_dense":
        encoder, decoder = _cnn_dense(image_shape, head, latent_dim)
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
