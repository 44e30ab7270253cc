"""Where pretrained weights come from, decided in one place: a weights folder, then Keras, then none.

    model.weights: auto (the default) or imagenet
      1. a weights folder (--weights-dir, or IMGPIPE_WEIGHTS_DIR) holding <backbone>_imagenet_notop.weights.h5
         (the names of ../shared/weights, so an air-gapped site copies one folder)
      2. Keras' own ImageNet weights (its cache, else a download with a time limit; IMGPIPE_OFFLINE=1 skips the
         download, not Keras' cache), kept as a weights file in imgpipe's cache so the next run finds it at step
         1's speed
      3. none: `auto` trains from scratch with one warning saying what was tried; `imagenet` is an error
    model.weights: none forces from scratch; a path loads that file.

Example:
    >>> resolved = resolve_weights("mobilenet_v2", "auto", weights_dir="../shared/weights")
    >>> resolved.source, resolved.path
    ('folder', '../shared/weights/mobilenet_v2_imagenet_notop.weights.h5')
"""

import contextlib
import dataclasses
import logging
import os
import pathlib
import socket
import threading
import typing

from imgpipe.data.demo import cache_root
from imgpipe.errors import RecipeError
from imgpipe.models.backbones import BACKBONES, weights_file_name

log = logging.getLogger("imgpipe")

WEIGHTS_DIR_VARIABLE = "IMGPIPE_WEIGHTS_DIR"
OFFLINE_VARIABLE = "IMGPIPE_OFFLINE"
# Keras' get_file has no time limit; an offline machine whose packets are dropped would wait for ever.
DOWNLOAD_TIMEOUT_SECONDS = 15


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """What a run's backbone starts from.

    Attributes:
        backbone: the backbone's name, or None for a model without one.
        source: 'folder' (the weights folder), 'keras' (Keras' ImageNet weights), 'file' (a path given
            as model.weights) or 'none' (from scratch).
        path: the weights file loaded, or None.
        tried: what was looked at, in order, when nothing was found.
    """

    backbone: typing.Optional[str]
    source: str
    path: typing.Optional[str] = None
    tried: tuple = ()

    def describe(self):
        """One line for the log and the run's summary."""
        if self.path:
            return f"weights: {self.backbone} from {self.path} ({self.source})"
        return f"weights: none, from scratch ({'; '.join(self.tried) or 'model.weights: none'})"

    def to_json(self):
        return dataclasses.asdict(self)


def offline():
    """True when `IMGPIPE_OFFLINE` is set to anything but 0/false/no (the tests and CI set it)."""
    return os.environ.get(OFFLINE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def resolve_weights(backbone, requested="auto", weights_dir=None, download=True):
    """The weights a backbone starts from, for `model.weights` = auto, imagenet, none or a file.

    Args:
        backbone: a name in `imgpipe.models.backbones.BACKBONES`, or None (a model without a backbone).
        requested: the recipe's `model.weights`.
        weights_dir: the weights folder (`model.weights_dir`); `IMGPIPE_WEIGHTS_DIR` when None.
        download: False looks in the folder, imgpipe's cache and Keras' cache, never the network (the
            style-transfer demo), as `IMGPIPE_OFFLINE=1` does.

    Raises:
        RecipeError: an explicit `imagenet` that nothing satisfies, a missing file, or `imagenet` for a
            model without a pretrained backbone.
    """
    if requested in (None, "none"):
        return ResolvedWeights(backbone, "none", tried=("model.weights: none",))
    if requested not in ("auto", "imagenet"):
        if not pathlib.Path(requested).is_file():
            raise RecipeError(f"model.weights: {requested}: no such weights file")
        return ResolvedWeights(backbone, "file", str(requested))
    if backbone is None:
        if requested == "imagenet":
            raise RecipeError("model.weights: imagenet: this model has no pretrained backbone; choose one with "
                              "--model (`imgpipe models` marks them) or use --weights none")
        return ResolvedWeights(None, "none", tried=("the model has no pretrained backbone",))
    tried = []
    found = _in_folder(backbone, weights_dir, tried) or _from_keras(backbone, tried, download)
    if found:
        return found
    if requested == "imagenet":
        raise RecipeError(f"model.weights: imagenet: no ImageNet weights for {backbone} ({'; '.join(tried)}); "
                          f"put {weights_file_name(backbone)} in a folder given by --weights-dir, or use "
                          "--weights none")
    resolved = ResolvedWeights(backbone, "none", tried=tuple(tried))
    log.warning("no ImageNet weights for %s (%s); training from scratch. To start from them, put %s in a folder "
                "and pass --weights-dir (or set %s)", backbone, "; ".join(tried), weights_file_name(backbone),
                WEIGHTS_DIR_VARIABLE)
    return resolved


def _in_folder(backbone, weights_dir, tried):
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_VARIABLE)
    if not folder:
        tried.append(f"no weights folder (--weights-dir or {WEIGHTS_DIR_VARIABLE})")
        return None
    path = pathlib.Path(folder) / weights_file_name(backbone)
    if path.is_file():
        return ResolvedWeights(backbone, "folder", str(path))
    tried.append(f"{path}: not found")
    return None


def keras_weights_cache():
    """Where Keras' ImageNet weights are kept as imgpipe weights files once fetched."""
    return pathlib.Path(cache_root()) / "weights"


def keras_home():
    """Keras' own cache, as Keras worked it out at import (`$KERAS_HOME`, by default ~/.keras, or /tmp/.keras
    where that is not writable); its applications keep their weights in models/."""
    from keras.src.backend import config

    return pathlib.Path(config.keras_home()).expanduser()


def _from_keras(backbone, tried, download=True):
    cached = keras_weights_cache() / weights_file_name(backbone)
    if cached.is_file():
        return ResolvedWeights(backbone, "keras", str(cached))
    application = BACKBONES[backbone][0]
    cache_only = offline() or not download
    if cache_only and not any((keras_home() / "models").glob("*.h5")):  # spares building the network to ask
        tried.append(f"{_no_download_reason()}; {keras_home() / 'models'}: no Keras weights files")
        return None
    opened = []  # the cached file Keras was given, to name it should it not load
    try:
        # Both ways change process-wide settings (Keras' fetching function, the socket time limit): one at a time.
        with _FETCHING, _keras_cache_only(opened) if cache_only else _socket_timeout(DOWNLOAD_TIMEOUT_SECONDS):
            network = application(include_top=False, weights="imagenet")
    except _NotInKerasCache as missing:
        tried.append(f"{_no_download_reason()}; {missing}")
        return None
    except Exception as error:  # noqa: BLE001  (no network, a proxy, a refused or broken download or file)
        what = (f"Keras' cached {opened[-1]} did not load" if opened else
                "Keras' cached weights did not load" if cache_only else "Keras download failed")
        tried.append(f"{what} ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]})")
        return None
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_name(f".{os.getpid()}.{cached.name}")
    network.save_weights(staging)
    os.replace(staging, cached)  # whole or not at all, should two runs fetch at once
    return ResolvedWeights(backbone, "keras", str(cached))


def _no_download_reason():
    return f"Keras download skipped ({OFFLINE_VARIABLE}=1)" if offline() else "no download asked for"


class _NotInKerasCache(Exception):
    pass


_FETCHING = threading.Lock()


@contextlib.contextmanager
def _keras_cache_only(opened):
    """Keras' applications find their weights file in Keras' cache, or fail at once: never the network.

    Which file an application asks for (e.g. MobileNetV2's `..._1.0_224_no_top.h5`) is Keras' to decide, so
    its one fetching function (`keras.src.utils.file_utils.get_file`, which every application calls) is
    swapped for the time of the call rather than the names copied here. A file whose hash Keras knows
    is checked, as Keras checks it before using a cached file. Each file handed out is added to `opened`.
    """
    from keras.src.utils import file_utils

    def cached_file(fname=None, origin=None, cache_subdir="datasets", cache_dir=None, file_hash=None,
                    hash_algorithm="auto", **kwargs):
        home = pathlib.Path(cache_dir).expanduser() if cache_dir else keras_home()
        path = home / cache_subdir / (fname or os.path.basename(origin))
        if not path.is_file():
            raise _NotInKerasCache(f"{path}: not found")
        if file_hash and not file_utils.validate_file(str(path), file_hash, algorithm=hash_algorithm):
            raise _NotInKerasCache(f"{path}: not the file Keras published (its hash differs); delete it")
        opened.append(path)
        return str(path)

    fetch = file_utils.get_file
    file_utils.get_file = cached_file
    try:
        yield
    finally:
        file_utils.get_file = fetch


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
