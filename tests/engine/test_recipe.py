import pytest

from imgpipe.errors import RecipeError
from imgpipe.engine.recipe import describe_keys, load_recipe, recipe_from_dict, recipe_names


def test_shipped_classify_recipe_loads_with_defaults():
    recipe = load_recipe("classify")
    assert recipe.task == "classify"
    assert recipe.model.name == "auto" and recipe.model.weights == "auto"
    assert recipe.data.seed == 1337
    assert recipe.data.val_split == 0.2
    assert "classify" in recipe_names()


def test_overrides_are_parsed_as_yaml_values():
    recipe = load_recipe("classify", ["train.epochs=5", "train.learning_rate=3e-4", "augment.occlusion=strong",
                                      "export.enabled=false", "model.weights=none"])
    assert recipe.train.epochs == 5 and isinstance(recipe.train.epochs, int)
    assert recipe.train.learning_rate == pytest.approx(3e-4)
    assert recipe.augment.occlusion == "strong"
    assert recipe.export.enabled is False
    assert recipe.model.weights is None


@pytest.mark.parametrize("text, expected", [("64", [64, 64]), ("96x128", [96, 128]), ("auto", "auto"),
                                            ("[32, 48]", [32, 48])])
def test_image_size_forms(text, expected):
    assert load_recipe("classify", [f"data.image_size={text}"]).data.image_size == expected


@pytest.mark.parametrize(
    "assignment, named",
    [
        ("train.epochz=5", "train.epochz"),
        ("trian.epochs=5", "trian.epochs"),
        ("train.epochs=-1", "train.epochs"),
        ("train.epochs=five", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("data.image_size=0", "data.image_size"),
        ("data.image_size=96x", "data.image_size"),
        ("augment.viewpoint=extreme", "augment.viewpoint"),
        ("data.val_split=1.5", "data.val_split"),
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.devices=0", "train.devices"),
        ("noequals", "noequals"),
    ],
)
def test_bad_overrides_name_the_key(assignment, named):
    with pytest.raises(RecipeError) as error:
        load_recipe("classify", [assignment])
    assert named in str(error.value)


def test_user_yaml_file_is_validated(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("task: classify\ntrain:\n  epochs: 3\nmodel:\n  name: lenet\n")
    recipe = load_recipe(str(good), ["train.batch_size=4"])
    assert (recipe.train.epochs, recipe.model.name, recipe.train.batch_size) == (3, "lenet", 4)

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml.*train\.epocs"):
        load_recipe(str(bad))

    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [epochs: 3\n")
    with pytest.raises(RecipeError, match="broken.yaml.*not valid YAML"):
        load_recipe(str(broken))


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="evil.yaml"):
        load_recipe(str(evil))


def test_unknown_recipe_name_lists_the_choices():
    with pytest.raises(RecipeError, match="classify"):
        load_recipe("clasify")


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe("classify", ["train.epochs=7", "data.image_size=96x128"])
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(str(path)) == recipe


def test_every_key_is_documented():
    keys = list(describe_keys())
    assert ("train.epochs", 30) in [(key, default) for key, default, _ in keys]
    assert all(meaning for _, _, meaning in keys)


def test_a_resolved_recipe_carries_only_its_own_tasks_keys():
    stylize = load_recipe("stylize").to_dict()
    assert set(stylize) == {"task", "data", "augment", "model", "train", "export", "evaluate", "stylize"}
    flat = {f"{section}.{key}" for section, keys in stylize.items() if isinstance(keys, dict) for key in keys}
    assert not flat & {"detect.max_boxes", "data.max_boxes", "export.score_threshold", "train.dice_weight",
                       "train.map_every", "export.top_k", "train.label_smoothing"}
    assert {"stylize.style", "stylize.loss_network", "stylize.max_side"} <= flat
    assert load_recipe("segment").options.dice_weight == 0.5  # from recipes/segment.yaml's segment: section


def test_old_key_paths_still_work_with_one_notice(caplog):
    with caplog.at_level("WARNING", logger="imgpipe"):
        recipe = load_recipe("segment", ["train.dice_weight=0.25", "data.ignore_index=7"])
    assert (recipe.options.dice_weight, recipe.options.ignore_index) == (0.25, 7)
    assert [r.getMessage() for r in caplog.records] == [
        "train.dice_weight is now segment.dice_weight; the old name still works",
        "data.ignore_index is now segment.ignore_index; the old name still works"]


def test_an_old_resolved_recipe_with_every_tasks_keys_loads(caplog):
    """A run folder written before the keys moved holds all 17 task keys in the shared sections."""
    old = {"task": "stylize",
           "data": {"ignore_index": None, "max_boxes": 100, "style": "painting.jpg"},
           "model": {"loss_network": "vgg19", "loss_weights": "random"},
           "train": {"label_smoothing": 0.1, "dice_weight": 0.0, "content_weight": 1.0, "style_weight": 3.0,
                     "tv_weight": 0.1, "color_loss": "classification", "color_uniform_mix": 0.9, "map_every": 0},
           "export": {"top_k": 5, "score_threshold": 0.1, "max_detections": 100, "max_side": 512}}
    with caplog.at_level("WARNING", logger="imgpipe"):
        recipe = recipe_from_dict(old)
    assert recipe.options.style == "painting.jpg" and recipe.options.loss_network == "vgg19"
    assert (recipe.options.style_weight, recipe.options.max_side) == (3.0, 512)
    assert "detect" not in recipe.to_dict() and "max_boxes" not in recipe.to_dict()["data"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("recipe keys moved into the task's section: data.style")


def test_another_tasks_old_key_with_a_changed_value_is_named(caplog):
    with caplog.at_level("WARNING", logger="imgpipe"):
        recipe_from_dict({"task": "classify", "train": {"dice_weight": 0.5, "map_every": 0}})
    assert [r.getMessage() for r in caplog.records] == [
        "recipe keys of other tasks left out: train.dice_weight (a segment key)"]


@pytest.mark.parametrize("assignment, message", [
    ("detect.max_boxes=3", "detect: keys of the detect task, but this recipe's task is classify"),
    ("classify.dice_weight=1", "classify.dice_weight: unknown key; classify has label_smoothing, top_k"),
    ("classify.top_k=0", "classify.top_k: must be at least 1, got 0"),
])
def test_task_section_keys_are_checked(assignment, message):
    with pytest.raises(RecipeError) as error:
        load_recipe("classify", [assignment])
    assert str(error.value) == message


def test_the_key_listing_shows_each_tasks_section():
    keys = [key for key, _, _ in describe_keys()]
    assert {"segment.dice_weight", "detect.max_boxes", "stylize.style", "colorize.color_loss",
            "classify.top_k"} <= set(keys)
    assert "train.dice_weight" not in keys


def test_export_tta_is_refused_where_it_does_not_apply_naming_the_key():
    assert load_recipe("classify", ["export.tta=flip"]).export.tta == "flip"
    assert load_recipe("segment", ["export.tta=flip+scales"]).export.tta == "flip+scales"
    assert load_recipe("detect").export.tta == "none"
    for task in ("detect", "stylize", "colorize"):
        with pytest.raises(RecipeError, match=rf"^export.tta: flip applies to classify, segment only, not to {task}"):
            load_recipe(task, ["export.tta=flip"])
    with pytest.raises(RecipeError, match="export.tta: expected one of none, flip, flip\\+scales"):
        load_recipe("classify", ["export.tta=mirror"])
