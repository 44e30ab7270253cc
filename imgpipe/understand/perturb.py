"""Controlled perturbations for the robustness card: five families, severities 1 to 5, in physical units.

Augmentation (`imgpipe.engine.augment`) draws a random strength for each training
image; here every severity is a fixed amount of change, said in the units a
person would use: degrees of rotation, a gamma exponent, a colour temperature
in kelvin, a fraction of pixels erased, a displacement as a fraction of the
image side, a noise level in grey levels. `SEVERITIES` is the whole table.

What is random is only what has no size: the direction of a rotation, which
cells of the image an occluder covers, the pattern of an elastic field or of
the noise. It is drawn once per image from the image's seed, and the same seed
is used at every severity, so an image is perturbed the same way, only more,
as the severity grows: the erased cells of severity 2 contain those of
severity 1, the noise of severity 5 is the noise of severity 1 scaled up.

Each (family, severity) is one albumentations pipeline run through the
augmentation's own `Augmenter`, so geometry moves masks and boxes with the
image exactly as in training. Pixels that a geometric change brings in from
outside the image are black, and their mask value is `OUTSIDE` (-1): no class,
so metrics leave them out.

Example:
    >>> perturbation = Perturbation("viewpoint", severity=3, image_size=[64, 64], target_kind="mask")
    >>> image, mask = perturbation.apply(image, mask, seed=image_seeds(1337, 1)[0])
"""

import warnings

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.pixel.functional import PLANCKIAN_COEFFS

from imgpipe.engine.augment import Augmenter

OUTSIDE = -1
DAYLIGHT_KELVIN = 6500
ERASE_GRID = 10  # occluders are cells of a 10 x 10 grid, so a fraction is exact to 1 %
MID_GREY = 128
ELASTIC_SMOOTHNESS = 0.08  # sigma of the elastic field's smoothing, as a fraction of the shorter side

# Severity 1..5 of each family. Lengths are fractions of the image's shorter side, so a
# severity means the same at 32 and at 224 pixels; noise and brightness are fractions of 255.
SEVERITIES = {
    "viewpoint": [
        {"rotation_degrees": 5, "scale": 0.95, "perspective_corner_std": 0.02, "mirrored": False},
        {"rotation_degrees": 10, "scale": 0.90, "perspective_corner_std": 0.03, "mirrored": False},
        {"rotation_degrees": 15, "scale": 0.85, "perspective_corner_std": 0.04, "mirrored": True},
        {"rotation_degrees": 25, "scale": 0.80, "perspective_corner_std": 0.05, "mirrored": True},
        {"rotation_degrees": 35, "scale": 0.70, "perspective_corner_std": 0.06, "mirrored": True},
    ],
    "illumination": [
        {"gamma": 1.2, "brightness_shift": 0.04, "contrast_factor": 0.9, "colour_temperature_kelvin": [5500, 7500]},
        {"gamma": 1.4, "brightness_shift": 0.08, "contrast_factor": 0.8, "colour_temperature_kelvin": [5000, 8500]},
        {"gamma": 1.6, "brightness_shift": 0.12, "contrast_factor": 0.7, "colour_temperature_kelvin": [4500, 10000]},
        {"gamma": 1.8, "brightness_shift": 0.16, "contrast_factor": 0.6, "colour_temperature_kelvin": [4000, 12000]},
        {"gamma": 2.2, "brightness_shift": 0.20, "contrast_factor": 0.5, "colour_temperature_kelvin": [3500, 15000]},
    ],
    "occlusion": [
        {"erased_fraction": 0.05},
        {"erased_fraction": 0.10},
        {"erased_fraction": 0.20},
        {"erased_fraction": 0.30},
        {"erased_fraction": 0.40},
    ],
    "deformation": [
        {"displacement_rms": 0.01},
        {"displacement_rms": 0.02},
        {"displacement_rms": 0.03},
        {"displacement_rms": 0.045},
        {"displacement_rms": 0.06},
    ],
    "clutter": [
        {"noise_std": 0.02, "blur_sigma": 0.004},
        {"noise_std": 0.04, "blur_sigma": 0.008},
        {"noise_std": 0.06, "blur_sigma": 0.012},
        {"noise_std": 0.09, "blur_sigma": 0.016},
        {"noise_std": 0.12, "blur_sigma": 0.024},
    ],
}
FAMILIES = tuple(SEVERITIES)
LEVELS = (1, 2, 3, 4, 5)

MEANING = {
    "rotation_degrees": "rotation in degrees, clockwise or anticlockwise per image",
    "scale": "objects shrink to this fraction of their size (zoom out)",
    "perspective_corner_std": "std of the random shift of each image corner, fraction of the side",
    "mirrored": "flipped left to right",
    "gamma": "pixel values p -> p^gamma (darker) or p^(1/gamma) (brighter), per image",
    "brightness_shift": "plus or minus this fraction of 255, with the gamma's direction",
    "contrast_factor": "differences from the image's mean grey are multiplied by this",
    "colour_temperature_kelvin": "illuminant changed from daylight (6500 K) to the warm or the cool value, per image",
    "erased_fraction": "fraction of the image covered by mid-grey patches (cells of a 10 x 10 grid)",
    "displacement_rms": "root-mean-square displacement of a smooth elastic field, fraction of the side",
    "noise_std": "std of Gaussian noise added to every pixel, fraction of 255",
    "blur_sigma": "Gaussian blur sigma, fraction of the side",
}


def severity_parameters(family, severity, image_size=None):
    """The physical parameters of one (family, severity), plus pixel values at `image_size` if given.

    Example:
        >>> severity_parameters("clutter", 5, [64, 64])
        {'noise_std': 0.12, 'blur_sigma': 0.024, 'noise_std_grey_levels': 30.6, 'blur_sigma_pixels': 1.54}
    """
    _check(family, severity)
    parameters = dict(SEVERITIES[family][severity - 1])
    if image_size is not None:
        side = min(image_size)
        if "displacement_rms" in parameters:
            parameters["displacement_rms_pixels"] = round(parameters["displacement_rms"] * side, 2)
        if "noise_std" in parameters:
            parameters["noise_std_grey_levels"] = round(parameters["noise_std"] * 255, 1)
            parameters["blur_sigma_pixels"] = round(parameters["blur_sigma"] * side, 2)
    return parameters


def image_seeds(seed, count):
    """One seed per image, the same for every family and severity (uint32 [count]).

    Example:
        >>> image_seeds(1337, 3).tolist() == image_seeds(1337, 3).tolist()
        True
    """
    return np.random.SeedSequence(int(seed)).generate_state(int(count)) if count else np.zeros(0, np.uint32)


class Perturbation(Augmenter):
    """One family at one severity, for images of one size, applied like an augmentation.

    It is an `Augmenter` whose pipeline is fixed by `SEVERITIES` instead of a
    strength: `apply(image, target, seed)` and `apply_batch` move a mask or
    boxes with the image in the same way.

    Args:
        family: str, one of `FAMILIES`.
        severity: int, 1 (mild) to 5 (harsh).
        image_size: [height, width] of the images it will see (lengths in the table are fractions of it).
        target_kind: a name in `imgpipe.engine.augment.TARGET_KINDS` ('label', 'mask', 'boxes', ...).

    Example:
        >>> Perturbation("occlusion", 2, [32, 32]).apply(image, label, seed=7)
    """

    def __init__(self, family, severity, image_size, target_kind="label"):
        _check(family, severity)
        super().__init__("none", "none", "none", target_kind)
        self.family, self.severity = family, int(severity)
        self.image_size = [int(side) for side in image_size]
        self.parameters = severity_parameters(family, self.severity, self.image_size)

    @property
    def is_identity(self):
        return False

    def build(self):
        transforms = TRANSFORMS[self.family](self.parameters, self.image_size)
        with warnings.catch_warnings():
            # Pixel-only families leave boxes as they are, which albumentations warns about.
            warnings.filterwarnings("ignore", message="Got processor for bboxes")
            return A.Compose(transforms, **self.target.compose_options())


def changed_pixels(before, after):
    """How many pixels differ in any channel between two images of the same shape."""
    before, after = np.asarray(before), np.asarray(after)
    return int(np.any(before != after, axis=-1).sum())


# === The families as albumentations pipelines ===
# Each pipeline has the same transforms, in the same order, at every severity (only their
# amounts differ), so one seed draws the same directions and patterns at every severity.
_BORDER = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": OUTSIDE}


def _viewpoint(parameters, image_size):
    degrees, scale = parameters["rotation_degrees"], parameters["scale"]
    turn = [A.Affine(rotate=(angle, angle), scale=(scale, scale), rotate_method="ellipse", p=1.0, **_BORDER)
            for angle in (degrees, -degrees)]
    corners = parameters["perspective_corner_std"]
    # The flip is last: whether it is there must not change the random draws of the others.
    return [A.OneOf(turn, p=1.0), A.Perspective(scale=(corners, corners), p=1.0, **_BORDER),
            A.HorizontalFlip(p=1.0 if parameters["mirrored"] else 0.0)]


def _illumination(parameters, image_size):
    gamma, shift = parameters["gamma"], parameters["brightness_shift"]
    darker = A.Sequential([A.RandomGamma(gamma_limit=(gamma * 100, gamma * 100), p=1.0),
                           _brightness_contrast(-shift, 1.0)], p=1.0)
    brighter = A.Sequential([A.RandomGamma(gamma_limit=(100 / gamma, 100 / gamma), p=1.0),
                             _brightness_contrast(shift, 1.0)], p=1.0)
    warm, cool = parameters["colour_temperature_kelvin"]
    contrast = A.RandomBrightnessContrast(brightness_limit=(1 - parameters["contrast_factor"],) * 2,
                                          contrast_limit=(parameters["contrast_factor"] - 1,) * 2,
                                          brightness_by_max=False, p=1.0)
    return [A.OneOf([darker, brighter], p=1.0), contrast,
            A.OneOf([ColourTemperature(warm), ColourTemperature(cool)], p=1.0)]


def _brightness_contrast(shift, contrast):
    return A.RandomBrightnessContrast(brightness_limit=(shift, shift), contrast_limit=(contrast - 1,) * 2,
                                      brightness_by_max=True, p=1.0)


def _occlusion(parameters, image_size):
    return [ErasedCells(parameters["erased_fraction"])]


def _deformation(parameters, image_size):
    side = min(image_size)
    smoothness = max(1.0, ELASTIC_SMOOTHNESS * side)
    alpha = parameters["displacement_rms"] * side / unit_field_rms(*image_size, smoothness)
    return [A.ElasticTransform(alpha=alpha, sigma=smoothness, noise_distribution="uniform", p=1.0, **_BORDER)]


def unit_field_rms(height, width, sigma):
    """Expected RMS length, in pixels, of albumentations' elastic displacement at alpha = 1.

    The field is uniform noise in [-1, 1] (variance 1/3) for each pixel and
    axis, the x and y fields stacked into one [2H, W] array and smoothed by
    OpenCV's Gaussian (kernel 8 sigma + 1, replicated border). A pixel's
    variance is 1/3 times the sum of its squared filter weights, which the
    replicated border raises near the edges; so it is summed exactly here
    rather than taken as 1 / (4 pi sigma^2), which holds far from any edge.
    """
    kernel = cv2.getGaussianKernel(int(round(sigma * 8 + 1)) | 1, sigma)[:, 0]

    def mean_squared_weights(length):
        weights = np.zeros((length, length))
        for offset, weight in enumerate(kernel):
            source = np.clip(np.arange(length) + offset - len(kernel) // 2, 0, length - 1)
            np.add.at(weights, (np.arange(length), source), weight)
        return float(np.sum(weights**2, axis=1).mean())

    per_axis_variance = mean_squared_weights(2 * int(height)) * mean_squared_weights(int(width)) / 3.0
    return float(np.sqrt(2.0 * per_axis_variance))


def _clutter(parameters, image_size):
    sigma = parameters["blur_sigma"] * min(image_size)
    noise = parameters["noise_std"]
    return [A.GaussianBlur(blur_limit=0, sigma_limit=(sigma, sigma), p=1.0),
            A.GaussNoise(std_range=(noise, noise), mean_range=(0.0, 0.0), per_channel=False, p=1.0)]


TRANSFORMS = {
    "viewpoint": _viewpoint,
    "illumination": _illumination,
    "occlusion": _occlusion,
    "deformation": _deformation,
    "clutter": _clutter,
}


class ErasedCells(A.ImageOnlyTransform):
    """Covers `fraction` of the image with mid-grey cells of a 10 x 10 grid; masks and boxes stay.

    The cells are taken in an order drawn from the seed, so a larger fraction
    covers the cells of a smaller one and more.
    """

    def __init__(self, fraction, p=1.0):
        super().__init__(p=p)
        self.fraction = float(fraction)

    def get_params_dependent_on_data(self, params, data):
        order = self.random_generator.permutation(ERASE_GRID * ERASE_GRID)
        return {"cells": order[: int(round(self.fraction * ERASE_GRID * ERASE_GRID))]}

    def apply(self, img, cells=(), **params):
        height, width = img.shape[:2]
        rows = np.linspace(0, height, ERASE_GRID + 1).round().astype(int)
        columns = np.linspace(0, width, ERASE_GRID + 1).round().astype(int)
        erased = img.copy()
        for cell in cells:
            row, column = divmod(int(cell), ERASE_GRID)
            erased[rows[row]:rows[row + 1], columns[column]:columns[column + 1]] = MID_GREY
        return erased


class ColourTemperature(A.ImageOnlyTransform):
    """Re-lights the image from daylight (6500 K) to a black body of `kelvin` (a colour cast).

    Channel gains are the black-body RGB of albumentations' Planckian table at
    `kelvin`, divided by those at 6500 K, with green kept.
    """

    def __init__(self, kelvin, p=1.0):
        super().__init__(p=p)
        self.kelvin = int(kelvin)

    def apply(self, img, **params):
        gains = _blackbody_rgb(self.kelvin) / _blackbody_rgb(DAYLIGHT_KELVIN)
        return np.clip(np.round(img.astype(np.float32) * gains), 0, 255).astype(img.dtype)


def _blackbody_rgb(kelvin):
    table = PLANCKIAN_COEFFS["blackbody"]
    rgb = np.asarray(table[min(table, key=lambda t: abs(t - kelvin))], np.float32)
    return rgb / rgb[1]


def _check(family, severity):
    if family not in SEVERITIES:
        raise ValueError(f"family: expected one of {', '.join(SEVERITIES)}, got {family!r}")
    if severity not in LEVELS:
        raise ValueError(f"severity: expected one of 1..5, got {severity!r}")
