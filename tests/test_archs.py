"""Architectures: the paper's CNN parameter counts, and `tfp-ae train` for every head x K on the MLP and every
parameter layout on each convolutional architecture."""
import json

import numpy as np
import pytest

from tfp_ae._tf import tf, tfk
from tfp_ae.architectures import BiasActivation
from tfp_ae.cli import main
from tfp_ae.config import ARCHS
from tfp_ae.heads import HEADS
from tfp_ae.models import build_model

# Paper Table 2 (CNN, 28x28): conv 3x3x320 (3200) + conv 3x3x320xF (2881 F), F = ceil(P / 784).
PAPER_CNN = {("matrix_normal_identity", 1): 8962, ("matrix_normal_diag", 1): 8962,
             ("matrix_normal_full", 1): 11843, ("matrix_t_identity", 1): 8962, ("matrix_t_diag", 1): 8962,
             ("matrix_t_full", 1): 11843, ("matrix_normal_identity", 10): 34891,
             ("matrix_normal_diag", 10): 34891, ("matrix_normal_full", 10): 63701,
             ("matrix_t_identity", 10): 34891, ("matrix_t_diag", 10): 34891, ("matrix_t_full", 10): 63701}


@pytest.mark.parametrize("name,k", list(PAPER_CNN))
def test_cnn_parameter_counts_match_paper(name, k):
    ours = build_model(name, (28, 28, 1), k, arch="cnn").count_params()
    if (name, k) == ("matrix_normal_identity", 1):
        # the paper's dead K=1 mixture logit makes P = 785 > 784: two conv filters instead of one
        assert ours == PAPER_CNN[name, k] - 2881
    else:
        assert ours == PAPER_CNN[name, k]


def test_cnn_dense_uses_every_decoder_output():
    model = build_model("normal_diag", (28, 28, 1), arch="cnn_dense")
    assert model.decoder.layers[0].units == model.head.size == 2 * 784
    assert model.encoder.output_shape == (None, 32)


@pytest.mark.parametrize("arch", ["cnn", "cnn_dense"])
def test_cnn_front_end_is_conv_relu_then_max_pool(arch):
    """The first block (conv without bias, pool, bias + ReLU) is the paper's Conv2D(320, ReLU) ->
    MaxPool 2x2: the same output bit for bit, the same gradients up to float rounding.
    The kernel is seeded: with some kernels, adding the bias rounds two values of a pooling window of
    the reference to the same float, and the reference's max-pool gradient then goes to the first
    of the two, ours to the larger (about one kernel in ten has such a tie)."""
    tfk.utils.set_random_seed(0)
    model = build_model("matrix_normal_diag", (28, 28, 1), arch=arch)
    conv, pool, bias = model.encoder.layers[:3]
    assert isinstance(bias, BiasActivation) and not conv.use_bias
    rng = np.random.default_rng(0)
    bias.bias.assign(rng.normal(size=320).astype(np.float32) * 0.1)  # a bias that changes which units are 0
    ref = tfk.Sequential([tfk.layers.InputLayer((28, 28, 1)), tfk.layers.Conv2D(320, 3, padding="same", activation="relu"),
                          tfk.layers.MaxPool2D(2)])
    ref.layers[0].set_weights([conv.kernel.numpy(), bias.bias.numpy()])
    x = tf.constant(rng.uniform(size=(8, 28, 28, 1)).astype(np.float32))
    w = tf.constant(rng.normal(size=(8, 14, 14, 320)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        ours = bias(pool(conv(x)))
        theirs = ref(x)
        loss_ours, loss_theirs = tf.reduce_sum(ours * w), tf.reduce_sum(theirs * w)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert 0.2 < float(tf.reduce_mean(tf.cast(ours > 0, tf.float32))) < 0.9  # ReLU active and inactive
    for a, b in zip(tape.gradient(loss_ours, [conv.kernel, bias.bias]), tape.gradient(loss_theirs, ref.weights)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * float(tf.reduce_max(tf.abs(b))))




def layout_kind(name):
    """What a decoder sees of a head (`Head.pixel_layout`): the widths of its per-pixel parameters and whether it
    has parameters outside the pixels (a df, a dense or matrix scale)."""
    widths, n_global = HEADS[name].pixel_layout((8, 8, 1))
    return widths, n_global > 0


def one_head_per_layout(arch):
    """The first head (registry order) of each `layout_kind` that `arch` takes (`conv` refuses D x D scales)."""
    kinds = {}
    for name, cls in HEADS.items():
        if not (arch == "conv" and cls.full_covariance):
            kinds.setdefault(layout_kind(name), name)
    return list(kinds.values())


# every head and K on the MLP; on each convolutional architecture one head (K = 1) of each parameter layout,
# and three mixtures: the architectures differ before the head (what they see of it is its layout), the heads
# after it (every head with every K is trained through the MLP here)
CASES = [(h, k, "mlp") for h, c in HEADS.items() for k in ([1, 10] if c.mixable else [1])]
CASES += [(h, 1, a) for a in ARCHS if a != "mlp" for h in one_head_per_layout(a)]
CASES += [("normal_diag", 10, "cnn"), ("matrix_t_full", 10, "cnn_dense"), ("student_t_lowrank", 3, "conv")]


@pytest.mark.parametrize("head,k,arch", CASES)
def test_cli_every_head_k_and_arch_one_epoch(head, k, arch, tmp_path):
    out = tmp_path / "run"
    main(["train", "--dataset", "digits", "--head", head, "--components", str(k), "--arch", arch,
          "--epochs", "1", "--train-limit", "256", "--eval-images", "64", "--out", str(out),
          "--no-fid", "--no-extra-figures"])  # FID and Figures 3/4 are tested in test_fid / test_figures
    m = json.loads((out / "metrics.json").read_text())
    assert (m["head"], m["components"], m["arch"]) == (head, k, arch)
    assert np.isfinite(m["test_nll_nats"]) and 0 <= m["l2_percent"] <= 100
    assert (out / "reconstructions.png").stat().st_size > 1000
