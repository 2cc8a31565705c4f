"""Fixed-seed NLLs of every head, for the "numerical results unchanged by the speed work" test.

`compute()` uses only APIs that predate the speed work (`build_model`, `compile_model`, plain
`model.fit` on arrays, `log_prob`), so it runs unchanged on the commit before it. The stored
reference `data/nll_reference.json` was written by running this file on commit 77b5877 (before
the MAF sampler, the packed `scale_tril`, XLA and the pipeline changes):

    git worktree add /tmp/before 77b5877 && PYTHONPATH=/tmp/before python tests/nll_reference.py
"""
import json
import sys
from pathlib import Path

REFERENCE = Path(__file__).parent / "data" / "nll_reference.json"


def compute(keys=None):
    """{f"{head}_k{K}": [NLL at initialisation, NLL after one epoch]} in nats per image (mean over
    100 digits test images); weights from `set_random_seed(0)`, one epoch of Adam on 512 training
    images in order (batch 128, no shuffling). `keys`: only these `f"{head}_k{K}"` (default: every head, K = 1
    and, for heads that mix, K = 3)."""
    import tf_keras as tfk

    from tfp_ae._tf import tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
    from tfp_ae.data import load_dataset
    from tfp_ae.heads import HEADS
    from tfp_ae.models import build_model, compile_model
    d = load_dataset("digits")
    x_train, x_test = d.x_train[:512], d.x_test[:100]
    out = {}
    for name, cls in HEADS.items():
        for k in ([1, 3] if cls.mixable else [1]):
            if keys is not None and f"{name}_k{k}" not in keys:
                continue
            tfk.utils.set_random_seed(0)
            model = compile_model(build_model(name, x_test.shape[1:], k))
            before = -float(tf.reduce_mean(model(x_test).log_prob(x_test)))
            model.fit(x_train, x_train, batch_size=128, epochs=1, shuffle=False, verbose=0)
            after = -float(tf.reduce_mean(model(x_test).log_prob(x_test)))
            out[f"{name}_k{k}"] = [before, after]
    return out


if __name__ == "__main__":
    result = compute()
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {len(result)} heads to {path}")
