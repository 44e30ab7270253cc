"""`train.time_budget`: training that ends in time, with its learning-rate decay planned to end with it.

Users who would otherwise pick Ultralytics know its `time=` argument: train
for at most so long, whatever the epochs. Keras' `fit` takes a number of
epochs. Here, at the end of every epoch, the epochs that still fit before
the deadline are counted from the time the epochs of this phase took (the
first one, which traces the model and decodes the images, counts only while
it is the only one). The cosine decay is then planned to end with the last of
them (`PlannedCosineDecay.plan`), so the run ends on a low rate instead of
being cut off at a high one; when no further epoch fits, training stops
there. The budget never adds epochs beyond `train.epochs`. It counts from the
command's start (the clock of history.csv's `wall_seconds`) to the end of the
last epoch; the reports and the export come after it. A resumed run counts
from its own start and keeps the plan its phase had.

`train.time_budget` is read by the recipe (`imgpipe.engine.recipe.duration`), as seconds.

Example:
    >>> budget = TimeBudget(600.0, started=time.time())
    >>> callbacks = [budget.callback(schedule, steps_per_epoch=9, first_epoch=0, last_epoch=30, plan_file=path)]
"""

import json
import logging
import math
import time

import keras

from imgpipe.engine.writable import write_atomically

log = logging.getLogger("imgpipe")

class TimeBudget:
    """The deadline of one command's training, shared by its phases (warm-up, fine-tuning).

    Args:
        seconds: the budget.
        started: `time.time()` the budget counts from (the command's start).
    """

    def __init__(self, seconds, started):
        self.seconds = seconds
        self.deadline = started + seconds
        self.epoch_seconds = None  # the latest estimate of an epoch's time, from the phase that ran last
        self.stopped_after = None  # the number of epochs run when the budget stopped training

    def room_for_an_epoch(self):
        """False once the next epoch would end after the deadline (unknown before an epoch has run: True)."""
        return self.epoch_seconds is None or time.time() + self.epoch_seconds <= self.deadline

    def stop(self, epochs_run):
        self.stopped_after = epochs_run
        log.info("time budget %s: training stops after epoch %d, as the next would end after it",
                 describe_seconds(self.seconds), epochs_run)

    def callback(self, schedule, steps_per_epoch, first_epoch, last_epoch, plan_file):
        """The Keras callback of the phase from `first_epoch` to `last_epoch` (epoch counts), whose rate is
        `schedule`; its plan is kept in `plan_file` for a resumed phase."""
        return PhaseBudget(self, schedule, steps_per_epoch, first_epoch, last_epoch, plan_file)

    def record(self):
        """What metrics.json says of it."""
        return {"seconds": self.seconds, "stopped_after_epoch": self.stopped_after}


class PhaseBudget(keras.callbacks.Callback):
    """At each epoch's end: plans the phase's decay to end with the last epoch that fits, or stops training."""

    def __init__(self, budget, schedule, steps_per_epoch, first_epoch, last_epoch, plan_file):
        super().__init__()
        self.budget, self.schedule, self.steps_per_epoch = budget, schedule, steps_per_epoch
        self.first_epoch, self.last_epoch, self.plan_file = first_epoch, last_epoch, plan_file
        self.epoch_ends = []

    def on_train_begin(self, logs=None):
        if self.plan_file.exists():  # a resumed phase: the rate goes on along the plan it had
            self.schedule.plan(json.loads(self.plan_file.read_text())["total_steps"])
        self.epoch_ends = [time.time()]

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        self.epoch_ends.append(now)
        durations = [end - start for start, end in zip(self.epoch_ends, self.epoch_ends[1:])]
        self.budget.epoch_seconds = sum(durations[1:]) / len(durations[1:]) if len(durations) > 1 else durations[0]
        epochs_run = epoch + 1
        fitting = math.floor((self.budget.deadline - now) / self.budget.epoch_seconds)
        planned = min(self.last_epoch, epochs_run + fitting)
        if planned <= epochs_run:
            if epochs_run < self.last_epoch:
                self.model.stop_training = True
                self.budget.stop(epochs_run)
            return
        total_steps = (planned - self.first_epoch) * self.steps_per_epoch
        if total_steps != self.schedule.planned_total_steps:
            self.schedule.plan(total_steps)
            plan = json.dumps({"total_steps": total_steps, "last_epoch": planned})
            write_atomically(self.plan_file, lambda partial: partial.write_text(plan))


def describe_seconds(seconds):
    """90 -> '90 s', 600 -> '10 min', 5400 -> '1.5 h'."""
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
