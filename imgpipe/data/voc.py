"""Pascal VOC detection annotations: `images/` + `annotations/*.xml` (or JPEGImages/ + Annotations/).

Each XML file is matched to its image by file stem, never by the `<path>` or
`<filename>` inside it (those point at the annotator's machine). XML is parsed
with defusedxml, so entity expansion and external entities are refused.

Example:
    >>> annotations, class_names = read_voc("../shared/data/raccoon")
"""

import pathlib

import defusedxml.ElementTree as ElementTree
from defusedxml import DefusedXmlException

from imgpipe.data.boxes import Annotation
from imgpipe.data.folders import list_images
from imgpipe.errors import DataError

IMAGE_DIRS = ("images", "JPEGImages")
ANNOTATION_DIRS = ("annotations", "Annotations")


def voc_folders(root):
    """(images dir, annotations dir) of a VOC layout under `root`, or None."""
    root = pathlib.Path(root)
    images = next((root / name for name in IMAGE_DIRS if (root / name).is_dir()), None)
    annotations = next((root / name for name in ANNOTATION_DIRS if (root / name).is_dir()), None)
    if images and annotations and any(annotations.glob("*.xml")):
        return images, annotations
    return None


def parse_voc_xml(path):
    """[(class name, [x_min, y_min, x_max, y_max])] of one VOC XML file."""
    try:
        tree = ElementTree.parse(str(path))
    except (ElementTree.ParseError, DefusedXmlException, OSError) as error:
        raise DataError(f"{path}: not valid VOC XML ({str(error).splitlines()[0]})") from None
    objects = []
    for number, element in enumerate(tree.getroot().iter("object"), start=1):
        name = (element.findtext("name") or "").strip()
        box = element.find("bndbox")
        if not name or box is None:
            raise DataError(f"{path}: object {number} has no <name> or <bndbox>")
        try:
            coordinates = [float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DataError(f"{path}: object {number} ({name}) has a missing or non-numeric coordinate") from None
        objects.append((name, coordinates))
    return objects


def read_voc(root, class_names=None):
    """Annotations of every image (images without XML are negatives) and the sorted class names."""
    folders = voc_folders(root)
    if folders is None:
        raise DataError(f"{root}: expected images/ + annotations/*.xml (Pascal VOC)")
    image_dir, annotation_dir = folders
    xml_by_stem = {path.stem: path for path in sorted(annotation_dir.glob("*.xml"))}
    images = list_images(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no images")
    parsed = {pathlib.Path(image).stem: parse_voc_xml(xml_by_stem[pathlib.Path(image).stem])
              for image in images if pathlib.Path(image).stem in xml_by_stem}
    names = class_names or sorted({name for objects in parsed.values() for name, _ in objects})
    annotations = []
    for image in images:
        objects = parsed.get(pathlib.Path(image).stem, [])
        unknown = [name for name, _ in objects if name not in names]
        if unknown:
            raise DataError(f"{xml_by_stem[pathlib.Path(image).stem]}: class {unknown[0]!r} is not one of "
                            f"{', '.join(names)}")
        annotations.append(Annotation(image, [box for _, box in objects], [names.index(n) for n, _ in objects]))
    return annotations, list(names)
