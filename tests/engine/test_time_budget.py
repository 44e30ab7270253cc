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
from imgpipe.engine.trainer import read_history
from imgpipe.errors import RecipeError
from imgpipe.understand.suspect_labels import FOLDS_FOLDER

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
    before = {step: float(rate(tf.constant(step))) for step in (2, 50)}
    schedule.plan(60)
    assert float(rate(tf.constant(60))) == pytest.approx(0.0, abs=1e-9)
    assert float(rate(tf.constant(50))) < before[50] / 4  # 50 of 60 steps is far down the cosine
    assert before[2] == pytest.approx(0.004)  # 2 of the 5 warm-up steps
    assert float(rate(tf.constant(2))) == pytest.approx(0.01 * 2 / 3)  # 2 of the 3 (5 % of 60)
    rebuilt = type(schedule).from_config(schedule.get_config())
    assert [float(rebuilt(step)) for step in (1, 2, 30, 59)] == pytest.approx(
        [float(schedule(step)) for step in (1, 2, 30, 59)])


def test_a_long_phase_planned_short_still_decays():
    schedule = learning_rate_schedule(0.01, total_steps=1000 * 9)  # a 450-step warm-up as planned at first
    schedule.plan(27)
    assert float(schedule(1)) == pytest.approx(0.01)  # the warm-up is 5 % of the plan: one step
    assert float(schedule(26)) < 0.01 * 0.01


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
    clock.now = 30.0  # the first epoch: 20 s (tracing, decoding), too slow to plan by
    callback.on_epoch_end(0)
    assert schedule.planned_total_steps == 30 * 9 and not (tmp_path / "plan.json").exists()
    clock.now = 40.0  # the second: 10 s, and from now on only the epochs after the first count
    callback.on_epoch_end(1)
    assert schedule.planned_total_steps == (2 + 6) * 9  # 60 s left: 6 more
    assert json.loads((tmp_path / "plan.json").read_text()) == {"total_steps": 72, "last_epoch": 8}
    clock.now = 41.0  # a fast epoch (1 s): 59 s would now hold 10 more at 5.5 s, but the plan never lengthens
    callback.on_epoch_end(2)
    assert schedule.planned_total_steps == 72
    clock.now = 50.0
    for epoch in range(3, 7):
        clock.now += 10.0
        callback.on_epoch_end(epoch)
        assert not callback.model.stop_training
    clock.now += 10.0  # epoch 8 ends at 100 s: no ninth fits
    callback.on_epoch_end(7)
    assert callback.model.stop_training and budget.record() == {"seconds": 100.0, "stopped_after_epoch": 8}
    assert schedule.planned_total_steps == 72


@pytest.mark.parametrize("first_epoch_end, stops", [(4.0, False), (6.0, True)])
def test_a_first_epoch_stops_the_phase_only_past_the_deadline(tmp_path, monkeypatch, first_epoch_end, stops):
    clock = Clock(0.0)
    monkeypatch.setattr(budgets.time, "time", clock)
    budget = TimeBudget(5.0, started=0.0)
    callback = budget.callback(learning_rate_schedule(0.01, 90), 9, 0, 10, tmp_path / "plan.json")
    callback.set_model(FakeModel())
    callback.on_train_begin()
    clock.now = first_epoch_end  # 4 s an epoch would leave no room for a second, but the first is no measure
    callback.on_epoch_end(0)
    assert callback.model.stop_training is stops and budget.stopped_after == (1 if stops else None)


def test_a_resumed_phase_goes_on_along_its_plan_and_stops_where_it_ends(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"total_steps": 40, "last_epoch": 4}))
    schedule = learning_rate_schedule(0.01, total_steps=300)
    budget = TimeBudget(600.0, started=time.time())
    callback = budget.callback(schedule, 10, 0, 30, tmp_path / "plan.json")
    callback.set_model(FakeModel())
    callback.on_train_begin()
    assert schedule.planned_total_steps == 40 and float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
    callback.on_epoch_end(4)  # killed after its plan's last epoch was backed up: the resumed epoch is the last
    assert callback.model.stop_training and budget.stopped_after == 5


def test_a_run_past_its_budget_stops_after_the_first_epoch(class_folder, fast_recipe_args, tmp_path):
    # The budget counts from `started`: an hour ago, with a budget of an hour, no second epoch fits.
    result = imgpipe.run("classify", [*fast_recipe_args, "train.epochs=5", "train.patience=0",
                                      "train.time_budget=1h", "export.enabled=false"],
                         data=class_folder, started=time.time() - 3600)
    assert result.metrics["epochs_run"] == 1
    assert result.metrics["time_budget"] == {"seconds": 3600.0, "stopped_after_epoch": 1}
    (result.run_dir / "metrics.json").unlink()  # killed in its reports: --resume finds training finished
    resumed = imgpipe.run(resume=True, output=result.run_dir)
    assert resumed.metrics["epochs_run"] == 1
    assert resumed.metrics["time_budget"] == {"seconds": 3600.0, "stopped_after_epoch": 1}
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


@pytest.mark.slow
def test_cross_validation_folds_train_the_epochs_the_budget_gave_the_run(class_folder, fast_recipe_args,
                                                                          monkeypatch):
    original, main_run = budgets.PhaseBudget.on_epoch_end, []

    def budget_ends_the_main_run_after_two(self, epoch, logs=None):  # as a budget would, on any machine
        main_run[:] = main_run or [self]
        if main_run[0] is not self:
            return original(self, epoch, logs)
        if epoch == 1:
            self.model.stop_training = True
            self.budget.stop(2)

    monkeypatch.setattr(budgets.PhaseBudget, "on_epoch_end", budget_ends_the_main_run_after_two)
    result = imgpipe.run("classify", [*fast_recipe_args, "train.epochs=4", "train.patience=0",
                                      "train.time_budget=1h", "export.enabled=false",
                                      "train.suspect_labels=cross_validation", "train.folds=2"],
                         data=class_folder)
    assert result.metrics["epochs_run"] == 2
    folds = sorted((result.run_dir / FOLDS_FOLDER).glob("*/history.csv"))
    assert len(folds) == 2 and all(read_history(fold)["epoch"] == [0, 1] for fold in folds)
