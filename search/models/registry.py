"""The one registry of model backends, keyed by name; the factory and `roomlens models` read it.

Each backend is a spec: how to build it (every backend can be built without weights), the
status rows `roomlens models list|fetch` print for it, and, for embedders, the identity the
index sidecar records and the vector width, both known without loading any weights (so the
doctor, publish-only and Ray runs never build an embedder to learn its name). Backends are
imported lazily, inside the spec's functions: listing the offline models never imports
open_clip. Adding a backend: its own module, and one line in `EMBEDDERS` or `SEGMENTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from search.coco import classes_for
from search.config import ModelSettings
from search.errors import InvalidInput
from search.models import status
from search.models.base import BoxMasker, Detector, Embedder, Segmenter
from search.models.device import resolve_device
from search.models.ensemble import SEPARATOR, ConcatEmbedder
from search.models.status import ModelStatus
from search.models.weights import socket_timeout

F = TypeVar("F")
StatusFn = Callable[[str, ModelSettings, bool, "float | None"], list[ModelStatus]]


@dataclass(frozen=True)
class EmbedderIdentity:
    """What an index records of its embedder: the name and the vector width."""

    name: str
    dim: int


@dataclass(frozen=True)
class EmbedderSpec:
    build: Callable[[str, ModelSettings, bool], Embedder]  # (name, settings, pretrained)
    identity: Callable[[str, ModelSettings, bool], EmbedderIdentity]  # no weights loaded
    status: StatusFn


@dataclass(frozen=True)
class SegmenterSpec:
    build: Callable[[str, ModelSettings, bool, BoxMasker | None], Segmenter]
    status: StatusFn


# --- EfficientNet-Lite (offline, onnxruntime on the CPU) --------------------------------------


def _lite_variant(name: str) -> tuple[int, str]:
    from search.models.efficientnet import parse_lite_name

    parsed = parse_lite_name(name)
    if parsed is None:
        raise InvalidInput(f"unknown EfficientNet-Lite variant {name!r}")
    return parsed


def _int8(settings: ModelSettings, variant: int, pretrained: bool) -> dict[str, Any]:
    """The int8 copy the settings ask for (the embedder's `int8`, `int8_card` arguments),
    where one exists of these weights."""
    from search.models.own_files import lite_int8_file

    found = lite_int8_file(settings, variant) if pretrained else None
    if settings.precision != "int8" or found is None:
        return {}
    return {"int8": found.path, "int8_card": not found.own}


def _efficientnet(name: str, settings: ModelSettings, pretrained: bool) -> Embedder:
    from search.models.efficientnet import EfficientNetLiteEmbedder

    variant, pooling = _lite_variant(name)
    return EfficientNetLiteEmbedder(
        variant,
        pooling=pooling,
        pretrained=pretrained,
        threads=settings.threads,
        device=resolve_device(settings.device),
        runtime=settings.runtime,
        **_int8(settings, variant, pretrained),
    )


def _efficientnet_identity(
    name: str, settings: ModelSettings, pretrained: bool
) -> EmbedderIdentity:
    from search.models.efficientnet import FEATURE_DIM, lite_name

    variant, pooling = _lite_variant(name)
    suffix = "" if pretrained else "-random"
    return EmbedderIdentity(lite_name(variant, pooling) + suffix, FEATURE_DIM)


EFFICIENTNET = EmbedderSpec(_efficientnet, _efficientnet_identity, status.efficientnet_status)


# --- open_clip ----------------------------------------------------------------------------------


def _open_clip(name: str, settings: ModelSettings, pretrained: bool) -> Embedder:
    from search.models.clip import OpenClipEmbedder

    return OpenClipEmbedder(
        settings.clip_model,
        settings.clip_pretrained if pretrained else None,
        device=resolve_device(settings.device),
        threads=settings.threads,
    )


def _open_clip_identity(name: str, settings: ModelSettings, pretrained: bool) -> EmbedderIdentity:
    from search.models.clip import config_dim, resolve_source

    source = resolve_source(settings.clip_model, settings.clip_pretrained if pretrained else None)
    return EmbedderIdentity(source.identity, config_dim(source))


OPEN_CLIP = EmbedderSpec(_open_clip, _open_clip_identity, status.open_clip_status)


# --- segmenters ---------------------------------------------------------------------------------


def _lite(
    name: str, settings: ModelSettings, pretrained: bool, masker: BoxMasker | None
) -> Segmenter:
    from search.models.lite import LiteSegmenter
    from search.models.nanodet import NANODET_FILE, NanoDetDetector
    from search.models.u2net import U2NetMasker

    detector = NanoDetDetector(
        settings.models_dir / NANODET_FILE,
        score_threshold=settings.detector_score,
        classes=classes_for(settings.detector_classes),
        threads=settings.threads,
    )
    return LiteSegmenter(
        detector,
        U2NetMasker(threads=settings.threads),
        max_instances=settings.max_instances,
        mask_mode=settings.mask_mode,
        proposer=_lamp_proposer(settings) if settings.lamp_proposals else None,
        box_masker=masker,
    )


def _lamp_proposer(settings: ModelSettings) -> Detector:
    """Lamp boxes from EfficientNet-Lite0's ImageNet class maps (COCO has no lamp)."""
    from search.models.cam import ClassMapProposer
    from search.models.efficientnet import EfficientNetLiteEmbedder

    model = EfficientNetLiteEmbedder(
        0,
        threads=settings.threads,
        device="cpu",
        runtime=settings.runtime,
        **_int8(settings, 0, pretrained=True),
    )
    return ClassMapProposer(
        model, threshold=settings.lamp_threshold, long_side=settings.lamp_long_side
    )


def _torchvision(
    name: str, settings: ModelSettings, pretrained: bool, masker: BoxMasker | None
) -> Segmenter:
    from search.models.maskrcnn import TorchvisionMaskRCNN

    return TorchvisionMaskRCNN(
        settings.maskrcnn_weights if pretrained else None,
        score_threshold=settings.detector_score,
        classes=classes_for(settings.detector_classes),
        max_instances=settings.max_instances,
        device=resolve_device(settings.device),
        threads=settings.threads,
    )


def _detectron2(
    name: str, settings: ModelSettings, pretrained: bool, masker: BoxMasker | None
) -> Segmenter:
    from search.models.detectron2_backend import Detectron2Segmenter
    from search.models.device import set_torch_threads

    set_torch_threads(settings.threads)
    return Detectron2Segmenter(
        settings.detectron2_config,
        settings.detectron2_weights if pretrained else None,
        score_threshold=settings.detector_score,
        classes=classes_for(settings.detector_classes),
        max_instances=settings.max_instances,
        device=resolve_device(settings.device),
    )


# --- the registry -------------------------------------------------------------------------------

EMBEDDERS: dict[str, EmbedderSpec] = {
    **{f"efficientnet-lite{v}{p}": EFFICIENTNET for v in range(5) for p in ("", "-gem")},
    "open-clip": OPEN_CLIP,
}
SEGMENTERS: dict[str, SegmenterSpec] = {
    "lite": SegmenterSpec(_lite, status.lite_status),
    "torchvision": SegmenterSpec(_torchvision, status.maskrcnn_status),
    "detectron2": SegmenterSpec(_detectron2, status.detectron2_status),
}


def available_embedders() -> list[str]:
    """The embedder names `ModelSettings.embedder` accepts."""
    return sorted(EMBEDDERS)


def available_segmenters() -> list[str]:
    """The segmenter names `ModelSettings.segmenter` accepts."""
    return sorted(SEGMENTERS)


def _embedder_names(settings: ModelSettings) -> list[tuple[str, EmbedderSpec]]:
    """(name, spec) of each part of the configured embedder ("a+b" is an ensemble)."""
    names = settings.embedder.split(SEPARATOR)
    return [(name, _lookup(EMBEDDERS, name, "embedder")) for name in names]


def build_embedder(settings: ModelSettings, *, pretrained: bool = True) -> Embedder:
    """The embedder named by `settings.embedder`; `pretrained=False` gives random weights.

    Names joined by "+" ("efficientnet-lite0-gem+efficientnet-lite2-gem") build each part and
    concatenate their vectors (`search.models.ensemble`).
    """
    parts = [spec.build(name, settings, pretrained) for name, spec in _embedder_names(settings)]
    return parts[0] if len(parts) == 1 else ConcatEmbedder(parts)


def embedder_identity(settings: ModelSettings, *, pretrained: bool = True) -> EmbedderIdentity:
    """The configured embedder's name and dimension, as `build_embedder` would give them,
    without loading any weights."""
    parts = [spec.identity(name, settings, pretrained) for name, spec in _embedder_names(settings)]
    if len(parts) == 1:
        return parts[0]
    return EmbedderIdentity(SEPARATOR.join(p.name for p in parts), sum(p.dim for p in parts))


def build_segmenter(
    settings: ModelSettings, *, pretrained: bool = True, masker: BoxMasker | None = None
) -> Segmenter:
    """The segmenter named by `settings.segmenter`; `pretrained=False` gives random weights.

    "lite" has no random variant of its detector: its ONNX models ship with the repository and
    a wheel. It masks its boxes with `masker`, else with the configured one (`build_masker`).
    """
    spec = _lookup(SEGMENTERS, settings.segmenter, "segmenter")
    if masker is None and settings.segmenter == "lite":
        masker = build_masker(settings, pretrained=pretrained)
    return spec.build(settings.segmenter, settings, pretrained, masker)


def build_masker(settings: ModelSettings, *, pretrained: bool = True) -> BoxMasker | None:
    """The box-prompted mask model `settings.masker` names (None for "u2netp", which masks
    inside the lite segmenter); `pretrained=False` gives a seeded random head."""
    if settings.masker == "u2netp":
        return None
    from search.models.boxmask import INT8_FILE, INT8_SHA256, LiteBoxMasker
    from search.models.own_files import int8_file, mask_head_file

    head = mask_head_file(settings)
    runtime = "torch" if settings.runtime == "torch" else "onnx"  # the masker runs on the CPU
    int8 = int8_file(settings, INT8_FILE, INT8_SHA256)
    quantized = pretrained and runtime == "onnx" and settings.precision == "int8"
    return LiteBoxMasker(
        head.path if pretrained else None,
        threads=settings.threads,
        runtime=runtime,
        expected_sha256=head.card_sha256,
        int8=int8.path if quantized else None,
        int8_card=not int8.own,
    )


def _status_rows(
    settings: ModelSettings, check_load: bool, fetch_s: float | None
) -> list[ModelStatus]:
    kind = settings.segmenter
    segmenter = SEGMENTERS.get(kind)
    rows = (
        segmenter.status(kind, settings, check_load, fetch_s)
        if segmenter is not None
        else [status.unavailable("segmenter", kind, None, f"unknown segmenter {kind!r}")]
    )
    rows += status.boxmask_status(settings, check_load)
    for name in settings.embedder.split(SEPARATOR):
        embedder = EMBEDDERS.get(name)
        if embedder is None:
            rows.append(status.unavailable("embedder", name, None, f"unknown embedder {name!r}"))
        else:
            rows += embedder.status(name, settings, check_load, fetch_s)
    return rows


def list_models(settings: ModelSettings, *, check_load: bool = True) -> list[ModelStatus]:
    """Every weights file the configured segmenter and embedder use: path, sha256, whether it
    loads.

    Never downloads: a pretrained tag or torchvision download not in the local cache is reported
    with `loads=False` and what to run or place.
    """
    return _status_rows(settings, check_load, None)


def fetch_models(settings: ModelSettings, *, timeout_s: float = 10) -> list[ModelStatus]:
    """Download what the configured models need (open_clip tags, torchvision COCO weights).

    Downloads go through open_clip (`pretrained=tag`) and torchvision
    (`weights.get_state_dict`), after probing the host for `timeout_s` seconds; an unreachable
    host gives, within seconds, a row with `loads=False` naming the file to place and where.
    Files that ship with the repository or a wheel are only checked. Every row is load-checked.
    The socket timeout is process-wide while this runs: call it from the CLI, not the server.
    """
    with socket_timeout(timeout_s):
        return _status_rows(settings, True, timeout_s)


def _lookup(table: dict[str, F], name: str, family: str) -> F:
    try:
        return table[name]
    except KeyError:
        raise InvalidInput(
            f"unknown {family} {name!r}; choose one of: {', '.join(sorted(table))}"
        ) from None
