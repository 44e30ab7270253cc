"""Pictures a run leaves behind: learning curves, sample grids, confusion matrices, reliability diagrams.

Curves and matrices with matplotlib (non-interactive Agg backend, so it works on servers and CI);
image grids with Pillow, which is many times faster for dozens of tiles.

Example:
    >>> plot_curves(read_history("runs/classify/classify/history.csv"), "curves.png")
"""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history, path, fine_tune_from=0):
    """One panel per metric (loss, accuracy, ...), training and validation per epoch.

    A metric scored on validation only (detection's mAP50, every `detect.map_every` epochs, NaN in
    between) gets its own panel, its scored epochs joined. `fine_tune_from` > 0: the number of
    frozen-backbone warm-up epochs; the first epoch after them is marked by a dashed line, when the
    run got there.
    """
    not_metrics = ("epoch", "learning_rate", "wall_seconds")
    names = [key for key in history if key not in not_metrics and not key.startswith("val_")]
    names += [key[len("val_"):] for key in history if key.startswith("val_") and key[len("val_"):] not in history]
    if not names:
        return None
    some_column = next(iter(history[key] for key in history if key != "epoch"))
    epochs = np.asarray(history.get("epoch", range(len(some_column)))) + 1
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        if name in history:
            axis.plot(epochs, history[name], marker="o", markersize=3, color="C0", label="train")
        if f"val_{name}" in history:
            values = np.asarray(history[f"val_{name}"], dtype=float)
            scored = ~np.isnan(values)
            axis.plot(epochs[scored], values[scored], marker="o", markersize=3, color="C1", label="validation")
        if fine_tune_from and epochs.max() > fine_tune_from:  # a warm-up can end a run (trainer.py)
            axis.axvline(fine_tune_from + 0.5, color="grey", linestyle="--", linewidth=1, label="fine-tuning starts")
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    return _save(figure, path)


def plot_image_grid(images, titles, path, columns=8, title=None):
    """uint8 images in a grid with a caption under each; `images` is a list of HxWx3 arrays.

    Drawn with Pillow rather than matplotlib: a grid of 32 matplotlib axes takes over a second to lay
    out, and every run writes two grids. Small images are enlarged with nearest-neighbour so their
    pixels stay visible; large ones are shrunk to fit a tile.

    Example:
        >>> plot_image_grid([np.zeros((32, 32, 3), np.uint8)], ["cat 0.91"], "preview.png")
    """
    from PIL import Image, ImageDraw, ImageFont

    count = len(images)
    if not count:
        return None
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    pictures = [Image.fromarray(np.asarray(image).astype(np.uint8)) for image in images]
    tile = int(min(192, max(96, max(max(picture.size) for picture in pictures))))  # largest side, 96..192 px
    pictures = [_fit(picture, tile) for picture in pictures]
    row_height = max(picture.height for picture in pictures)
    font = ImageFont.load_default(size=11)
    caption_height, title_height, gap = 16, (24 if title else 0), 6
    canvas = Image.new("RGB", (columns * (tile + gap) + gap,
                               title_height + rows * (row_height + caption_height + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((canvas.width / 2, 12), title, fill="black", anchor="mm", font=ImageFont.load_default(size=14))
    for index, (picture, caption) in enumerate(zip(pictures, titles)):
        left = gap + (index % columns) * (tile + gap)
        top = title_height + gap + (index // columns) * (row_height + caption_height + gap)
        canvas.paste(picture, (left + (tile - picture.width) // 2, top + (row_height - picture.height) // 2))
        text = str(caption)
        while len(text) > 1 and draw.textlength(text, font=font) > tile + gap:
            text = text[:-1]
        draw.text((left + tile / 2, top + row_height + caption_height / 2), text, fill="black", anchor="mm",
                  font=font)
    canvas.save(path)
    return path


def _fit(picture, side):
    """The picture scaled so its longer side is `side`: nearest-neighbour up, bilinear down."""
    from PIL import Image

    scale = side / max(picture.size)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), resample)


def plot_confusion_matrix(matrix, class_names, path):
    """Row-normalised confusion matrix with counts: rows true class, columns predicted."""
    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(class_names) + 2.5)
    figure, axis = plt.subplots(figsize=(size, size))
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=float), where=totals > 0)
    axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(ticks, class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(class_names) <= 30:
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                colour = "white" if normalised[row, column] > 0.5 else "black"
                axis.text(column, row, int(matrix[row, column]), ha="center", va="center", fontsize=7, color=colour)
    axis.set_title("confusion matrix (validation)")
    return _save(figure, path)


def plot_reliability(panels, path):
    """Reliability diagram: per confidence bin, accuracy against confidence, with each bin's image count.

    Args:
        panels: list of (title, bins) with bins as `imgpipe.understand.calibration.reliability_bins` returns.
        path: where the PNG goes.
    """
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for axis, (title, bins) in zip(axes.flat, panels):
        counts = np.asarray(bins["counts"])
        width = 1.0 / len(counts)
        centres = (np.arange(len(counts)) + 0.5) * width
        filled = counts > 0
        axis.bar(centres[filled], np.asarray(bins["accuracy"])[filled], width=width * 0.9, color="tab:blue",
                 label="accuracy in the bin")
        axis.plot(np.asarray(bins["confidence"])[filled], np.asarray(bins["accuracy"])[filled], "o",
                  color="tab:orange", markersize=4, label="(mean confidence, accuracy)")
        axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="calibrated")
        for centre, count, height in zip(centres[filled], counts[filled], np.asarray(bins["accuracy"])[filled]):
            axis.text(centre, min(height + 0.02, 0.97), str(int(count)), ha="center", fontsize=7)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.05)
        axis.set_xlabel("confidence (top score)")
        axis.set_ylabel("accuracy")
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3)
    # Below the panels: inside, the legend hid the bins of an under-confident model (top left).
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def class_palette(count, colours=None):
    """uint8 [count, 3] colours: the data set's own colour table, else a fixed qualitative palette."""
    if colours:
        return np.array(colours, dtype=np.uint8)
    base = (np.array(plt.get_cmap("tab20").colors) * 255).astype(np.uint8)
    return np.concatenate([base[[0, 6, 4, 2, 8, 10, 12, 14, 16, 18, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19]]] *
                          (count // 20 + 1))[:count]


def overlay_mask(image, mask, palette, alpha=0.5, ignore_index=None):
    """The image with each pixel tinted by its class colour; ignored pixels left as they are."""
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask)
    valid = (mask >= 0) & (mask < len(palette))
    if ignore_index is not None:
        valid &= mask != ignore_index
    tint = palette[np.where(valid, mask, 0)].astype(np.float32)
    blended = np.where(valid[..., None], (1 - alpha) * image + alpha * tint, image)
    return np.clip(blended, 0, 255).astype(np.uint8)


def draw_boxes(image, boxes, labels, colour):
    """A copy of the uint8 image with boxes (x_min, y_min, x_max, y_max) and their labels drawn."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 150))
    for box, label in zip(np.asarray(boxes, dtype=float).reshape(-1, 4), labels):
        draw.rectangle([float(v) for v in box], outline=tuple(colour), width=width)
        if label:
            draw.text((float(box[0]) + 2, float(box[1]) + 1), str(label), fill=tuple(colour))
    return np.asarray(canvas)


def save_image(pixels, path):
    """Writes a uint8 HxWx3 array as an image file (format from the extension)."""
    from PIL import Image

    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path
