"""What every file under a data folder really is: decodable or not, format, mode, rotation, hashes.

`imgpipe check` needs one full look at each file, which training never takes
(training reads headers up front and decodes lazily). Each image is decoded
once, at reduced size where the format allows (JPEG DCT scaling), which is
enough to find truncated files and to compute a perceptual hash (pHash, from
the `imagehash` library) for near-duplicate search. Files are read, never
written.

Example:
    >>> reports = scan_files(list_images("./images"))
    >>> [r.problem for r in reports if r.problem]
    ['./images/cat/broken.jpg: cannot decode image (image file is truncated)']
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import os

import imagehash
import numpy as np
from PIL import Image

from imgpipe.data.walk import walk_folders
from imgpipe.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, load_image, read_header

HASH_SIDE = 64  # decoded side for hashing: pHash works on 32x32, so more detail is wasted
ANNOTATION_SUFFIXES = (".xml", ".json", ".txt", ".yaml", ".yml", ".csv", ".md", ".names")

# The Pillow formats each file extension promises.
FORMATS_BY_SUFFIX = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".bmp": ("BMP",), ".gif": ("GIF",),
    ".webp": ("WEBP",), ".tif": ("TIFF",), ".tiff": ("TIFF",),
}

# Pillow modes in the words a user knows.
MODE_NAMES = {
    "RGB": "RGB", "L": "grey", "1": "black and white", "P": "palette", "RGBA": "RGB + alpha", "LA": "grey + alpha",
    "PA": "palette + alpha", "CMYK": "CMYK", "YCbCr": "YCbCr", "I;16": "16-bit grey", "I;16B": "16-bit grey",
    "I;16L": "16-bit grey", "I": "32-bit grey", "F": "float grey",
}


@dataclasses.dataclass
class FileReport:
    """One image file as found: `problem` is None when it decodes.

    Attributes:
        path: the file.
        problem: one line naming the file and why it cannot be used, or None.
        format: what the content is (Pillow's name: JPEG, PNG, ...), whatever the extension says.
        mode: Pillow mode of the stored pixels (L, P, RGBA, CMYK, I;16, ...).
        width, height: stored size.
        exif_rotated: the EXIF orientation asks for a rotation or flip.
        sha256: of the file's bytes (exact duplicates).
        phash: 64-bit perceptual hash as an int (near duplicates), None when undecodable.
    """

    path: str
    problem: object = None
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    exif_rotated: bool = False
    sha256: str = ""
    phash: object = None

    @property
    def extension_mismatch(self):
        """The extension promises another format than the content has (a PNG named .jpg)."""
        expected = FORMATS_BY_SUFFIX.get(os.path.splitext(self.path)[1].lower())
        return bool(self.format) and expected is not None and self.format not in expected


def scan_file(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Reads and decodes one file; never raises for a bad image (the report says what is wrong)."""
    path = str(path)
    report = FileReport(path=path)
    try:
        with open(path, "rb") as handle:
            report.sha256 = hashlib.sha256(handle.read()).hexdigest()
        header = read_header(path, max_pixels)
        report.format, report.mode = header.format, header.mode
        report.width, report.height, report.exif_rotated = header.width, header.height, header.exif_rotated
        pixels = load_image(path, max_pixels=max_pixels, draft=(HASH_SIDE, HASH_SIDE))
    except UnreadableImage as error:
        report.problem = str(error)
        return report
    except OSError as error:
        report.problem = f"{path}: cannot read file ({error.strerror or error})"
        return report
    report.phash = _phash_int(Image.fromarray(pixels))
    return report


def scan_files(paths, max_pixels=DEFAULT_MAX_PIXELS, workers=None):
    """`scan_file` for every path, in threads (Pillow decodes without holding the GIL); order kept."""
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda path: scan_file(path, max_pixels), paths))


def other_files(root, image_paths):
    """Files below `root` that are neither images imgpipe reads nor annotation files, by extension."""
    images = set(map(os.path.abspath, image_paths))
    found = collections.Counter()
    for folder, files in walk_folders(root):
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            path = os.path.abspath(os.path.join(folder, name))
            if path in images or suffix in ANNOTATION_SUFFIXES:
                continue
            if suffix not in FORMATS_BY_SUFFIX:
                found[suffix or "(no extension)"] += 1
    return dict(sorted(found.items()))


def mode_counts(reports):
    """{readable mode name: count} over the decodable files."""
    counts = collections.Counter(MODE_NAMES.get(r.mode, r.mode) for r in reports if r.problem is None)
    return dict(counts.most_common())


def _phash_int(image):
    bits = imagehash.phash(image).hash.flatten()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])
