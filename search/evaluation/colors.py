"""`roomlens eval-colors`: dominant colours of catalog cut-outs against the feed's colour text.

Products are scored when their `color` text names exactly one basic colour word of
`search.colors.VOCABULARY` (any number of times: "White,white" is white, "Black-brown" is two
words and left out). Synonyms: "gray" is grey, "turquoise" blue, "lilac" purple; other
words ("birch", "multicolour", "stainless steel") are ignored. Each product's first image is cut
out with the catalog's background-difference mask, less the gaps seen through the product (see
`color_mask`), and the first name `dominant_colors` gives is compared with the feed's word.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from search.colors import VOCABULARY, DominantColor, dominant_colors
from search.crops import (
    BACKGROUND_TOLERANCE,
    BORDER_WIDTH,
    background_difference_mask,
    plain_background,
)
from search.errors import FeedError, InvalidInput
from search.images import read_image_file
from search.types import BoolMask

log = logging.getLogger(__name__)

SYNONYMS = {"gray": "grey", "turquoise": "blue", "lilac": "purple"}
HOLE_CONTRAST = 20.0  # L* by which a gap's surround is darker than the background
HOLE_RING = 3  # pixels around an enclosed region that make its surround
TOP_CONFUSIONS = 12
UNREADABLE = "unreadable image"  # the one skip reason that makes the run partial (exit 3)
_REMOTE = re.compile(r"^https?://", re.IGNORECASE)


@dataclass(frozen=True)
class ColorItem:
    sku: str
    expected: str  # one of VOCABULARY
    color_text: str
    image: str  # a path (relative ones resolved against the feed's folder) or an http(s) URL


@dataclass(frozen=True)
class ColorOutcome:
    item: ColorItem
    predicted: list[DominantColor]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.predicted]


@dataclass(frozen=True)
class ColorEvalOptions:
    limit: int | None = None  # only the first N labelled products
    progress: bool = True


@dataclass(frozen=True)
class ColorScores:
    top1: float
    top2: float
    macro_top1: float  # mean over the colours present of their top-1 accuracy
    per_color: dict[str, dict[str, float]]  # name -> {count, top1, top2}
    confusions: list[tuple[str, str, int]]  # (expected, predicted first, count)
    products: int


@dataclass(frozen=True)
class ColorEvalRun:
    scores: ColorScores
    outcomes: list[ColorOutcome]
    skipped: dict[str, int]  # reason -> count
    meta: dict[str, object]
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- the feed


def color_word(text: str) -> str | None:
    """The one basic colour word that `text` names, or None for none or several."""
    words = {SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", text.lower())}
    basic = words.intersection(VOCABULARY)
    return basic.pop() if len(basic) == 1 else None


def read_color_items(feed: Path) -> tuple[list[ColorItem], int]:
    """The feed's products whose colour names one basic colour (first image, resolved against
    the feed's folder), and the number of products in the feed."""
    try:
        lines = feed.read_text().splitlines()
    except OSError as exc:
        raise FeedError(f"cannot read {feed}: {exc.strerror or exc}") from exc
    items, products = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            sku, text, image = str(row["sku"]), str(row.get("color") or ""), row.get("image")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FeedError(f"{feed} line {number}: {exc}") from exc
        products += 1
        word = color_word(text)
        first = image[0] if isinstance(image, list) and image else image
        if word is None or not isinstance(first, str) or not first:
            continue
        ref = first if _REMOTE.match(first) else str(feed.parent / first)
        items.append(ColorItem(sku, word, text, ref))
    return items, products


# --------------------------------------------------------------------------- cut-outs


def _background(rgb: np.ndarray) -> np.ndarray:
    """The median colour of the photo's frame (as `search.crops` samples it)."""
    b = max(1, min(BORDER_WIDTH, rgb.shape[0] // 2, rgb.shape[1] // 2))
    frame = np.concatenate(
        [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3)]
        + [rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)]
    )
    return np.asarray(np.median(frame, axis=0), dtype=np.int32)


def drop_see_through(rgb: np.ndarray, mask: BoolMask) -> BoolMask:
    """`mask` less the background-coloured regions it encloses that are gaps in the product.

    The background-difference mask keeps enclosed background-coloured regions (a white door
    on white stays whole). For colours, such a region is a gap seen through the product
    (between chair slats, inside a frame) when its surround is clearly darker than the
    background (mean L* of the HOLE_RING px around it at least HOLE_CONTRAST lower); ringed by
    light pixels it is a blown-out face of a light product, and stays.
    """
    colour = _background(rgb)
    low = np.clip(colour - BACKGROUND_TOLERANCE, 0, 255).astype(np.uint8)
    high = np.clip(colour + BACKGROUND_TOLERANCE, 0, 255).astype(np.uint8)
    similar = cv2.inRange(rgb, low, high)
    similar[~mask] = 0
    count, labels = cv2.connectedComponents(similar, connectivity=4)
    if count <= 1:
        return mask
    size = 2 * HOLE_RING + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    near = cv2.dilate(labels.astype(np.float32), kernel).astype(np.int32)  # a label nearby
    ring = (near > 0) & (labels == 0) & mask
    lightness = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32) * (100 / 255)
    background_l = float(
        cv2.cvtColor(colour.astype(np.uint8).reshape(1, 1, 3), cv2.COLOR_RGB2LAB)[0, 0, 0]
    ) * (100 / 255)
    owners = near[ring]
    pixels = np.bincount(owners, minlength=count)
    total = np.bincount(owners, weights=lightness[ring], minlength=count)
    surround = np.where(pixels > 0, total / np.maximum(pixels, 1), background_l)
    gap = background_l - surround >= HOLE_CONTRAST
    gap[0] = False
    kept = mask & ~gap[labels]
    return kept if kept.any() else mask


def color_mask(image: Image.Image) -> BoolMask | None:
    """The product's pixels in a catalog photo (possibly none), or None when the photo has no
    plain background."""
    if not plain_background(image):
        return None
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    mask = background_difference_mask(image)
    return drop_see_through(rgb, mask) if mask.any() else mask


# --------------------------------------------------------------------------- scoring


def score(outcomes: list[ColorOutcome]) -> ColorScores:
    """Top-1, top-2, macro top-1, per-colour figures and the top confusions."""
    per: dict[str, list[tuple[bool, bool]]] = {}
    confusions: Counter[tuple[str, str]] = Counter()
    for outcome in outcomes:
        names, expected = outcome.names, outcome.item.expected
        first = names[0] if names else "-"
        per.setdefault(expected, []).append((first == expected, expected in names[:2]))
        if first != expected:
            confusions[(expected, first)] += 1
    n = len(outcomes)
    per_color = {
        name: {
            "count": len(per[name]),
            "top1": sum(a for a, _ in per[name]) / len(per[name]),
            "top2": sum(b for _, b in per[name]) / len(per[name]),
        }
        for name in VOCABULARY
        if name in per
    }
    return ColorScores(
        top1=sum(v["top1"] * v["count"] for v in per_color.values()) / n if n else 0.0,
        top2=sum(v["top2"] * v["count"] for v in per_color.values()) / n if n else 0.0,
        macro_top1=float(np.mean([v["top1"] for v in per_color.values()])) if n else 0.0,
        per_color=per_color,
        confusions=[(e, p, c) for (e, p), c in confusions.most_common(TOP_CONFUSIONS)],
        products=n,
    )


def run_colors(
    items: list[ColorItem], *, progress: bool = True
) -> tuple[list[ColorOutcome], dict[str, int], list[float]]:
    """`dominant_colors` on each item's cut-out: outcomes, skipped reasons, ms per mask."""
    outcomes: list[ColorOutcome] = []
    skipped: Counter[str] = Counter()
    timings: list[float] = []
    for item in tqdm(items, desc="eval-colors", unit="product", disable=not progress):
        if _REMOTE.match(item.image):
            skipped["remote image"] += 1  # the evaluation reads local files only
            continue
        try:
            image = read_image_file(Path(item.image))
        except InvalidInput as exc:
            log.warning("%s: %s", item.sku, exc)
            skipped[UNREADABLE] += 1
            continue
        mask = color_mask(image)
        if mask is None:
            skipped["no plain background"] += 1
            continue
        if not mask.any():
            skipped["empty cut-out"] += 1
            continue
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        started = time.perf_counter()
        colours = dominant_colors(rgb, mask)
        timings.append(1000 * (time.perf_counter() - started))
        outcomes.append(ColorOutcome(item, colours))
    return outcomes, dict(skipped), timings


def eval_colors_command(feed: Path, out_dir: Path, *, options: ColorEvalOptions) -> ColorEvalRun:
    """Score `dominant_colors` on the feed's single-colour products; write the reports."""
    started = time.perf_counter()
    items, products = read_color_items(feed)
    if not items:
        raise FeedError(f"{feed}: no product's colour names exactly one basic colour")
    items = items[: options.limit]
    outcomes, skipped, timings = run_colors(items, progress=options.progress)
    meta: dict[str, object] = {
        "feed": str(feed),
        "products": products,
        "labelled": len(items),
        "scored": len(outcomes),
        "skipped": sum(skipped.values()),
        "ms_per_mask": round(float(np.mean(timings)), 2) if timings else None,
        "ms_per_mask_p95": round(float(np.percentile(timings, 95)), 2) if timings else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    run = ColorEvalRun(score(outcomes), outcomes, skipped, meta)
    run.files.extend(write_color_reports(run, out_dir))
    return run


# --------------------------------------------------------------------------- reports


def color_table(scores: ColorScores) -> str:
    """The figures as a Markdown table: overall, then one row per colour."""
    lines = [
        f"top-1 {scores.top1:.3f}, top-2 {scores.top2:.3f}, macro top-1 "
        f"{scores.macro_top1:.3f} on {scores.products} products",
        "",
        "| colour | products | top-1 | top-2 |",
        "|---|---|---|---|",
    ]
    for name, v in scores.per_color.items():
        lines.append(f"| {name} | {v['count']:.0f} | {v['top1']:.3f} | {v['top2']:.3f} |")
    if scores.confusions:
        lines.append(
            "\ntop confusions (expected -> named first): "
            + ", ".join(f"{e} -> {p} ({c})" for e, p, c in scores.confusions)
        )
    return "\n".join(lines)


def _payload(run: ColorEvalRun) -> dict[str, Any]:
    s = run.scores
    return {
        "meta": run.meta,
        "skipped": run.skipped,
        "top1": s.top1,
        "top2": s.top2,
        "macro_top1": s.macro_top1,
        "per_color": s.per_color,
        "confusions": [{"expected": e, "predicted": p, "count": c} for e, p, c in s.confusions],
        "products": [
            {
                "sku": o.item.sku,
                "color": o.item.color_text,
                "expected": o.item.expected,
                "predicted": [c.as_dict() for c in o.predicted],
            }
            for o in run.outcomes
        ],
    }


def write_color_reports(run: ColorEvalRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "colors.json", out_dir / "colors.md"]
    files[0].write_text(json.dumps(_payload(run), indent=2))
    meta = "\n".join(f"- {k}: {v}" for k, v in {**run.meta, **run.skipped}.items())
    files[1].write_text(f"# Dominant colours\n\n{color_table(run.scores)}\n\n{meta}\n")
    return files
