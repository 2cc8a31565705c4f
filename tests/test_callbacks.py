"""`ImageSummaries`: what it writes to TensorBoard, read back from the event file."""
import numpy as np
import pytest
import tensorflow as tf

from tfp_ae.callbacks import ImageSummaries, colour_map
from tfp_ae.heads import bits_per_dim
from tfp_ae.models import build_model, compile_model

tensorboard = pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read(log_dir):
    events = EventAccumulator(str(log_dir / "images"), size_guidance={"tensors": 0})
    events.Reload()
    return events


@pytest.mark.parametrize("head,k", [("normal_diag", 3), ("bernoulli", 1)])
def test_writes_images_and_bits_per_dim_every_epoch(head, k, digits, tmp_path):
    model = compile_model(build_model(head, digits.image_shape, k), steps_per_execution=8)
    cb = ImageSummaries(tmp_path, digits.x_test, max_images=5, seed=3)
    model.fit(digits.x_train[:256], digits.x_train[:256], epochs=2, batch_size=64, verbose=0, callbacks=[cb])
    events = read(tmp_path)
    want = {"inputs", "point_estimates", "interval_width", "prior_samples"}
    want |= {"components"} if k > 1 else set()
    want |= {"bits_per_dim"} if model.head.is_density else set()
    assert set(events.Tags()["tensors"]) == want
    for tag in want - {"bits_per_dim"}:
        assert [e.step for e in events.Tensors(tag)] == [0, 1]
        # an image summary is [width, height, 5 encoded PNGs]
        png = tf.io.decode_png(tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto)[2]).numpy()
        h, w = digits.image_shape[:2]
        assert png.shape[:2] == (h, w * k if tag == "components" else w), tag
    if model.head.is_density:
        x_deq = cb._x_deq.numpy()
        want_bpd = bits_per_dim(-np.mean(model.log_prob(x_deq).numpy()), 64)
        got = tf.make_ndarray(events.Tensors("bits_per_dim")[-1].tensor_proto)
        np.testing.assert_allclose(got, want_bpd, rtol=1e-5)
    assert len(cb.seconds) == 2


def test_colour_map_is_a_fixed_scale():
    maps = np.array([0.0, 0.5, 1.0, 3.0, np.nan], np.float32).reshape(1, 1, 5, 1)
    rgb = colour_map(maps).numpy()[0, 0]
    np.testing.assert_allclose(rgb[3], rgb[2])      # clipped at 1
    np.testing.assert_allclose(rgb[4], rgb[2])      # not finite: the top colour
    assert not np.allclose(rgb[0], rgb[1])


def test_bad_images_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ImageSummaries images"):
        ImageSummaries(tmp_path, np.full((4, 8, 8, 1), 255.0, np.float32))
