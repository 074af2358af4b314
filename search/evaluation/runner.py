"""Run the methods a reader asks about over a query set, against the indexed catalog."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from search.errors import FeedError
from search.evaluation.closeups import CloseupFraming, closeup_image, closeups, right_products
from search.evaluation.metrics import PhotoOutcome, RankedInstance
from search.images import read_image_file
from search.models.base import Embedder, MaskPoolingEmbedder, Segmenter
from search.service import SearchOptions, SearchService
from search.types import FloatMask, Instance, SearchResult, Vectors

log = logging.getLogger(__name__)

WHOLE = "whole photo"
BOXES = "box crops"
MASKS = "masked crops"
ANY_CATEGORY = "any category"
NO_CLOSEUP_RULE = "without the close-up rule"


@dataclass(frozen=True)
class EvalQuery:
    image: Path
    expected: dict[str, str]  # sku -> category ("unknown" when the file gives none)


def read_queries(path: Path) -> list[EvalQuery]:
    """Query lines: `image` (relative to the file) and `expected` SKUs (strings or objects)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise FeedError(f"cannot read {path}: {exc.strerror or exc}") from exc
    queries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            expected = {_sku(e): _category(e) for e in row["expected"]}
            queries.append(EvalQuery(path.parent / row["image"], expected))
        except (ValueError, KeyError, TypeError) as exc:
            raise FeedError(f"{path} line {number}: {exc}") from exc
    return queries


def _sku(entry: object) -> str:
    return str(entry["sku"]) if isinstance(entry, dict) else str(entry)


def _category(entry: object) -> str:
    return str(entry.get("category") or "unknown") if isinstance(entry, dict) else "unknown"


class MemoSegmenter:
    """Segments each image once however many methods ask (keyed by the image object)."""

    def __init__(self, inner: Segmenter) -> None:
        self.inner = inner
        self.name = inner.name
        self._key: int | None = None
        self._instances: list[Instance] = []

    def segment(self, image: Image.Image) -> list[Instance]:
        if self._key != id(image):
            self._instances = self.inner.segment(image)
            self._key = id(image)
        return list(self._instances)

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return self.inner.segment_product(image)


class MemoEmbedder:
    """Embeds each distinct crop once however many methods ask (keyed by its pixels); keeps
    the last `size` crops."""

    def __init__(self, inner: Embedder, size: int = 256) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.size = size
        self._vectors: dict[bytes, np.ndarray] = {}

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        return self.embed_weighted(images, None)

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[FloatMask | None] | None
    ) -> Vectors:
        """`embed`, with mask pooling where the inner embedder can (keyed by crop and mask)."""
        weights = list(masks) if masks is not None else [None] * len(images)
        keys = [_pixels_key(im, m) for im, m in zip(images, weights, strict=True)]
        missing = {
            k: (im, m)
            for k, im, m in zip(keys, images, weights, strict=True)
            if k not in self._vectors
        }
        if missing:
            if len(self._vectors) + len(missing) > self.size:
                self._vectors.clear()
            crops = [im for im, _ in missing.values()]
            pooled = [m for _, m in missing.values()]
            if isinstance(self.inner, MaskPoolingEmbedder) and any(m is not None for m in pooled):
                fresh = self.inner.embed_weighted(crops, pooled)
            else:
                fresh = self.inner.embed(crops)
            self._vectors.update(zip(missing, fresh, strict=True))
        if not keys:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)


def _pixels_key(image: Image.Image, mask: FloatMask | None = None) -> bytes:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    if mask is not None:
        digest.update(np.ascontiguousarray(mask, dtype=np.float32).tobytes())
    return digest.digest()


class WholeImageSegmenter:
    """The baseline that finds nothing, so the whole photo is one query."""

    name = "whole-image"

    def segment(self, image: Image.Image) -> list[Instance]:
        return []

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return []


def build_methods(service: SearchService, *, baselines: bool = True) -> dict[str, SearchService]:
    """The configured pipeline first, then the baselines a reader asks about.

    Baselines: the whole photo as one query; the same instances cropped the other way (box
    crops without masks, or masked crops when the pipeline uses boxes); the same pipeline
    without category-aware search. Each photo is segmented once for all of them.
    """
    memo = MemoSegmenter(service.segmenter)
    crop_mode = service.settings.crop_mode
    methods = {f"{service.segmenter.name} ({crop_mode} crops)": variant(service, memo)}
    if baselines:
        other = "mask" if crop_mode == "box" else "box"
        methods[MASKS if other == "mask" else BOXES] = variant(service, memo, crop_mode=other)
        if service.category_policy is not None:
            methods[ANY_CATEGORY] = variant(service, memo, policy=False)
        methods[WHOLE] = variant(service, WholeImageSegmenter(), policy=False)
    return methods


def build_closeup_methods(
    service: SearchService, *, baselines: bool = True
) -> dict[str, SearchService]:
    """What the close-up check runs on each close-up: the configured pipeline first, then
    (baselines) the same without the close-up rule and the whole photo as one query. Each
    close-up is segmented once, and each distinct crop embedded once, for all of them."""
    memo = MemoSegmenter(service.segmenter)
    embedder = MemoEmbedder(service.embedder)
    methods = {"roomlens": variant(service, memo, embedder=embedder)}
    if baselines:
        if service.settings.closeup:
            methods[NO_CLOSEUP_RULE] = variant(service, memo, embedder=embedder, closeup=False)
        methods[WHOLE] = variant(service, WholeImageSegmenter(), embedder=embedder, policy=False)
    return methods


def variant(
    service: SearchService,
    segmenter: Segmenter,
    *,
    policy: bool = True,
    embedder: Embedder | None = None,
    **settings: Any,
) -> SearchService:
    """`service` with another segmenter (and embedder), with or without its category policy,
    and with some model settings changed (`crop_mode`, `closeup`, ...)."""
    return SearchService(
        segmenter=segmenter,
        embedder=embedder or service.embedder,
        live_index=service.live_index,
        session_factory=service.session_factory,
        settings=service.settings.model_copy(update=settings),
        category_policy=service.category_policy if policy else None,
    )


def outcome_of(result: SearchResult, expected: dict[str, str]) -> PhotoOutcome:
    instances = tuple(
        RankedInstance(g.instance.label, tuple((h.sku, h.score) for h in g.products))
        for g in result.groups
    )
    return PhotoOutcome(expected, instances)


CLOSEUP_DEPTH = 20  # products per instance a close-up is searched for (R@10 needs 10)


@dataclass
class CloseupPass:
    """The close-up check: every room cut into close-ups (`search.evaluation.closeups`),
    each searched by every method; collects the outcomes (each close-up's `expected` is its
    right products; close-ups with none are skipped) and how often the first method's
    close-up rule fired, on the rooms and on the close-ups."""

    methods: dict[str, SearchService]
    framing: CloseupFraming = field(default_factory=CloseupFraming)
    outcomes: dict[str, list[PhotoOutcome]] = field(default_factory=dict)
    rooms_fired: int = 0
    crops_fired: int = 0

    def run(self, image: Image.Image, instances: Sequence[Instance], query: EvalQuery) -> None:
        """Search the close-ups of one room, whose instances (the room's) are given."""
        main = next(iter(self.methods.values()))
        self.rooms_fired += main.closeup_subject(image, instances) is not None
        options = SearchOptions(k=CLOSEUP_DEPTH)
        for closeup in closeups(image.size, instances, self.framing):
            expected = right_products(query.expected, closeup.source.label)
            if not expected:
                continue  # nothing in the room it could be right to find: not counted
            crop = closeup_image(image, closeup)
            for n, (name, service) in enumerate(self.methods.items()):
                result = service.search(crop, options)
                self.outcomes.setdefault(name, []).append(outcome_of(result, expected))
                if n == 0:
                    subject = service.closeup_subject(crop, [g.instance for g in result.groups])
                    self.crops_fired += subject is not None


def run_eval(
    queries: Sequence[EvalQuery],
    methods: dict[str, SearchService],
    *,
    depth: int = 50,
    progress: bool = True,
    on_photo: Callable[[int], None] | None = None,
    closeup: CloseupPass | None = None,
) -> dict[str, list[PhotoOutcome]]:
    """Every method on every photo; `depth` products per instance (enough for budget 50).
    With `closeup`, each photo's close-ups too, cut around the first method's instances."""
    outcomes: dict[str, list[PhotoOutcome]] = {name: [] for name in methods}
    options = SearchOptions(k=depth)
    for i, query in enumerate(tqdm(queries, desc="eval", unit="photo", disable=not progress)):
        image = read_image_file(query.image)
        results = {name: service.search(image, options) for name, service in methods.items()}
        for name, result in results.items():
            outcomes[name].append(outcome_of(result, query.expected))
        if closeup is not None:
            first = next(iter(results.values()))
            closeup.run(image, [g.instance for g in first.groups], query)
        if on_photo is not None:
            on_photo(i)
    return outcomes
