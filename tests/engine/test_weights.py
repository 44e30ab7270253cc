"""Pretrained weights, resolved in one place: folder, then Keras (cache or download), then from scratch."""

import h5py
import keras
import numpy as np
import pytest

from imgpipe.engine import weights as weights_module
from imgpipe.engine.model_choice import choose_model
from imgpipe.engine.recipe import load_recipe
from imgpipe.engine.registry import TASKS
from imgpipe.engine.weights import resolve_weights
from imgpipe.errors import RecipeError
from imgpipe.models import MODELS
from imgpipe.models.backbones import BACKBONES, build_backbone, set_trainable
from imgpipe.tasks.classify.task import ClassificationTask


@pytest.fixture
def clean_places(tmp_path, monkeypatch):
    """No weights folder, an empty imgpipe cache, an empty Keras cache (tmp_path / "keras"), offline."""
    monkeypatch.delenv("IMGPIPE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("IMGPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IMGPIPE_OFFLINE", "1")
    monkeypatch.setattr(weights_module, "keras_home", lambda: tmp_path / "keras")
    return tmp_path


def weights_folder(root, *backbones):
    folder = root / "weights"
    folder.mkdir(exist_ok=True)
    for backbone in backbones:
        (folder / f"{backbone}_imagenet_notop.weights.h5").write_bytes(b"resolution only reads the name")
    return folder


def test_the_weights_folder_comes_first_then_keras_then_none(clean_places, monkeypatch, caplog):
    folder = weights_folder(clean_places, "mobilenet_v2")
    cached = clean_places / "cache" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    found = resolve_weights("mobilenet_v2", "auto", weights_dir=str(folder))
    assert (found.source, found.path) == ("folder", str(folder / "mobilenet_v2_imagenet_notop.weights.h5"))
    monkeypatch.setenv("IMGPIPE_WEIGHTS_DIR", str(folder))
    assert resolve_weights("mobilenet_v2").source == "folder"  # the variable names the same folder
    found = resolve_weights("resnet50", "auto")  # not in the folder, not cached: nothing
    assert found.source == "none" and found.path is None
    assert found.tried == (f"{folder / 'resnet50_imagenet_notop.weights.h5'}: not found",
                           f"Keras download skipped (IMGPIPE_OFFLINE=1); {clean_places / 'keras' / 'models'}: "
                           "no Keras weights files")
    assert resolve_weights("mobilenet_v2", "auto", weights_dir=str(clean_places / "elsewhere")).source == "keras"
    caplog.clear()
    with caplog.at_level("WARNING", logger="imgpipe"):
        resolve_weights("resnet50", "auto")
    assert [r.getMessage() for r in caplog.records] == [
        f"no ImageNet weights for resnet50 ({folder / 'resnet50_imagenet_notop.weights.h5'}: not found; Keras "
        f"download skipped (IMGPIPE_OFFLINE=1); {clean_places / 'keras' / 'models'}: no Keras weights files); "
        "training from scratch. To start from them, put "
        "resnet50_imagenet_notop.weights.h5 in a folder and pass --weights-dir (or set IMGPIPE_WEIGHTS_DIR)"]


def test_explicit_choices_none_a_file_and_an_unsatisfied_imagenet(clean_places):
    assert resolve_weights("mobilenet_v2", "none").source == "none"
    assert resolve_weights("mobilenet_v2", None).path is None
    file = weights_folder(clean_places, "mine") / "mine_imagenet_notop.weights.h5"
    assert (resolve_weights("mobilenet_v2", str(file)).source, resolve_weights("mobilenet_v2", str(file)).path) == \
        ("file", str(file))
    with pytest.raises(RecipeError, match="model.weights: .*missing.h5: no such weights file"):
        resolve_weights("mobilenet_v2", str(clean_places / "missing.h5"))
    with pytest.raises(RecipeError, match="model.weights: imagenet: no ImageNet weights for mobilenet_v2"):
        resolve_weights("mobilenet_v2", "imagenet")
    with pytest.raises(RecipeError, match="has no pretrained backbone"):
        resolve_weights(None, "imagenet")
    assert resolve_weights(None, "auto").source == "none"


class TinyApplication:
    """Stands in for a keras.applications constructor: what `weights="imagenet"` would build."""

    calls = []

    def __init__(self, fail=None):
        self.fail = fail

    def __call__(self, include_top, weights, **kwargs):
        self.calls.append(weights)
        if self.fail:
            raise self.fail
        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, keras.layers.Conv2D(2, 3, kernel_initializer="ones")(inputs))


def test_keras_download_is_kept_as_a_weights_file_and_its_failure_falls_through(clean_places, monkeypatch):
    monkeypatch.setenv("IMGPIPE_OFFLINE", "0")
    monkeypatch.setitem(BACKBONES, "tiny", (TinyApplication(), "none"))
    found = resolve_weights("tiny", "auto")
    assert found.source == "keras" and found.path.endswith("tiny_imagenet_notop.weights.h5")
    with h5py.File(found.path) as saved:
        assert np.all(saved["layers/conv2d/vars/0"][()] == 1.0)
    TinyApplication.calls.clear()
    assert resolve_weights("tiny", "auto").path == found.path and TinyApplication.calls == []  # the kept file
    monkeypatch.setitem(BACKBONES, "broken", (TinyApplication(fail=OSError("URL fetch failure: timed out")), "none"))
    found = resolve_weights("broken", "auto")
    assert found.source == "none" and found.tried[-1] == "Keras download failed (OSError: URL fetch failure: timed out)"


def test_the_download_has_a_time_limit(clean_places, monkeypatch):
    monkeypatch.setenv("IMGPIPE_OFFLINE", "0")
    seen = []

    class Watch(TinyApplication):
        def __call__(self, include_top, weights, **kwargs):
            import socket

            seen.append(socket.getdefaulttimeout())
            raise OSError("no route")

    monkeypatch.setitem(BACKBONES, "watched", (Watch(), "none"))
    resolve_weights("watched", "auto")
    import socket

    assert seen == [weights_module.DOWNLOAD_TIMEOUT_SECONDS] and socket.getdefaulttimeout() is None


def test_offline_the_weights_keras_already_fetched_are_used_and_the_network_never_is(clean_places, monkeypatch):
    import socket

    from keras.src.legacy.saving import legacy_h5_format

    def no_network(*args, **kwargs):
        raise AssertionError("offline resolution opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    models = clean_places / "keras" / "models"
    models.mkdir(parents=True)
    (models / "some_other_model.h5").write_bytes(b"")
    found = resolve_weights("mobilenet_v2", "auto")
    expected = models / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"  # Keras' own name
    assert found.source == "none" and found.tried[-1] == f"Keras download skipped (IMGPIPE_OFFLINE=1); {expected}: " \
        "not found"
    keras.utils.set_random_seed(0)
    fetched = keras.applications.MobileNetV2(include_top=False, weights=None)
    with h5py.File(expected, "w") as file:  # the format Keras downloads its ImageNet weights in
        legacy_h5_format.save_weights_to_hdf5_group(file, fetched)
    found = resolve_weights("mobilenet_v2", "auto")
    assert found.source == "keras" and found.path == str(clean_places / "cache" / "weights" /
                                                         "mobilenet_v2_imagenet_notop.weights.h5")
    model = MODELS.get("mobilenet_v2")((96, 96, 3), 2, weights=found.path)
    assert np.array_equal(model.get_layer("backbone").get_layer("Conv1").kernel.numpy(),
                          fetched.get_layer("Conv1").kernel.numpy())
    (models / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"a broken download")
    assert resolve_weights("vgg16", "auto").tried[-1] == (  # Keras publishes VGG16's hash: checked, as Keras does
        f"Keras download skipped (IMGPIPE_OFFLINE=1); {models / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'}"
        ": not the file Keras published (its hash differs); delete it")
    broken = models / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    broken.write_bytes(b"no hash is published for it")
    (clean_places / "cache" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5").unlink()
    assert resolve_weights("mobilenet_v2", "auto").tried[-1].startswith(f"Keras' cached {broken} did not load (")


def test_a_file_that_does_not_fit_names_it_and_the_first_layer(tmp_path):
    other = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    path = tmp_path / "mobilenet_v2_imagenet_notop.weights.h5"
    other.save_weights(path)
    with pytest.raises(RecipeError) as error:
        build_backbone("mobilenet_v2", (32, 32, 3), str(path))
    message = str(error.value)
    assert message.startswith(f"model.weights: {path} does not fit the mobilenet_v2 backbone (first layer that "
                              "does not match: Conv1;") and "\n" not in message


def test_auto_model_choice_follows_image_size_and_weights(clean_places, caplog):
    task, recipe = ClassificationTask(), load_recipe("classify")
    small = choose_model(task, recipe, [32, 32])
    assert (small.name, small.weights.source) == ("strided_cnn", "none")
    assert small.reason == "images of 32 px, below the 64 px a pretrained backbone needs"
    with caplog.at_level("WARNING", logger="imgpipe"):
        large = choose_model(task, recipe, [64, 80])
    assert (large.name, large.reason) == ("strided_cnn", "no ImageNet weights found") and len(caplog.records) == 1
    folder = weights_folder(clean_places, "mobilenet_v2")
    with_weights = recipe.update(**{"model.weights_dir": str(folder)})
    chosen = choose_model(task, with_weights, [160, 160])
    assert (chosen.name, chosen.weights.source) == ("mobilenet_v2", "folder")
    # Where each task's crossing lies: classification measured below 64 px, the others keep Keras' smallest 96.
    assert [choose_model(task, with_weights, [side, 200]).name for side in (63, 64)] == ["strided_cnn", "mobilenet_v2"]
    segment = TASKS.get("segment")()
    segment_recipe = load_recipe("segment").update(**{"model.weights_dir": str(weights_folder(clean_places,
                                                                                             "mobilenet_v2"))})
    assert [choose_model(segment, segment_recipe, [side, side]).name for side in (64, 95, 96)] == \
        ["unet", "unet", "unet_mobilenet_v2"]
    assert choose_model(task, with_weights.update(**{"model.weights": "none"}), [160, 160]).name == "strided_cnn"
    named = choose_model(task, with_weights.update(**{"model.name": "resnet50"}), [160, 160])
    assert (named.name, named.weights.source, named.reason) == ("resnet50", "none", "model.name given")


@pytest.mark.parametrize("name, shape, output", [
    ("mobilenet_v2", (64, 64, 3), (None, 3)),
    ("unet_mobilenet_v2", (64, 64, 3), (None, 64, 64, 3)),
    ("centernet_mobilenet_v2", (64, 64, 3), (None, 16, 16, 7)),
    ("centermask_mobilenet_v2", (64, 64, 3), (None, 16, 16, 3 + 4 + 5 * 16)),
])
def test_every_task_builds_its_mobilenet_v2_variant(name, shape, output):
    model = MODELS.get(name)(shape, 3, weights=None)
    assert model.output_shape == output
    assert MODELS.info(name)["backbone"] == "mobilenet_v2" and model.get_layer("backbone") is not None


def test_a_pretrained_backbones_batch_norm_keeps_its_statistics_frozen_and_fine_tuned(tmp_path):
    path = tmp_path / "mobilenet_v2_imagenet_notop.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")

    def first_batch_norm(model):
        return next(layer for layer in model.get_layer("backbone").layers
                    if isinstance(layer, keras.layers.BatchNormalization))

    pretrained = MODELS.get("mobilenet_v2")((32, 32, 3), 2, weights=str(path))
    statistics = first_batch_norm(pretrained).moving_mean.numpy().copy()
    for trainable in (False, True):  # the warm-up, then fine-tuning (as the trainer does)
        set_trainable(pretrained.get_layer("backbone"), trainable)
        pretrained(images, training=True)
        assert np.array_equal(first_batch_norm(pretrained).moving_mean.numpy(), statistics)
    assert pretrained.get_layer("backbone").get_layer("Conv1").trainable  # the rest does fine-tune
    scratch = MODELS.get("mobilenet_v2")((32, 32, 3), 2, weights=None)
    scratch(images, training=True)  # from scratch, batch norm learns as usual
    assert not np.array_equal(first_batch_norm(scratch).moving_mean.numpy(), statistics)


def test_the_shared_imagenet_weights_are_found_in_their_folder_and_load(shared_weights, clean_places):
    from imgpipe.models.layer_tree import nested_layers
    from imgpipe.tasks.stylize.perceptual import loss_network

    for backbone in ("mobilenet_v2", "vgg16"):
        found = resolve_weights(backbone, "imagenet", weights_dir=str(shared_weights))
        assert (found.source, found.path) == ("folder", str(shared_weights / f"{backbone}_imagenet_notop.weights.h5"))
    classifier = MODELS.get("mobilenet_v2")((96, 96, 3), 2, weights=resolve_weights(
        "mobilenet_v2", "auto", weights_dir=str(shared_weights)).path)
    vgg = loss_network("vgg16", "imagenet", weights_dir=str(shared_weights))  # style transfer's, same resolver
    for model, backbone, layer in ((classifier, "mobilenet_v2", "Conv1"), (vgg, "vgg16", "block1_conv1")):
        with h5py.File(shared_weights / f"{backbone}_imagenet_notop.weights.h5") as saved:
            kernel = next(each for each in nested_layers(model) if each.name == layer).kernel.numpy()
            assert np.array_equal(kernel, saved["layers/conv2d/vars/0"][()])


def test_the_pretrained_head_normalises_features_on_a_backbones_own_scale():
    """VGG16's pooled features (std 19 on raccoon crops) saturate a fresh softmax; the head's batch norm does not."""
    from imgpipe.models.classifiers import classification_head

    features = np.random.default_rng(0).normal(7.0, 19.0, (32, 512)).astype("float32")
    probabilities = {}
    for normalise in (False, True):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((512,))
        head = keras.Model(inputs, classification_head(inputs, 2, 0.0, normalise=normalise))
        probabilities[normalise] = head(features, training=True).numpy().max(axis=1)
    assert np.median(probabilities[False]) > 0.999  # saturated: the gradient of the right class is ~0
    assert np.median(probabilities[True]) < 0.9
    assert MODELS.get("mobilenet_v2")((32, 32, 3), 2, weights=None).get_layer("head_norm") is not None


@pytest.mark.slow
def test_a_run_with_a_weights_folder_trains_the_pretrained_model_and_records_it(class_folder, tmp_path, monkeypatch):
    import json

    import imgpipe

    folder = tmp_path / "weights"
    folder.mkdir()
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3)).save_weights(
        folder / "mobilenet_v2_imagenet_notop.weights.h5")
    result = imgpipe.run("classify", ["train.epochs=2", "train.batch_size=8", "train.verbose=0", "data.image_size=96",
                                      "train.warmup_epochs=1", "train.patience=0", f"train.run_dir={tmp_path / 'run'}",
                                      "export.enabled=false", "evaluate.robustness=false"],
                         data=class_folder, weights_dir=str(folder))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "mobilenet_v2" and metrics["weights"]["source"] == "folder"
    assert metrics["warmup_epochs"] == 1 and metrics["epochs_run"] == 2
    assert result.recipe.model.weights == str(folder / "mobilenet_v2_imagenet_notop.weights.h5")
    offline = imgpipe.run("classify", ["train.epochs=1", "train.batch_size=8", "train.verbose=0",
                                       "data.image_size=96", f"train.run_dir={tmp_path / 'scratch'}",
                                       "export.enabled=false", "evaluate.robustness=false"], data=class_folder)
    assert (offline.metrics["model"], offline.metrics["warmup_epochs"]) == ("strided_cnn", 0)
    assert offline.metrics["model_choice"] == "no ImageNet weights found"
