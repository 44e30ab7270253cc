"""`imgpipe models --summary`: the per-layer arithmetic must give Keras' own parameter counts."""

import re

import keras
import pytest

from imgpipe.understand.layer_table import format_table, layer_rows, parameter_arithmetic
from imgpipe.models import MODELS


def arithmetic_result(text):
    return int(re.search(r"= ([\d,]+)$", text).group(1).replace(",", ""))


@pytest.mark.parametrize("name, size", [("small_cnn", 32), ("lenet", 32), ("alexnet", 64), ("unet", 32),
                                        ("mobilenet_v3_small", 32), ("johnson_light", 32)])
def test_every_explained_count_matches_keras_and_rows_add_up(name, size):
    model = MODELS.get(name)((size, size, 3), 4, weights=None)
    rows = layer_rows(model)
    explained = [row for row in rows if row.arithmetic]
    assert any(row.kind == "Conv2D" for row in explained)
    for row in explained:
        assert arithmetic_result(row.arithmetic) == row.parameters, row
    assert sum(row.parameters for row in rows) == model.count_params()


def test_the_convolution_formula_is_the_textbook_one():
    inputs = keras.Input((8, 8, 32))
    outputs = keras.layers.Conv2D(64, 3, name="conv")(inputs)
    outputs = keras.layers.DepthwiseConv2D(5, use_bias=False, name="depthwise")(outputs)
    model = keras.Model(inputs, keras.layers.Dense(7, name="dense")(keras.layers.Flatten()(outputs)))
    assert parameter_arithmetic(model.get_layer("conv")) == "(3 x 3 x 32 + 1) x 64 = 18,496"
    assert parameter_arithmetic(model.get_layer("depthwise")) == "(5 x 5) x 64 x 1 = 1,600"
    assert parameter_arithmetic(model.get_layer("dense")) == "256 x 7 + 7 = 1,799"
    assert f"total {model.count_params():,} parameters" in format_table(model)


def test_the_cli_prints_the_table_and_names_an_unknown_model(cli):
    code, out, _ = cli("models", "--summary", "lenet", "--image-size", "32", "--classes", "3")
    assert code == 0 and "lenet at 32x32x3, 3 classes" in out and "84 x 3 + 3 = 255" in out
    code, _, err = cli("models", "--summary", "lenett")
    assert code == 2 and "--summary: unknown model 'lenett'" in err
