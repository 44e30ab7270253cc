import pytest

from imgpipe.errors import RecipeError
from imgpipe.engine.recipe import describe_keys, load_recipe, recipe_names


def test_shipped_classify_recipe_loads_with_defaults():
    recipe = load_recipe("classify")
    assert recipe.task == "classify"
    assert recipe.model.name == "small_cnn"
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
