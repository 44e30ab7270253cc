"""`train.time_budget`: training that ends in time, with its learning-rate decay planned to end with it.

Users who would otherwise pick Ultralytics know its `time=` argument: train
for at most so long, whatever the epochs. Keras' `fit` takes a number of
epochs. Here, from the second epoch of a phase on, the epochs that still fit
before the deadline are counted at every epoch's end from the mean time of
the phase's epochs after its first (which traces the model and fills the
cache). The cosine decay is then planned to end with the last of them
(`PlannedCosineDecay.plan`), so the run ends on a low rate instead of being
cut off at a high one; when no further epoch fits, training stops there. The
plan only shortens, and never adds epochs beyond `train.epochs`. The budget
counts from the command's start (the clock of history.csv's `wall_seconds`)
to the end of the last epoch, and can be overrun by up to one epoch; the
reports and the export come after it. A resumed run counts from its own start
and keeps the plan its phase had. The epochs run depend on the clock, so two
`train.deterministic` runs with a budget can differ.

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
        self.epochs_run = None  # the epochs run when the last phase's latest epoch ended

    def room_for_an_epoch(self):
        """False once the next epoch would end after the deadline (unknown before an epoch has run: True)."""
        return self.epoch_seconds is None or time.time() + self.epoch_seconds <= self.deadline

    def stop(self, epochs_run):
        self.stopped_after = epochs_run
        log.info("time budget %s: training stops after epoch %d (no further epoch fits, or the plan ends there)",
                 describe_seconds(self.seconds), epochs_run)

    def callback(self, schedule, steps_per_epoch, first_epoch, last_epoch, plan_file):
        """The Keras callback of the phase from `first_epoch` to `last_epoch` (epoch counts), whose rate is
        `schedule`; its plan is kept in `plan_file` for a resumed phase."""
        return PhaseBudget(self, schedule, steps_per_epoch, first_epoch, last_epoch, plan_file)

    def record(self):
        """What metrics.json says of it."""
        return {"seconds": self.seconds, "stopped_after_epoch": self.stopped_after}


class PhaseBudget(keras.callbacks.Callback):
    """At each epoch's end: plans the phase's decay to end with the last epoch that fits, or stops training.

    The plan only ever shortens: lengthened again, the rate would climb back from near zero. The phase's
    first epoch decides nothing but a deadline already passed, so the budget can be overrun by up to one
    epoch (a phase's first, and a fine-tuning epoch judged by the frozen warm-up's).
    """

    def __init__(self, budget, schedule, steps_per_epoch, first_epoch, last_epoch, plan_file):
        super().__init__()
        self.budget, self.schedule, self.steps_per_epoch = budget, schedule, steps_per_epoch
        self.first_epoch, self.last_epoch, self.plan_file = first_epoch, last_epoch, plan_file
        self.epoch_ends, self.planned_last_epoch = [], last_epoch

    def on_train_begin(self, logs=None):
        self.planned_last_epoch = self.last_epoch
        if self.plan_file.exists():  # a resumed phase: the rate goes on along the plan it had
            plan = json.loads(self.plan_file.read_text())
            self.schedule.plan(plan["total_steps"])
            self.planned_last_epoch = plan["last_epoch"]
        self.epoch_ends = [time.time()]

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        self.epoch_ends.append(now)
        durations = [end - start for start, end in zip(self.epoch_ends, self.epoch_ends[1:])]
        steady = durations[1:]  # the phase's first epoch traces the model and fills the cache: slower
        self.budget.epoch_seconds = sum(steady) / len(steady) if steady else durations[0]
        epochs_run = self.budget.epochs_run = epoch + 1
        if epochs_run >= self.last_epoch:
            return
        if not steady:  # too slow to judge by: a deadline already passed, or a resumed plan's end, stops here
            if now >= self.budget.deadline or epochs_run >= self.planned_last_epoch:
                self.model.stop_training = True
                self.budget.stop(epochs_run)
            return
        fitting = math.floor((self.budget.deadline - now) / self.budget.epoch_seconds)
        planned = min(self.planned_last_epoch, epochs_run + fitting)  # the plan only ever shortens
        if planned <= epochs_run:
            self.model.stop_training = True
            self.budget.stop(epochs_run)
        elif planned < self.planned_last_epoch:
            self.planned_last_epoch = planned
            total_steps = (planned - self.first_epoch) * self.steps_per_epoch
            self.schedule.plan(total_steps)
            plan = json.dumps({"total_steps": total_steps, "last_epoch": planned})
            write_atomically(self.plan_file, lambda partial: partial.write_text(plan))


def describe_seconds(seconds):
    """A duration as `train.time_budget` takes it: 45 -> '45s', 90 -> '1.5m', 600 -> '10m', 5400 -> '1.5h'."""
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"
