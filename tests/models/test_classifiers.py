import keras
import numpy as np
import pytest

from imgpipe.errors import RecipeError
from imgpipe.models import MODELS
from imgpipe.models.layers import ImagenetPreprocessing

LINEAGE = ["lenet", "alexnet", "vgg16", "vgg19", "inception_v3", "resnet50", "resnet152",
           "mobilenet_v3_small", "efficientnet_b0", "small_cnn", "strided_cnn"]


def test_the_lineage_is_registered_for_classification():
    assert set(LINEAGE) <= set(MODELS.names(task="classify"))


@pytest.mark.parametrize("name", ["small_cnn", "strided_cnn", "lenet", "alexnet", "mobilenet_v3_small", "efficientnet_b0"])
def test_builders_take_0_255_pixels_and_give_probabilities(name):
    model = MODELS.get(name)((32, 32, 3), 4, weights=None)
    probabilities = model(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")).numpy()
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def conv_multiply_adds(model):
    """Multiply-adds of a model's Conv2D layers for one image, from their kernels and output sizes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            total += height * width * int(np.prod(layer.kernel.shape))
    return total


@pytest.mark.parametrize("size, stage_size, stem_convs", [
    ((32, 32), (32, 32), 0), ((64, 64), (64, 64), 0), ((65, 65), (33, 33), 1), ((96, 96), (48, 48), 1),
    ((200, 200), (50, 50), 2), ((224, 224), (56, 56), 2), ((512, 512), (64, 64), 3), ((96, 200), (48, 100), 1),
    ((None, None), (None, None), 0)])
def test_strided_cnn_stages_see_a_shorter_side_of_at_most_64_px(size, stage_size, stem_convs):
    model = MODELS.get("strided_cnn")(size + (3,), 2)
    assert model.get_layer("stage1_a_conv").input.shape[1:3] == stage_size
    stems = [layer for layer in model.layers if layer.name.startswith("stem") and layer.name.endswith("_conv")]
    assert len(stems) == stem_convs and all(layer.strides == (2, 2) for layer in stems)


@pytest.mark.parametrize("side", [32, 64])
def test_strided_cnn_is_small_cnn_up_to_64_px(side):
    strided, small = (MODELS.get(name)((side, side, 3), 2) for name in ("strided_cnn", "small_cnn"))

    def described(model):
        return [({**layer.get_config(), "name": None}, layer.name, layer.output.shape) for layer in model.layers]

    assert described(strided) == described(small)


def test_strided_cnn_costs_a_tenth_of_small_cnn_at_200_px():
    strided = conv_multiply_adds(MODELS.get("strided_cnn")((200, 200, 3), 2))
    full = conv_multiply_adds(MODELS.get("small_cnn")((200, 200, 3), 2))
    assert full > 1e9 and strided <= 0.1 * full


def test_small_input_for_inception_names_the_key():
    with pytest.raises(RecipeError, match="data.image_size.*inception_v3.*75"):
        MODELS.get("inception_v3")((32, 32, 3), 4)


@pytest.mark.parametrize("name", ["small_cnn", "strided_cnn"])
def test_scratch_models_refuse_pretrained_weights(name):
    with pytest.raises(RecipeError, match="model.weights"):
        MODELS.get(name)((32, 32, 3), 4, weights="imagenet")


def test_local_backbone_weights_file_is_loaded(tmp_path):
    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                 pooling="avg")
    path = tmp_path / "efficientnet_notop.weights.h5"
    backbone.save_weights(path)
    model = MODELS.get("efficientnet_b0")((32, 32, 3), 3, weights=str(path))
    loaded = model.get_layer("backbone").get_weights()
    for mine, theirs in zip(loaded, backbone.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_imagenet_preprocessing_modes_against_hand_computed_values():
    pixel = np.array([[[[255.0, 0.0, 127.5]]]], dtype="float32")
    np.testing.assert_allclose(ImagenetPreprocessing("tf")(pixel).numpy(), [[[[1.0, -1.0, 0.0]]]], atol=1e-6)
    caffe = ImagenetPreprocessing("caffe")(pixel).numpy()
    np.testing.assert_allclose(caffe, [[[[127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68]]]], atol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        ImagenetPreprocessing("torch")


def evil_files(folder):
    """A backbone saved as a `.keras` archive and a full-model `.h5`, each with a Lambda that leaves a file when run."""
    marker = folder / "the_lambda_ran"
    backbone = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                   include_preprocessing=True)
    touch = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")  # code in the file
    model = keras.Model(backbone.input, keras.layers.Lambda(touch, name="payload")(backbone.output))
    archive, full_h5 = folder / "backbone.keras", folder / "backbone.h5"
    model.save(archive)
    model.save(full_h5)
    marker.unlink()  # building the model ran it once
    return backbone, marker, archive, full_h5


def test_weights_files_are_read_for_weights_only_and_never_run_code_they_carry(tmp_path):
    backbone, marker, archive, full_h5 = evil_files(tmp_path)
    import h5py

    with h5py.File(full_h5) as handle:
        assert "Lambda" in handle.attrs["model_config"]  # a whole model, code included
    for path in (archive, full_h5):
        model = MODELS.get("mobilenet_v3_small")((32, 32, 3), 3, weights=str(path))
        assert not marker.exists(), f"{path.name}: loading ran the Lambda"
        for mine, theirs in zip(model.get_layer("backbone").get_weights(), backbone.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    # The control: rebuilding the archive as a model (what imgpipe never does) does run it.
    keras.saving.load_model(archive, safe_mode=False)
    assert marker.exists()
