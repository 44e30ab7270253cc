"""The image grid shows every image, in order, enlarged without blurring; the curves mark fine-tuning only when
it ran."""

import numpy as np
import pytest
from PIL import Image

from imgpipe.engine.plots import plot_curves, plot_image_grid


def _solid(colour, size=8):
    return np.full((size, size, 3), colour, dtype=np.uint8)


def test_grid_places_each_image_in_order_enlarged_with_sharp_pixels(tmp_path):
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    checker = np.zeros((8, 8, 3), dtype=np.uint8)
    checker[::2, ::2] = 255
    path = plot_image_grid([_solid(red), _solid(blue), _solid(green), checker], ["a", "b", "c", "d"],
                           tmp_path / "grid.png", columns=2, title="samples")
    canvas = np.asarray(Image.open(path).convert("RGB"))
    colours = {tuple(colour): int(count) for colour, count in
               zip(*np.unique(canvas.reshape(-1, 3), axis=0, return_counts=True))}
    tile = 96
    for colour in (red, blue, green):
        assert colours[colour] == tile * tile
    red_rows, red_columns = np.nonzero(np.all(canvas == red, axis=-1))
    blue_rows, blue_columns = np.nonzero(np.all(canvas == blue, axis=-1))
    green_rows, _ = np.nonzero(np.all(canvas == green, axis=-1))
    assert red_rows.min() == blue_rows.min() < green_rows.min()
    assert red_columns.max() < blue_columns.min()
    # 8 px enlarged 12x by nearest neighbour: each checker pixel is a 12x12 block, no grey in between.
    block = canvas[green_rows.min():green_rows.min() + tile, blue_columns.min():blue_columns.min() + tile]
    assert set(np.unique(block)) == {0, 255}
    assert np.array_equal(block[:12, :12], np.full((12, 12, 3), 255)) and not block[:12, 12:24].any()


@pytest.mark.parametrize("epochs, marked", [(4, True), (2, False)])
def test_the_fine_tuning_mark_is_drawn_only_when_fine_tuning_ran(tmp_path, monkeypatch, epochs, marked):
    import matplotlib.axes

    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda self, x, **kwargs: drawn.append(x))
    history = {"epoch": list(range(epochs)), "loss": [1.0] * epochs, "val_loss": [1.0] * epochs}
    plot_curves(history, tmp_path / "curves.png", fine_tune_from=2)
    assert drawn == ([2.5] if marked else [])


def test_a_metric_scored_on_validation_only_gets_its_panel_with_its_scored_epochs(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = {}
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, title: drawn.setdefault(title, self))
    lines = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kwargs: lines.append((self, kwargs["label"], list(x), list(y)))
                        or original(self, x, y, **kwargs))
    nan = float("nan")
    history = {"epoch": [0, 1, 2, 3, 4], "loss": [5, 4, 3, 2, 1], "val_loss": [6, 5, 4, 3, 2],
               "val_map50": [nan, nan, 0.3, nan, 0.5], "wall_seconds": [1, 2, 3, 4, 5]}
    plot_curves(history, tmp_path / "curves.png")
    assert set(drawn) == {"loss", "map50"}
    assert [(label, x, y) for axis, label, x, y in lines if axis is drawn["map50"]] == [
        ("validation", [3, 5], [0.3, 0.5])]
