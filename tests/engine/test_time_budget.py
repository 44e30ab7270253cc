"""`train.time_budget`: the decay re-planned to end with the last epoch that fits, and training stopped there."""

import json
import time

import pytest
import tensorflow as tf

import imgpipe
from imgpipe.engine import time_budget as budgets
from imgpipe.engine.learning_rate import learning_rate_schedule
from imgpipe.engine.recipe import load_recipe
from imgpipe.engine.time_budget import TimeBudget
from imgpipe.errors import RecipeError

from tests.engine.test_train import backbone_weights_file


@pytest.mark.parametrize("written, seconds", [("600", 600.0), (90, 90.0), ("90s", 90.0), ("10m", 600.0),
                                              ("1.5h", 5400.0), ("1h30m", 5400.0), ("none", None)])
def test_a_budget_is_read_as_seconds(written, seconds):
    assert load_recipe("classify", [f"train.time_budget={written}"]).train.time_budget == seconds


@pytest.mark.parametrize("written", ["ten minutes", "0", "-5m", "10x", "5m later"])
def test_a_budget_that_is_not_a_duration_is_refused_naming_the_key(written):
    with pytest.raises(RecipeError, match=r"^train.time_budget: .* is not a duration"):
        load_recipe("classify", [f"train.time_budget={written}"])


def test_a_planned_decay_ends_where_it_is_planned_inside_a_traced_step():
    schedule = learning_rate_schedule(0.01, total_steps=100)
    rate = tf.function(lambda step: schedule(step))  # traced once, as model.fit's step is
    before = float(rate(tf.constant(50)))
    schedule.plan(60)
    assert float(rate(tf.constant(60))) == pytest.approx(0.0, abs=1e-9)
    assert float(rate(tf.constant(50))) < before / 4  # 50 of 60 steps is far down the cosine
    assert float(rate(tf.constant(2))) == float(schedule(2))  # the warm-up (5 steps) is unchanged
    assert schedule.get_config() == {"peak": 0.01, "total_steps": 60, "warmup_fraction": 0.05}


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class FakeModel:
    stop_training = False


def test_each_epoch_end_plans_the_epochs_that_fit_and_the_last_one_stops_training(tmp_path, monkeypatch):
    clock = Clock(0.0)
    monkeypatch.setattr(budgets.time, "time", clock)
    schedule = learning_rate_schedule(0.01, total_steps=30 * 9)
    budget = TimeBudget(100.0, started=0.0)
    callback = budget.callback(schedule, steps_per_epoch=9, first_epoch=0, last_epoch=30,
                               plan_file=tmp_path / "plan.json")
    callback.set_model(FakeModel())
    clock.now = 10.0
    callback.on_train_begin()
    clock.now = 30.0  # the first epoch: 20 s (tracing, decoding)
    callback.on_epoch_end(0)
    assert schedule.planned_total_steps == (1 + 3) * 9  # 70 s left at 20 s an epoch: 3 more
    clock.now = 40.0  # the second: 10 s, and from now on only the later epochs count
    callback.on_epoch_end(1)
    assert schedule.planned_total_steps == (2 + 6) * 9
    assert json.loads((tmp_path / "plan.json").read_text()) == {"total_steps": 72, "last_epoch": 8}
    for epoch in range(2, 7):
        clock.now += 10.0
        callback.on_epoch_end(epoch)
        assert not callback.model.stop_training
    clock.now += 10.0  # epoch 8 ends at 100 s: no ninth fits
    callback.on_epoch_end(7)
    assert callback.model.stop_training and budget.record() == {"seconds": 100.0, "stopped_after_epoch": 8}
    assert schedule.planned_total_steps == 72


def test_a_resumed_phase_goes_on_along_its_plan(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"total_steps": 40, "last_epoch": 4}))
    schedule = learning_rate_schedule(0.01, total_steps=300)
    TimeBudget(600.0, started=time.time()).callback(schedule, 10, 0, 30, tmp_path / "plan.json").on_train_begin()
    assert schedule.planned_total_steps == 40 and float(schedule(40)) == pytest.approx(0.0, abs=1e-9)


def test_a_run_past_its_budget_stops_after_the_first_epoch(class_folder, fast_recipe_args, tmp_path):
    # The budget counts from `started`: an hour ago, with a budget of an hour, no second epoch fits.
    result = imgpipe.run("classify", [*fast_recipe_args, "train.epochs=5", "train.patience=0",
                                      "train.time_budget=1h", "export.enabled=false"],
                         data=class_folder, started=time.time() - 3600)
    assert result.metrics["epochs_run"] == 1
    assert result.metrics["time_budget"] == {"seconds": 3600.0, "stopped_after_epoch": 1}
    unlimited = imgpipe.run("classify", [*fast_recipe_args, "train.epochs=2", "train.patience=0",
                                         "export.enabled=false", f"train.run_dir={tmp_path / 'unlimited'}"],
                            data=class_folder)
    assert unlimited.metrics["epochs_run"] == 2 and unlimited.metrics["time_budget"] is None


@pytest.mark.slow
def test_no_fine_tuning_starts_once_the_budget_is_spent(class_folder, fast_recipe_args, tmp_path):
    _, weights_file = backbone_weights_file(tmp_path)
    result = imgpipe.run("classify", [*fast_recipe_args, "data.image_size=32", "train.epochs=3",
                                      "train.warmup_epochs=1", "train.patience=0", "train.time_budget=1h",
                                      "export.enabled=false", "model.name=mobilenet_v3_small",
                                      f"model.weights={weights_file}"],
                         data=class_folder, started=time.time() - 3600)
    assert (result.metrics["warmup_epochs"], result.metrics["epochs_run"]) == (1, 1)
    assert result.metrics["time_budget"]["stopped_after_epoch"] == 1


def test_a_multi_worker_job_refuses_a_budget(tmp_path, monkeypatch):
    from imgpipe.engine import trainer

    monkeypatch.setattr(trainer, "is_multi_worker", lambda strategy: True)
    recipe = load_recipe("classify", ["train.time_budget=10m"])
    with pytest.raises(RecipeError, match="^train.time_budget: not in a multi-worker job"):
        trainer.Trainer(recipe, tmp_path)._time_budget()
