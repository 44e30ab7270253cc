"""Every layer inside a Keras model, nested models' layers included.

`model.layers` lists one level: a functional backbone inside a model is one
entry there, and its batch norms are not. Freezing a backbone's batch norm,
folding batch norm into convolutions and fitting its momentum all need the
layers at every depth.

Example:
    >>> sum(isinstance(layer, keras.layers.BatchNormalization) for layer in nested_layers(model))
    52
"""


def nested_layers(layer):
    """The layers inside `layer`, depth first (a nested model, then its own layers); `layer` itself is not one."""
    for child in getattr(layer, "layers", []):
        yield child
        yield from nested_layers(child)
