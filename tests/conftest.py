"""Shared fixtures: tiny generated image folders, an in-process CLI, two logical CPUs.

The CPU is split into two logical devices before TensorFlow starts, so the
MirroredStrategy path runs in CI without GPUs. IMGPIPE_OFFLINE=1 keeps every
test off the network (imgpipe.engine.weights never downloads).
"""

import atexit
import collections
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test touches the network: ImageNet weights come from files the tests make (or ../shared/weights).
os.environ["IMGPIPE_OFFLINE"] = "1"
os.environ.pop("IMGPIPE_WEIGHTS_DIR", None)
# Offline, imgpipe still uses weights it or Keras fetched before (~/.cache/imgpipe, ~/.keras/models): each test
# process gets empty caches of its own, removed when it ends.
for _variable in ("KERAS_HOME", "IMGPIPE_CACHE"):
    os.environ[_variable] = tempfile.mkdtemp(prefix=f"imgpipe-tests-{_variable.lower()}-")
    atexit.register(shutil.rmtree, os.environ[_variable], ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests run first, each file's tests in their written order.

    `make test` hands whole files to two processes (`--dist loadfile --no-loadscope-reorder`) in
    this order, so that the long files start at once and the short ones fill in at the end. The
    gain was not measurable against this machine's 20 % run-to-run spread (667 s against 630 s).
    """
    slow_tests = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])


SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_image(path, colour, size=16, mode="RGB", format=None):
    """A flat-coloured image with a darker square, so classes are learnable."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), colour, np.uint8)
    pixels[size // 4: size // 2, size // 4: size // 2] //= 2
    Image.fromarray(pixels).convert(mode).save(path, format=format)
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def class_folder(tmp_path):
    """tmp/images/<red|green|blue>/*.png, 10 images of 16x16 per class."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for index in range(10):
            jitter = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
            write_image(root / name / f"{name}_{index}.png", jitter)
    return root


@pytest.fixture
def fast_recipe_args(tmp_path):
    """Overrides that keep a test run to a few seconds (no robustness card, TensorBoard logs or suspect
    labels: together 0.3 to 0.9 s of a 4 s run; add export.enabled=false where the export is not looked at)."""
    return [
        "train.epochs=1",
        "train.batch_size=8",
        "train.verbose=0",
        "data.image_size=16",
        "evaluate.robustness=false",
        "train.tensorboard=false",
        "train.suspect_labels=none",
        f"train.run_dir={tmp_path / 'run'}",
        f"export.root={tmp_path / 'saved_models'}",
    ]


@pytest.fixture
def cli(monkeypatch, capsys):
    """Runs `imgpipe ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from imgpipe.cli import entry_point

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["imgpipe", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            entry_point()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return invoke


SHARED_WEIGHTS = SHARED_DATA.parent / "weights"


@pytest.fixture
def shared_weights():
    """../shared/weights (real ImageNet weights), or a skip where a clone has none."""
    if not SHARED_WEIGHTS.is_dir():
        pytest.skip(f"{SHARED_WEIGHTS} is absent (only development machines have ../shared/weights)")
    return SHARED_WEIGHTS


@pytest.fixture
def shared_data():
    """../shared/data, or a skip where a clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only development machines have ../shared/data)")
    return SHARED_DATA
