"""The indexer's per-image stages, shared by every engine (local threads, Ray Data).

    load    read (file or URL, skipped when the stamp is unchanged), hash, decode
    analyse segment the product, crop it, embed the crops (one batched call)

Each stage is a plain function over `ImageResult`s and records its milliseconds in them; the
engine decides where it runs. The write stage (`indexer.pipeline`) stays with the database.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from PIL import Image

from search.catalog import ImageState, NewInstance
from search.config import ModelSettings, Settings
from search.crops import crop_instance
from search.errors import FetchError, RoomlensError
from search.fetch import Fetcher
from search.images import decode_image
from search.masks import encode_rle
from search.models.base import Embedder, Segmenter
from search.models.registry import build_embedder, build_segmenter
from search.types import Instance

log = logging.getLogger(__name__)

Outcome = Literal["pending", "unchanged", "ok", "no_instance", "failed"]


@dataclass(frozen=True)
class IndexModels:
    """The models a run uses; their names are the identity its vectors are keyed by."""

    segmenter: Segmenter
    embedder: Embedder

    @classmethod
    def build(cls, settings: ModelSettings, *, workers: int = 1) -> IndexModels:
        """The configured models; for several model workers, one intra-op thread each (N
        single-threaded workers keep N cores busier than one N-threaded worker)."""
        if workers > 1:
            settings = settings.model_copy(update={"threads": 1})
        return cls(build_segmenter(settings), build_embedder(settings))


@dataclass(frozen=True)
class StageConfig:
    """What the stages need besides the models (picklable, for remote engines)."""

    crop_margin: float = 0.1
    crop_mode: Literal["box", "mask", "soft"] = "box"
    max_pixels: int = 40_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> StageConfig:
        return cls(
            crop_margin=settings.models.crop_margin,
            crop_mode=settings.models.crop_mode,
            max_pixels=settings.api.max_pixels,
        )


@dataclass(frozen=True)
class ImageJob:
    """One catalog image to bring up to date, with what is stored about it."""

    image_id: int
    sku: str
    ref: str  # resolved path or http(s) URL
    content_hash: str | None
    stamp: str | None
    force: bool  # process even when the content is unchanged

    @classmethod
    def from_state(cls, state: ImageState, *, full: bool = False) -> ImageJob:
        return cls(
            image_id=state.image_id,
            sku=state.sku,
            ref=state.resolved,
            content_hash=state.content_hash,
            stamp=state.source_stamp,
            force=full or state.needs_processing,
        )


@dataclass
class ImageResult:
    """One image travelling through the stages, then what the write stage stores."""

    job: ImageJob
    outcome: Outcome = "pending"
    content_hash: str | None = None
    stamp: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    instances: list[NewInstance] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: Image.Image | None = field(default=None, repr=False)  # between load and analyse

    def fail(self, reason: str) -> None:
        self.outcome, self.error, self.image, self.instances = "failed", reason, None, []

    def add_ms(self, stage: str, ms: float) -> None:
        self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + ms


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def load_stage(job: ImageJob, fetcher: Fetcher, config: StageConfig) -> ImageResult:
    """Read, hash and decode one image; "unchanged" (nothing decoded) when its stamp or content
    hash matches what is stored and `job.force` is not set; "failed" with the reason."""
    result = ImageResult(job)
    start = time.perf_counter()
    try:
        fetched = fetcher.fetch(job.ref, stamp=None if job.force else job.stamp)
    except FetchError as exc:
        result.fail(str(exc))
        return result
    finally:
        result.add_ms("read", _elapsed_ms(start))
    result.stamp = fetched.stamp
    if fetched.data is None:
        result.outcome, result.content_hash = "unchanged", job.content_hash
        return result
    start = time.perf_counter()
    result.content_hash = hashlib.sha256(fetched.data).hexdigest()
    result.add_ms("hash", _elapsed_ms(start))
    if not job.force and result.content_hash == job.content_hash:
        result.outcome = "unchanged"
        return result
    start = time.perf_counter()
    try:
        result.image = decode_image(fetched.data, max_pixels=config.max_pixels)
        result.width, result.height = result.image.size
    except RoomlensError as exc:
        result.fail(str(exc))
    finally:
        result.add_ms("decode", _elapsed_ms(start))
    return result


def analyse_stage(models: IndexModels, config: StageConfig, results: Sequence[ImageResult]) -> None:
    """Segment, crop and embed every loaded image of `results` (in place): each ends "ok" with
    its instances and vectors, "no_instance", or "failed" with the reason."""
    crops: list[Image.Image] = []
    owners: list[tuple[ImageResult, int]] = []
    for result in results:
        if result.image is None or result.outcome == "failed":
            continue
        image_crops = _crops(models, config, result)
        crops += image_crops
        owners += [(result, i) for i in range(len(image_crops))]
        if result.outcome != "failed":
            result.outcome = "ok" if result.instances else "no_instance"
        result.image = None
    if crops:
        _embed(models.embedder, crops, owners)


def _crops(models: IndexModels, config: StageConfig, result: ImageResult) -> list[Image.Image]:
    """The crops of one image's instances (recorded on `result`); none, and the image failed,
    when one of them cannot be cropped."""
    assert result.image is not None
    crops: list[Image.Image] = []
    for inst in _segment(models, result):
        start = time.perf_counter()
        try:
            crops.append(
                crop_instance(result.image, inst, margin=config.crop_margin, mode=config.crop_mode)
            )
        except ValueError as exc:
            result.fail(f"crop failed: {exc}")
            return []
        finally:
            result.add_ms("crop", _elapsed_ms(start))
        result.instances.append(new_instance(inst, models.embedder.name))
    return crops


def _segment(models: IndexModels, result: ImageResult) -> list[Instance]:
    assert result.image is not None
    start = time.perf_counter()
    try:
        return models.segmenter.segment_product(result.image)
    except (RoomlensError, ValueError, RuntimeError) as exc:
        log.warning("segmentation of %s failed: %s", result.job.ref, exc)
        result.fail(f"segmentation failed: {exc}")
        return []
    finally:
        result.add_ms("segment", _elapsed_ms(start))


def _embed(
    embedder: Embedder, crops: list[Image.Image], owners: list[tuple[ImageResult, int]]
) -> None:
    """One batched embedding call; its time is shared among the images by crop count."""
    start = time.perf_counter()
    vectors = embedder.embed(crops)
    share = _elapsed_ms(start) / len(crops)
    for (result, i), vector in zip(owners, vectors, strict=True):
        raw = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        result.instances[i] = replace(result.instances[i], vector=raw)
        result.add_ms("embed", share)


def new_instance(inst: Instance, embedder: str) -> NewInstance:
    """What to store of a segmented instance (its mask as RLE); the vector comes later."""
    return NewInstance(
        label=inst.label,
        score=inst.score,
        box=inst.box,
        mask_rle=encode_rle(inst.mask),
        mask_area=inst.mask_area,
        embedder=embedder,
    )
