"""Run the methods a reader asks about over a query set, against the indexed catalog."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from search.errors import FeedError
from search.evaluation.metrics import PhotoOutcome, RankedInstance
from search.images import read_image_file
from search.models.base import Segmenter
from search.service import SearchOptions, SearchService
from search.types import Instance, SearchResult

log = logging.getLogger(__name__)

WHOLE = "whole photo"
BOXES = "box crops"
MASKS = "masked crops"
ANY_CATEGORY = "any category"


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

    def variant(segmenter: Segmenter, mode: str = crop_mode, policy: bool = True) -> SearchService:
        settings = service.settings.model_copy(update={"crop_mode": mode})
        return SearchService(
            segmenter=segmenter,
            embedder=service.embedder,
            live_index=service.live_index,
            session_factory=service.session_factory,
            settings=settings,
            category_policy=service.category_policy if policy else None,
        )

    methods = {f"{service.segmenter.name} ({crop_mode} crops)": variant(memo)}
    if baselines:
        other = "mask" if crop_mode == "box" else "box"
        methods[MASKS if other == "mask" else BOXES] = variant(memo, other)
        if service.category_policy is not None:
            methods[ANY_CATEGORY] = variant(memo, policy=False)
        methods[WHOLE] = variant(WholeImageSegmenter(), policy=False)
    return methods


def outcome_of(result: SearchResult, expected: dict[str, str]) -> PhotoOutcome:
    instances = tuple(
        RankedInstance(g.instance.label, tuple((h.sku, h.score) for h in g.products))
        for g in result.groups
    )
    return PhotoOutcome(expected, instances)


def run_eval(
    queries: Sequence[EvalQuery],
    methods: dict[str, SearchService],
    *,
    depth: int = 50,
    progress: bool = True,
    on_photo: Callable[[int], None] | None = None,
) -> dict[str, list[PhotoOutcome]]:
    """Every method on every photo; `depth` products per instance (enough for budget 50)."""
    outcomes: dict[str, list[PhotoOutcome]] = {name: [] for name in methods}
    options = SearchOptions(k=depth)
    for i, query in enumerate(tqdm(queries, desc="eval", unit="photo", disable=not progress)):
        image = read_image_file(query.image)
        for name, service in methods.items():
            outcomes[name].append(outcome_of(service.search(image, options), query.expected))
        if on_photo is not None:
            on_photo(i)
    return outcomes
