"""Colorization: PSNR against colourfulness as the annealed mean's temperature moves, on one trained run.

The classification colorizer predicts a distribution over ab bins per pixel;
the annealed mean (Zhang et al. 2016) decodes it at a temperature T: T = 1 is
the plain mean (safe, dull colours, a higher PSNR), T -> 0 the mode (vivid,
sometimes wrong colours). The two targets of the pretrained-weights issue pull
against each other along this one knob, so this prints the curve without
retraining: for each T, the validation split's PSNR and colourfulness beside the
grey image's PSNR and the originals' colourfulness (T = 0.38, the default, is
what the run's metrics.json reports, up to the resize of the validation images).

    run = imgpipe run colorize --data ../shared/data/raccoon/images --output RUN
    -> the run's validation images (its recipe's seeded split), resized by area to the model's size
    -> per T: mean PSNR and colourfulness of the results; the grey baseline and the originals

Usage:
    .venv/bin/python benchmarks/colorize_tradeoff.py RUN_DIR [--temperatures 0.2 0.3 0.38 0.5 0.7 1.0]
"""

import argparse
import sys

import numpy as np
import tensorflow as tf

from imgpipe.data.images import load_image
from imgpipe.engine.run_folder import load_run
from imgpipe.models.lab import colorfulness, rgb_to_lab
from imgpipe.tasks.colorize.task import TEMPERATURE, colorized, grey_version


def validation_images(run):
    """The run's validation photos at the model's size (float 0..255 [N, H, W, 3])."""
    data = run.task.read_examples(run.recipe)
    size = list(run.recipe.data.image_size)
    return np.stack([tf.image.resize(load_image(path)[None].astype(np.float32), size, method="area",
                                     antialias=True)[0].numpy() for path in data.val.paths])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.3, 0.38, 0.5, 0.7, 1.0])
    args = parser.parse_args()
    run = load_run(args.run_dir)
    if run.task.name != "colorize":
        sys.exit(f"{args.run_dir}: a {run.task.name} run, not colorize")
    originals = validation_images(run)
    probabilities = tf.concat([run.model(originals[i:i + 8], training=False) for i in range(0, len(originals), 8)], 0)
    lightness = rgb_to_lab(tf.constant(originals))[..., :1]
    grey_psnr = float(tf.reduce_mean(tf.image.psnr(grey_version(originals), originals, 255.0)))
    true_colour = float(tf.reduce_mean(colorfulness(originals)))
    default = TEMPERATURE[run.recipe.options.color_loss]
    print(f"run {args.run_dir} ({run.recipe.model.name}), {len(originals)} validation images at "
          f"{run.recipe.data.image_size}; grey PSNR {grey_psnr:.2f} dB, originals' colourfulness {true_colour:.1f}")
    print(f"{'T':>5} {'PSNR dB':>8} {'vs grey':>8} {'colourfulness':>14} {'of originals':>13}")
    for temperature in args.temperatures:
        results = colorized(probabilities, lightness, temperature)
        psnr = float(tf.reduce_mean(tf.image.psnr(results, originals, 255.0)))
        colour = float(tf.reduce_mean(colorfulness(results)))
        mark = "  (default)" if abs(temperature - default) < 1e-9 else ""
        print(f"{temperature:>5.2f} {psnr:>8.2f} {psnr - grey_psnr:>+8.2f} {colour:>14.1f} "
              f"{colour / true_colour:>12.0%}{mark}")


if __name__ == "__main__":
    main()
