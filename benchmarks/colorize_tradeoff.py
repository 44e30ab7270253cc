"""Colorization: PSNR against colourfulness as the annealed mean's temperature moves, on one trained run.

The classification colorizer predicts a distribution over ab bins per pixel;
the annealed mean (Zhang et al. 2016) decodes it at a temperature T: T = 1 is
the plain mean (safe, dull colours, a higher PSNR), T -> 0 the mode (vivid,
sometimes wrong colours). The two targets of the pretrained-weights issue pull
against each other along this one knob, so this prints the curve without
retraining: for each T, the validation split's PSNR and colourfulness beside the
grey image's PSNR and the originals' colourfulness, scored by the task's own
`score` (T = 0.38, the default, is what the run's metrics.json reports, up to the
rounding of the decoded images to uint8).

    run = imgpipe run colorize --data ../shared/data/raccoon/images --output RUN
    -> the run's validation images (its recipe's seeded split), decoded as validation decodes them
    -> per T: mean PSNR and colourfulness of the results; the grey baseline and the originals

Usage:
    .venv/bin/python benchmarks/colorize_tradeoff.py RUN_DIR [--temperatures 0.2 0.3 0.38 0.5 0.7 1.0]
"""

import argparse
import sys

import tensorflow as tf

from imgpipe.engine.run_folder import load_run
from imgpipe.models.lab import rgb_to_lab
from imgpipe.tasks.colorize.task import TEMPERATURE, colorized
from imgpipe.engine.scoring import split_examples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.3, 0.38, 0.5, 0.7, 1.0])
    args = parser.parse_args()
    run = load_run(args.run_dir)
    if run.task.name != "colorize":
        sys.exit(f"{args.run_dir}: a {run.task.name} run, not colorize")
    val = run.task.read_examples(run.recipe).val
    originals, _ = split_examples(val, run.recipe.data.image_size, val.count)
    originals = tf.cast(originals, tf.float32)
    probabilities = tf.concat([run.model(originals[i:i + 8], training=False) for i in range(0, len(originals), 8)], 0)
    lightness = rgb_to_lab(originals)[..., :1]
    truths = list(originals.numpy())
    default = TEMPERATURE[run.recipe.options.color_loss]
    rows = []
    for temperature in args.temperatures:
        results = colorized(probabilities, lightness, temperature).numpy()
        rows.append((temperature, run.task.score([{"image": image} for image in results], truths, {})))
    grey, true_colour = rows[0][1]["psnr_grey"], rows[0][1]["colorfulness_true"]
    print(f"run {args.run_dir} ({run.recipe.model.name}), {len(truths)} validation images at "
          f"{run.recipe.data.image_size}; grey PSNR {grey:.2f} dB, originals' colourfulness {true_colour:.1f}")
    print(f"{'T':>5} {'PSNR dB':>8} {'vs grey':>8} {'colourfulness':>14} {'of originals':>13}")
    for temperature, scores in rows:
        mark = "  (default)" if abs(temperature - default) < 1e-9 else ""
        print(f"{temperature:>5.2f} {scores['psnr']:>8.2f} {scores['psnr'] - grey:>+8.2f} "
              f"{scores['colorfulness']:>14.1f} {scores['colorfulness'] / true_colour:>12.0%}{mark}")


if __name__ == "__main__":
    main()
