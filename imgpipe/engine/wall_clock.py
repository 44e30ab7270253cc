"""The clock of history.csv's `wall_seconds` column: seconds since the command started, at each epoch's end.

Time-to-accuracy (DAWNBench, the CIFAR-10 speed-run records) is the wall time
from the command a user types until the validation metric first reaches a
value; start-up, data reading and every epoch's validation count. So from the
CLI the clock starts when the `imgpipe` process started (read from the
operating system, before Python imported anything); from Python it starts when
`imgpipe.run` is called, since a notebook's process may be hours old. A resumed
run's new epochs count from the command that resumed it.

Example:
    >>> clock = WallSecondsLogger(started=process_start_time())   # a callback, before the CSVLogger
    >>> time_to_best(read_history("runs/classify/classify/history.csv"), ("val_loss", "min"))
    {'best_epoch': 12, 'best_epoch_wall_seconds': 85.3}
"""

import math
import os
import time

import keras

COLUMN = "wall_seconds"


def process_start_time():
    """`time.time()` at the moment this process started; the time of this call where the OS does not say."""
    try:
        with open("/proc/self/stat") as handle:
            # Field 22 is the start in clock ticks since boot; the command name (field 2) may hold spaces.
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class WallSecondsLogger(keras.callbacks.Callback):
    """Adds `wall_seconds` (seconds since `started`) to each epoch's logs, so the CSVLogger after it records it.

    Args:
        started: `time.time()` when the command started.
    """

    def __init__(self, started):
        super().__init__()
        self.started = float(started)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[COLUMN] = round(time.time() - self.started, 2)


def time_to_best(history, monitor):
    """The epoch (1-based) with the best `monitor` value in `history`, and its `wall_seconds`.

    Args:
        history: {column: [values]}, as `read_history` gives it.
        monitor: (metric, 'min' | 'max'), the task's `monitor`.

    Returns:
        dict with `best_epoch` and `best_epoch_wall_seconds` (None where history.csv lacks the column), or {}
        when the monitored metric was never recorded.
    """
    metric, mode = monitor
    values = [value for value in history.get(metric, []) if not math.isnan(value)]
    if not values:
        return {}
    best = history[metric].index(min(values) if mode == "min" else max(values))
    seconds = history.get(COLUMN, [])
    wall = seconds[best] if best < len(seconds) and not math.isnan(seconds[best]) else None
    return {"best_epoch": int(history["epoch"][best]) + 1 if "epoch" in history else best + 1,
            "best_epoch_wall_seconds": wall}
