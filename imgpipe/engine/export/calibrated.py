"""Which network an export holds: the trained one (batch norms folded), then its fitted temperature, inside its test-time augmentation.

A run whose fitted temperature passed `imgpipe.understand.calibration.serving_decision`
(`metrics.json`'s `calibration`, `used: true`; written by the classification
task) exports calibrated probabilities unless `export.calibrated` is false.
`export.tta` then wraps that network in `imgpipe.models.test_time_augmentation`
(tasks whose `TaskSpec.tta_output` says how). `imgpipe.json` and each format's
contract.json say which it is.

Example:
    >>> network, entries = served_network(model, metrics.get("calibration"), recipe)
    >>> entries["temperature_scaling"], entries["tta"]
    ({'temperature': 1.62, 'fitted_on': 32, 'inside': ...}, 'flip')
"""

import json
import pathlib

from imgpipe.engine.registry import TASKS
from imgpipe.models.fold_batch_norm import fold_batch_norm
from imgpipe.models.temperature_scaling import with_temperature
from imgpipe.models.test_time_augmentation import with_test_time_augmentation

METADATA_KEY = "temperature_scaling"
TTA_KEY = "tta"


def served_network(model, calibration, recipe):
    """(the network to export, its imgpipe.json entries) for a run's `calibration` record (None: none fitted).

    The temperature goes inside each view, before the views are averaged: it was fitted on the
    network's single-pass probabilities of validation images, which is what each view's pass is
    (a mirror or a 0.83-1.17 zoom is within what training's augmentation showed the network),
    while an average of views is softer than one pass and was never fitted. Averaging
    probabilities that are each calibrated also keeps the answer a probability distribution.
    """
    network, entries = fold_batch_norm(model), {METADATA_KEY: None}
    if recipe.export.calibrated and calibration and calibration.get("used"):
        entries = {METADATA_KEY: {"temperature": calibration["temperature"], "fitted_on": calibration["fitted_on"],
                                  "inside": "the network's last layer: softmax(log(p) / temperature)"}}
        network = with_temperature(network, calibration["temperature"])
    mode = recipe.export.tta
    if mode != "none":
        per_pixel = TASKS.spec(recipe.task).tta_output == "per_pixel"
        network = with_test_time_augmentation(network, mode, per_pixel=per_pixel)
    return network, {**entries, TTA_KEY: mode}


def run_calibration(run_dir):
    """The `calibration` record of a finished run folder's metrics.json (None: unfinished, or none fitted)."""
    path = pathlib.Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text()).get("calibration")
    except (OSError, ValueError):
        return None
