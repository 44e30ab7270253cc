"""The training phases' learning rate: a linear warm-up, then a cosine decay whose length can be re-planned.

A cosine decay fixed at compile time ends where `train.epochs` ends. When a
time budget (`train.time_budget`, `imgpipe.engine.time_budget`) stops training
sooner, the rate would still be high at the last epoch, where the decay does
its work. Here the warm-up's and the decay's lengths are variables the traced
training step reads, so they can be re-planned while `model.fit` runs (the
time budget only ever shortens them), and the rate still reaches zero at the
last epoch that is run.

Example:
    >>> schedule = learning_rate_schedule(0.001, total_steps=300)
    >>> schedule.plan(150)  # the decay now ends at step 150
"""

import keras


@keras.saving.register_keras_serializable(package="imgpipe")
class PlannedCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' `CosineDecay` with warm-up, its total steps a variable set by `plan`.

    It is a function of the optimizer's step counter, so a resumed run picks up
    the schedule where it stopped (once its plan is set again, `TimeBudget`). Registered with Keras,
    so a compiled model can be cloned (`keras.models.clone_model`) or its optimizer rebuilt from its config.
    """

    def __init__(self, peak, total_steps, warmup_fraction=0.05):
        total_steps, warmup_steps = _split(total_steps, warmup_fraction)
        super().__init__(
            initial_learning_rate=0.0 if warmup_steps else peak,
            decay_steps=total_steps - warmup_steps,
            warmup_target=peak if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
        self.peak, self.warmup_fraction, self.planned_total_steps = peak, warmup_fraction, total_steps
        # Read by the traced step: assigning them changes the rate of the next step, with no retrace.
        self.warmup_steps = keras.Variable(float(warmup_steps), trainable=False, name="planned_warmup_steps")
        self.decay_steps = keras.Variable(float(total_steps - warmup_steps), trainable=False,
                                          name="planned_decay_steps")

    def plan(self, total_steps):
        """Ends the decay at step `total_steps` of the phase; the warm-up keeps its share of the new length."""
        self.planned_total_steps, warmup_steps = _split(total_steps, self.warmup_fraction)
        self.warmup_steps.assign(float(warmup_steps))
        self.decay_steps.assign(float(self.planned_total_steps - warmup_steps))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.planned_total_steps, "warmup_fraction": self.warmup_fraction}


def _split(total_steps, warmup_fraction):
    """(total steps, warm-up steps): at least one step, and at least one of them after the warm-up."""
    total_steps = max(int(total_steps), 1)
    return total_steps, min(int(total_steps * warmup_fraction), total_steps - 1)


def learning_rate_schedule(peak, total_steps, warmup_fraction=0.05):
    """Linear warm-up to `peak` over `warmup_fraction` of the steps, then cosine decay to zero at `total_steps`."""
    return PlannedCosineDecay(peak, total_steps, warmup_fraction)
