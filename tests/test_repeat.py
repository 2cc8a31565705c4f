"""Runs repeat exactly: every random draw of training is stateless, a function of (seed, epoch,
step), so two identical runs are bit-identical on CPU and a run killed and resumed in a new
process equals the uninterrupted one (issue 16)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfp_ae.config import RunConfig
from tfp_ae.data import load_dataset
from tfp_ae.rundir import STATE_FILE
from tfp_ae.train import fit

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.getcwd())
KINDS = {
    "ae": dict(model="ae", head="normal_diag"),
    "ae_dequantize": dict(model="ae", head="normal_diag", dequantize=True),
    "vae": dict(model="vae", head="normal_diag"),
    "vae_iwae": dict(model="vae", head="normal_diag", objective="iwae", iw_samples=3),
    "ae_faithful": dict(model="ae", head="normal_diag", loss="faithful", dispersion_units=16, dequantize=True),
    "ae_beta_nll": dict(model="ae", head="logistic", loss="beta_nll", beta=0.7),
    "ae_conv": dict(model="ae", head="normal_diag", arch="conv", dequantize=True),
}


def config(kind, out=None):
    return RunConfig(**dict(KINDS[kind], dataset="digits", epochs=3, train_limit=384, verbose=0, seed=11,
                            out=str(out) if out else None))


def train(cfg, x, run_dir=None):
    model, history, _ = fit(cfg, x, 17, run_dir=run_dir)
    return history["loss"], model.get_weights()


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits").x_train[:384]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_identical_runs_are_bit_identical_and_a_resumed_run_is_the_same_run(kind, images, tmp_path):
    losses, weights = train(config(kind), images)
    again, weights_again = train(config(kind), images)
    assert losses == again  # bit for bit
    for a, b in zip(weights, weights_again):
        np.testing.assert_array_equal(a, b)

    # the same run killed (SIGKILL) after its first epoch, then resumed in this process
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        import tfp_ae
        from tfp_ae._tf import tfk
        from tfp_ae.config import RunConfig
        from tfp_ae.data import load_dataset
        from tfp_ae.train import fit

        class Kill(tfk.callbacks.Callback):  # runs after the package's checkpointing callback
            def on_epoch_end(self, epoch, logs=None):
                os.kill(os.getpid(), signal.SIGKILL)

        fit(RunConfig.from_dict({config(kind, run_dir).to_dict()!r}), load_dataset("digits").x_train[:384], 17,
            callbacks=[Kill()], run_dir={str(run_dir)!r})
    """)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(json.loads((run_dir / STATE_FILE).read_text())["epochs"]) == 1
    resumed, weights_resumed = train(config(kind, run_dir), images, run_dir)
    np.testing.assert_allclose(resumed, losses, rtol=1e-6, atol=0)
    for a, b in zip(weights_resumed, weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
