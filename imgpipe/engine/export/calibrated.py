"""Which network an export holds: the trained one, or the same followed by its fitted temperature.

A run whose fitted temperature passed `imgpipe.understand.calibration.serving_decision`
(`metrics.json`'s `calibration`, `used: true`; written by the classification
task) exports calibrated probabilities unless `export.calibrated` is false;
`imgpipe.json` and each format's contract.json say which it is.

Example:
    >>> network, entries = served_network(model, metrics.get("calibration"), recipe)
    >>> entries["temperature_scaling"]
    {'temperature': 1.62, 'fitted_on': 32}
"""

import json
import pathlib

from imgpipe.models.temperature_scaling import with_temperature

METADATA_KEY = "temperature_scaling"


def served_network(model, calibration, recipe):
    """(the network to export, its imgpipe.json entries) for a run's `calibration` record (None: none fitted)."""
    if not recipe.export.calibrated or not calibration or not calibration.get("used"):
        return model, {METADATA_KEY: None}
    entries = {"temperature": calibration["temperature"], "fitted_on": calibration["fitted_on"],
               "inside": "the network's last layer: softmax(log(p) / temperature)"}
    return with_temperature(model, calibration["temperature"]), {METADATA_KEY: entries}


def run_calibration(run_dir):
    """The `calibration` record of a finished run folder's metrics.json (None: unfinished, or none fitted)."""
    path = pathlib.Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text()).get("calibration")
    except (OSError, ValueError):
        return None
