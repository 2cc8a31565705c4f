import os
import re

# Several test processes (pytest-xdist) may share one GPU: each takes memory as it needs it instead
# of all of it (set before TensorFlow is imported; inherited by the subprocesses tests start).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfp_ae  # noqa: F401,E402  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tfp_ae.data import dataset_available  # noqa: E402


def require_dataset(name):
    """Skip when `name` is absent, unless TFP_AE_REQUIRE_DATA=1 (CI), where absence fails."""
    if dataset_available(name):
        return
    if os.environ.get("TFP_AE_REQUIRE_DATA") == "1":
        pytest.fail(f"dataset {name} is required (TFP_AE_REQUIRE_DATA=1) but was not found; "
                    "set TFP_AE_DATA_DIR")
    pytest.skip(f"dataset {name} not available (set TFP_AE_DATA_DIR)")


# A console line that is not the package's own: TensorFlow's C++ log lines, absl's notice, Python warnings
# (TensorFlow Lite's deprecation), TensorFlow Lite's INFO lines (issues 40 and 48).
FOREIGN_LINE = re.compile(r"^([IWEF]\d{4} |WARNING|INFO|.*[Dd]eprecat|.*Warning:|.*XNNPACK|.*absl)", re.M)


def write_png(path, x):
    """Write an image in [0, 1] (`[H, W]`, `[H, W, 1]` or `[H, W, 3]`; bool for a mask) as an 8-bit PNG,
    creating its folder."""
    from PIL import Image
    x = np.asarray(x, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round((x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """FID classifiers trained by the tests go to a temporary cache, not the user's ~/.cache."""
    if "TFP_AE_CACHE_DIR" not in os.environ:
        os.environ["TFP_AE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
        yield
        del os.environ["TFP_AE_CACHE_DIR"]
    else:
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def digits():
    from tfp_ae.data import load_dataset
    return load_dataset("digits")
