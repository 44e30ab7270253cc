"""Colorization: PSNR against colourfulness as the annealed mean's temperature moves, on trained runs.

The classification colorizer predicts a distribution over ab bins per pixel;
the annealed mean (Zhang et al. 2016) decodes it at a temperature T: T = 1 is
the plain mean (safe, dull colours, a higher PSNR), T -> 0 the mode (vivid,
sometimes wrong colours). The two targets of the pretrained-weights issue pull
against each other along this one knob, so this prints the curve without
retraining: for each run and each T, the validation split's PSNR and colourfulness
beside the grey image's PSNR and the originals' colourfulness, scored by the task's
own `score` (T = 0.38, the default, is what the run's metrics.json reports, up to the
rounding of the decoded images to uint8). With `--plot`, one curve per run in one
picture, the targets drawn as dashed lines, so runs trained differently can be
compared along the whole knob.

    run = imgpipe run colorize --data ../shared/data/raccoon/images --output RUN
    -> the run's validation images (its recipe's seeded split), decoded as validation decodes them
    -> per T: mean PSNR and colourfulness of the results; the grey baseline and the originals

Usage:
    .venv/bin/python benchmarks/colorize_tradeoff.py RUN_DIR [RUN_DIR ...] \
        [--temperatures 0.2 0.3 0.38 0.5 0.7 1.0] [--labels A B ...] [--plot tradeoff.png]
"""

import argparse
import sys

import tensorflow as tf

from imgpipe.engine.run_folder import load_run
from imgpipe.engine.scoring import split_examples
from imgpipe.models.lab import rgb_to_lab
from imgpipe.tasks.colorize.task import TEMPERATURE, colorized

PSNR_GAIN_TARGET = 1.0  # dB over the grey image
COLOURFULNESS_TARGET = 0.6  # of the originals'


def tradeoff(run_dir, temperatures):
    """[(T, scores)] for one colorize run's validation split, and the run's default T."""
    run = load_run(run_dir)
    if run.task.name != "colorize":
        sys.exit(f"{run_dir}: a {run.task.name} run, not colorize")
    val = run.task.read_examples(run.recipe).val
    originals, _ = split_examples(val, run.recipe.data.image_size, val.count)
    originals = tf.cast(originals, tf.float32)
    probabilities = tf.concat([run.model(originals[i:i + 8], training=False) for i in range(0, len(originals), 8)], 0)
    lightness = rgb_to_lab(originals)[..., :1]
    truths = list(originals.numpy())
    rows = []
    for temperature in temperatures:
        results = colorized(probabilities, lightness, temperature).numpy()
        rows.append((temperature, run.task.score([{"image": image} for image in results], truths, {})))
    print(f"run {run_dir} ({run.recipe.model.name}, learning rate {run.recipe.train.learning_rate}, "
          f"{run.recipe.train.epochs} epochs), {len(truths)} validation images at {run.recipe.data.image_size}; "
          f"grey PSNR {rows[0][1]['psnr_grey']:.2f} dB, originals' colourfulness {rows[0][1]['colorfulness_true']:.1f}")
    return rows, TEMPERATURE[run.recipe.options.color_loss]


def print_rows(rows, default):
    grey, true_colour = rows[0][1]["psnr_grey"], rows[0][1]["colorfulness_true"]
    print(f"{'T':>5} {'PSNR dB':>8} {'vs grey':>8} {'colourfulness':>14} {'of originals':>13}")
    for temperature, scores in rows:
        mark = "  (default)" if abs(temperature - default) < 1e-9 else ""
        print(f"{temperature:>5.2f} {scores['psnr']:>8.2f} {scores['psnr'] - grey:>+8.2f} "
              f"{scores['colorfulness']:>14.1f} {scores['colorfulness'] / true_colour:>12.0%}{mark}")


def plot(curves, path):
    """One line per run through its (colourfulness share, PSNR gain) points, T written beside each point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, (rows, default) in curves.items():
        shares = [scores["colorfulness"] / scores["colorfulness_true"] * 100 for _, scores in rows]
        gains = [scores["psnr"] - scores["psnr_grey"] for _, scores in rows]
        line, = axis.plot(shares, gains, marker="o", label=label)
        for (temperature, _), share, gain in zip(rows, shares, gains, strict=True):
            is_default = abs(temperature - default) < 1e-9
            axis.annotate(f"T={temperature:g}", (share, gain), fontsize=7, textcoords="offset points",
                          xytext=(4, 3), fontweight="bold" if is_default else "normal", color=line.get_color())
    axis.axhline(PSNR_GAIN_TARGET, color="grey", linestyle="--", linewidth=1)
    axis.axvline(COLOURFULNESS_TARGET * 100, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("colourfulness, % of the originals'")
    axis.set_ylabel("PSNR over the grey image, dB")
    axis.set_title("colorize: targets dashed (up and to the right of both)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.3, 0.38, 0.5, 0.7, 1.0])
    parser.add_argument("--labels", nargs="+", help="one per run directory (default: the directories)")
    parser.add_argument("--plot", help="write the curves to this PNG")
    args = parser.parse_args()
    labels = args.labels or args.run_dirs
    if len(labels) != len(args.run_dirs):
        sys.exit(f"--labels: {len(labels)} labels for {len(args.run_dirs)} run directories")
    if len(set(labels)) != len(labels):
        sys.exit("each run needs its own label (a run directory given twice, or --labels repeating one)")
    curves = {}
    for label, run_dir in zip(labels, args.run_dirs, strict=True):
        rows, default = tradeoff(run_dir, args.temperatures)
        print_rows(rows, default)
        curves[label] = (rows, default)
    if args.plot:
        plot(curves, args.plot)


if __name__ == "__main__":
    main()
