"""The speed work changed no number: every head's NLL at initialisation and after one epoch equals
the value computed on the commit before it (tests/data/nll_reference.json, see nll_reference.py)."""
import json

import numpy as np
from nll_reference import REFERENCE, compute

# the mixtures (K = 3) of a head of each kind of scale the speed work touched: per-pixel, the packed full
# scale_tril (vector and matrix); every other mixture is the same MixtureSameFamily over its K = 1 component,
# whose number is checked (a fit traces a training graph, 5-10 s a head here)
MIXTURES = ("normal_diag_k3", "normal_full_k3", "student_t_full_k3", "matrix_t_full_k3")


def test_nll_unchanged_since_before_the_speed_work():
    want = {key: v for key, v in json.loads(REFERENCE.read_text()).items()
            if key.endswith("_k1") or key in MIXTURES}
    got = compute(keys=set(want))   # heads added since have no "before"
    assert set(got) == set(want) and len(want) == 17 + len(MIXTURES)
    for key in want:  # 1e-5 relative; continuous_bernoulli's NLL is near 0, hence the small atol
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
