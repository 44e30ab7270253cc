"""Batch norm's moving statistics reach the data's within the first epoch, however few its steps."""

import keras
import numpy as np
import pytest

import imgpipe
from imgpipe.engine.batch_norm_momentum import START_WEIGHT, epoch_momentum, fit_batch_norm_momentum
from imgpipe.models import MODELS
from imgpipe.models.backbones import set_trainable


def normalising_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9, name="norm")(inputs))


@pytest.mark.parametrize("fitted", [True, False])
def test_after_one_epoch_of_four_steps_the_moving_mean_is_the_data_s(fitted):
    keras.utils.set_random_seed(0)
    model = normalising_model()
    if fitted:
        assert fit_batch_norm_momentum(model, steps_per_epoch=4) == {
            "layers": 1, "momentum": round(START_WEIGHT ** 0.25, 3)}
    model.compile(optimizer="sgd", loss="mse")
    data = np.random.default_rng(0).normal(5.0, 0.1, (32, 4)).astype(np.float32)
    model.fit(data, np.zeros_like(data), batch_size=8, epochs=1, shuffle=False, verbose=0)
    moving_mean = model.get_layer("norm").moving_mean.numpy()
    if fitted:  # 1 % of the start (0) left: 4.95
        np.testing.assert_allclose(moving_mean, 5.0 * (1 - START_WEIGHT), rtol=0.01)
    else:  # Keras at 0.9: 0.9^4 = 66 % of the start left, the mean is still near 1.7
        assert np.all(moving_mean < 2.0)


def test_long_epochs_keep_the_builders_momentum():
    assert epoch_momentum(44, 0.9) == 0.9
    assert epoch_momentum(9, 0.9) == pytest.approx(0.599, abs=1e-3)
    assert epoch_momentum(9, 0.5) == 0.5  # never raised
    model = normalising_model()
    assert fit_batch_norm_momentum(model, steps_per_epoch=500) == {"layers": 0, "momentum": None}
    assert model.get_layer("norm").momentum == 0.9


def test_a_pretrained_backbone_s_batch_norm_is_left_as_it_is():
    model = MODELS.get("mobilenet_v3_small")((32, 32, 3), 3)
    backbone = model.get_layer("backbone")
    set_trainable(backbone, True)  # what a pretrained backbone gets: its batch norm frozen
    before = {layer.name: layer.momentum for layer in backbone.layers
              if isinstance(layer, keras.layers.BatchNormalization)}
    fit_batch_norm_momentum(model, steps_per_epoch=3)
    assert before and {name: backbone.get_layer(name).momentum for name in before} == before


def test_a_run_on_a_small_folder_trains_with_the_fitted_momentum(class_folder, fast_recipe_args):
    # 24 training images in batches of 8: three steps an epoch.
    result = imgpipe.run("classify", [*fast_recipe_args, "export.enabled=false"], data=class_folder)
    momentum = round(START_WEIGHT ** (1 / 3), 3)
    assert result.metrics["batch_norm_momentum"] == momentum
    norms = [layer for layer in result.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and {round(layer.momentum, 3) for layer in norms} == {momentum}
