import keras
import numpy as np
import pytest
import tensorflow as tf

from imgpipe.tasks.stylize import perceptual
from imgpipe.errors import RecipeError
from imgpipe.models.transformer_net import build_johnson, build_johnson_light
from imgpipe.tasks.stylize.perceptual import (LossWeights, StyleTransferModel, content_loss, content_targets, gram_matrix,
                                identity_style_loss, loss_network, perceptual_terms, style_grams, style_loss,
                                total_variation)


def test_gram_matrix_against_hand_computed_values():
    # 1 image, 2x1 pixels, 2 channels: rows (1, 2) and (3, 4).
    features = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]], np.float32)
    expected = np.array([[1 * 1 + 3 * 3, 1 * 2 + 3 * 4], [2 * 1 + 4 * 3, 2 * 2 + 4 * 4]]) / (2 * 1 * 2)
    np.testing.assert_allclose(gram_matrix(features).numpy()[0], expected)


def test_content_style_and_tv_losses_against_hand_computed_values():
    original = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]]], np.float32)
    generated = original + np.array([[[[1.0, 0.0]], [[0.0, -1.0]]]], np.float32)
    # mean squared error 2/4 over mean square (1+4+9+16)/4.
    assert float(content_loss(generated, original)[0]) == pytest.approx(0.5 / 7.5)

    grams = gram_matrix(original)
    g = gram_matrix(generated).numpy()[0]
    expected = np.sum((g - grams.numpy()[0]) ** 2) / np.sum(grams.numpy() ** 2)
    assert float(style_loss(generated, grams)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(style_loss(original, grams)[0]) == pytest.approx(0.0, abs=1e-7)

    image = np.zeros((1, 2, 3, 3), np.float32)
    image[0, 0, 1] = 255.0  # one white pixel: 1 vertical step, 2 horizontal steps, each in 3 channels
    # vertical: 3 channel-steps of 1.0 over 1*3*3 values; horizontal: 6 of 1.0 over 2*2*3 values.
    assert float(total_variation(image)[0]) == pytest.approx(3 / 9 + 6 / 12)


@pytest.fixture(scope="module")
def random_vgg():
    return loss_network("vgg16", "random", seed=3)


def test_random_loss_network_is_fixed_by_its_seed_and_frozen(random_vgg):
    again = loss_network("vgg16", "random", seed=3)
    image = tf.random.uniform([1, 32, 32, 3], 0, 255, seed=1)
    for a, b in zip(random_vgg(image), again(image)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)
    assert random_vgg.trainable_weights == [] and len(random_vgg(image)) == 5


def test_unloadable_imagenet_weights_stop_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPIPE_CACHE", str(tmp_path))  # nothing fetched before; the tests run offline
    with pytest.raises(RecipeError, match="cannot load imagenet weights .*Keras download skipped.*"
                                          "--loss-weights random"):
        loss_network("vgg16", "imagenet")
    broken = tmp_path / "vgg16_imagenet_notop.weights.h5"
    broken.write_bytes(b"not an HDF5 file")
    with pytest.raises(RecipeError, match=f"cannot load imagenet weights .*{broken}"):
        loss_network("vgg16", "imagenet", weights_dir=str(tmp_path))
    with pytest.raises(RecipeError, match="stylize.loss_weights"):
        loss_network("vgg16", "caffe")


@pytest.mark.parametrize("build", [build_johnson, build_johnson_light])
@pytest.mark.parametrize("shape", [(1, 50, 37, 3), (2, 64, 64, 3), (1, 9, 130, 3)])
def test_transformer_output_has_the_input_size_and_pixel_range(build, shape):
    network = build((None, None, 3))
    output = network(tf.random.uniform(shape, 0, 255, seed=0)).numpy()
    assert output.shape == shape
    assert output.min() >= 0.0 and output.max() <= 255.0


@pytest.mark.parametrize("build", [build_johnson, build_johnson_light])
def test_transformer_output_is_the_photo_plus_the_networks_change(build):
    network = build((None, None, 3))
    photo = tf.random.uniform((1, 21, 30, 3), 0, 255, seed=1)
    to_rgb = network.get_layer("to_rgb")
    to_rgb.set_weights([np.zeros_like(w) for w in to_rgb.get_weights()])  # no change at all
    np.testing.assert_allclose(network(photo).numpy(), photo.numpy(), atol=1e-4)
    to_rgb.set_weights([to_rgb.get_weights()[0], np.full(3, np.arctanh(0.5), np.float32)])  # +63.75 everywhere
    np.testing.assert_allclose(network(photo).numpy(), np.clip(photo.numpy() + 63.75, 0, 255), atol=1e-3)


@pytest.mark.slow
def test_short_training_lowers_the_style_loss(random_vgg):
    keras.utils.set_random_seed(0)  # the starting network, whatever ran before this test
    rng = np.random.default_rng(0)
    content = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    stripes = np.zeros((32, 32, 3), np.float32)
    stripes[:, ::4] = [255, 40, 0]
    grams = style_grams(random_vgg, stripes)
    model = StyleTransferModel(build_johnson_light((None, None, 3)), random_vgg, grams, LossWeights(0.1, 10.0, 0.0))
    model(content[:1])

    def style_now():
        targets = content_targets(random_vgg, content)
        return float(tf.reduce_mean(perceptual_terms(random_vgg, model(content), targets, grams)[1]))

    before = style_now()
    unstyled = float(tf.reduce_mean(identity_style_loss(random_vgg, content, grams)))
    model.compile(optimizer=keras.optimizers.Adam(0.002))
    history = model.fit(content, np.zeros(4), batch_size=4, epochs=40, verbose=0)
    assert {"loss", "content_loss", "style_loss", "tv_loss"} <= set(history.history)
    assert style_now() < 0.5 * min(before, unstyled)
