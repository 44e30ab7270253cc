"""A model's layers with their parameter counts, and the arithmetic behind each convolution's count.

Keras' `model.summary()` gives totals; a learner checking their understanding
wants to see why a 3x3 convolution from 32 to 64 channels has 18,496
parameters: (3 x 3 x 32 + 1) x 64. `layer_rows` returns that arithmetic next to
Keras' own count, so the two can be compared (the tests do).

Example:
    >>> for row in layer_rows(model):
    ...     print(row.name, row.kind, row.parameters, row.arithmetic)
"""

import dataclasses

import keras


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One line of the table: `parameters` is Keras' count; `arithmetic` explains it where a formula is known."""

    name: str
    kind: str
    output_shape: str
    parameters: int
    arithmetic: str


def layer_rows(model):
    """One `LayerRow` per layer of `model`, nested models flattened (their layers named `outer/inner`)."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            rows.extend(dataclasses.replace(row, name=f"{layer.name}/{row.name}") for row in layer_rows(layer))
            continue
        rows.append(LayerRow(layer.name, type(layer).__name__, _output_shape(layer), layer.count_params(),
                             parameter_arithmetic(layer)))
    return rows


def parameter_arithmetic(layer):
    """'(kh x kw x in + 1) x filters = N' for convolutions, 'in x out + out = N' for dense layers, else ''."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        channels = layer.kernel.shape[2]
        bias = " + 1" if layer.use_bias else ""
        count = (kh * kw + (1 if layer.use_bias else 0)) * channels * layer.depth_multiplier
        return f"({kh} x {kw}{bias}) x {channels} x {layer.depth_multiplier} = {count:,}"
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)) and \
            not isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        inputs = layer.kernel.shape[3] if isinstance(layer, keras.layers.Conv2DTranspose) else layer.kernel.shape[2]
        bias = " + 1" if layer.use_bias else ""
        count = (kh * kw * inputs + (1 if layer.use_bias else 0)) * layer.filters
        return f"({kh} x {kw} x {inputs}{bias}) x {layer.filters} = {count:,}"
    if isinstance(layer, keras.layers.Dense):
        inputs, units = layer.kernel.shape
        bias = f" + {units}" if layer.use_bias else ""
        return f"{inputs} x {units}{bias} = {inputs * units + (units if layer.use_bias else 0):,}"
    if isinstance(layer, keras.layers.BatchNormalization):
        channels = layer.gamma.shape[0] if layer.gamma is not None else layer.moving_mean.shape[0]
        learned = int(layer.center) + int(layer.scale)
        return f"({learned} learned + 2 running) x {channels} = {(learned + 2) * channels:,}"
    return ""


def format_table(model):
    """The rows as aligned text, with the totals Keras reports."""
    rows = layer_rows(model)
    header = ("layer", "type", "output shape", "parameters", "why")
    cells = [header] + [(row.name, row.kind, row.output_shape, f"{row.parameters:,}", row.arithmetic) for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if column == 3 else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(line, widths))).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    lines.append(f"total {model.count_params():,} parameters ({trainable:,} trainable, "
                 f"{model.count_params() - trainable:,} not)")
    return "\n".join(lines)


def _output_shape(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return ""
    return "(" + ", ".join("None" if size is None else str(size) for size in shape) + ")"
