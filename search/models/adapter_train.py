"""Training the query-side adapter (`search.models.adapter`) on catalog products composited
into room photos (issue #16).

Each product's first catalog image is cut out (its background difference), pasted into a
background room with the harmonised compositor (`search.models.boxmask_composite.composite`:
scale jitter, colour transfer toward the room, blur, soft edge, contact shadow), sometimes
partly covered by another product (`search.models.boxmask_augment.occlude`), cropped the way
the service crops a detection (`search.crops.crop_instance`, box mode, 10% margin) from a
jittered box (detections are off by 5-10% an edge), then JPEG, brightness and white-balance
jittered and embedded with the real embedder. The adapter W (identity at the start) is
trained with InfoNCE against every clean catalog vector, its labels the product pasted, and a
penalty on ||W - I||² that keeps it near the embedder it adapts.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from search.models.adapter import LinearAdapter
from search.models.base import Embedder
from search.models.boxmask_augment import Cutout, occlude
from search.models.boxmask_composite import FURNITURE, composite, product_cutout
from search.types import Box, Instance

logger = logging.getLogger(__name__)


def split_rooms(images: Sequence[str], held_out: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(background rooms, held-out rooms): the photos ordered by a seeded hash of their path,
    the first `held_out` kept out of training."""
    order = sorted(images, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    return order[held_out:], order[:held_out]


def read_photo_list(path: Path) -> list[Path]:
    """Photos of a directory (jpg/png/webp), or of a JSONL whose rows have an `image` path
    relative to the file."""
    if path.is_dir():
        exts = {".jpg", ".jpeg", ".png", ".webp"}
        return sorted(p for p in path.iterdir() if p.suffix.lower() in exts)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [path.parent / str(r["image"]) for r in rows]


@dataclass(frozen=True)
class LabelledCutout:
    sku: str
    piece: Cutout


def labelled_cutouts(
    feed: Path, categories: Sequence[str] | None = FURNITURE
) -> list[LabelledCutout]:
    """Every product of the feed in `categories` (None: all) whose first image is on a plain
    background, cut out of it by background difference, with its sku."""

    out: list[LabelledCutout] = []
    for line in feed.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if not row.get("image") or (
            categories is not None and row.get("category") not in categories
        ):
            continue
        piece = product_cutout(feed.parent / str(row["image"]))
        if piece is None:
            continue
        out.append(LabelledCutout(str(row["sku"]), piece))
    return out


@dataclass(frozen=True)
class CompositeOptions:
    count: int = 3000
    seed: int = 0
    box_jitter: tuple[float, float] = (0.05, 0.10)  # max shift of each edge, share of the box side
    occlude: float = 0.3  # share of composites with another product pasted over
    max_side: int = 1024  # backgrounds scaled down to this longer side (the dev rooms are 1024)


def _jitter_box(box: Box, rng: np.random.Generator, limits: tuple[float, float]) -> Box:
    j = rng.uniform(*limits)
    w, h = box.width, box.height
    d = rng.uniform(-j, j, size=4)
    return Box(box.x0 + d[0] * w, box.y0 + d[1] * h, box.x1 + d[2] * w, box.y1 + d[3] * h)


def _photometric(crop: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness x0.75-1.25, white balance x0.9-1.1 a channel, JPEG quality 35-90."""
    pixels = np.asarray(crop, dtype=np.float32)
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, size=3)
    out = Image.fromarray(np.clip(pixels * gain, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=int(rng.integers(35, 91)))
    buffer.seek(0)
    with Image.open(buffer) as im:
        return im.convert("RGB")


def _load_background(path: Path, max_side: int) -> npt.NDArray[np.uint8]:
    with Image.open(path) as im:
        image = im.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    return np.asarray(image)


def composite_crops(
    cutouts: Sequence[LabelledCutout], backgrounds: Sequence[Path], options: CompositeOptions
) -> Iterator[tuple[int, Image.Image]]:
    """`options.count` (cutout index, crop) pairs: every cutout in turn (a seeded order,
    repeated), each pasted into a random background and cropped as a detection would be."""
    from search.crops import crop_instance

    if not cutouts or not backgrounds:
        raise ValueError("need at least one cutout and one background")
    rng = np.random.default_rng(options.seed)
    rooms = [_load_background(p, options.max_side) for p in backgrounds]
    made = 0
    order: list[int] = []
    while made < options.count:
        if not order:
            order = list(rng.permutation(len(cutouts)))
        i = int(order.pop())
        for _ in range(5):  # a piece that does not fit one room may fit another
            room = rooms[int(rng.integers(len(rooms)))]
            pasted = composite(room, cutouts[i].piece, rng)
            if pasted is not None:
                break
        if pasted is None:
            continue
        photo, mask, box = pasted
        if rng.random() < options.occlude and len(cutouts) > 1:
            j = int(rng.integers(len(cutouts) - 1))
            other = cutouts[j + (j >= i)].piece
            photo, mask = occlude(photo, mask, box, [other], rng)
        image = Image.fromarray(photo)
        jittered = _jitter_box(box, rng, options.box_jitter).clip(image.width, image.height)
        if jittered.width < 8 or jittered.height < 8:
            jittered = box
        crop = crop_instance(
            image, Instance(jittered, "product", 1.0, mask), margin=0.1, mode="box"
        )
        yield i, _photometric(crop, rng)
        made += 1


def embed_composites(
    embedder: Embedder,
    cutouts: Sequence[LabelledCutout],
    backgrounds: Sequence[Path],
    options: CompositeOptions,
    *,
    batch: int = 32,
    progress: bool = True,
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """(sku per composite, (n, dim) vectors) of `composite_crops`, embedded in batches."""
    from tqdm import tqdm

    skus: list[str] = []
    chunks: list[npt.NDArray[np.float32]] = []
    pending: list[Image.Image] = []
    bar = tqdm(total=options.count, desc="composites", unit="crop", disable=not progress)
    for i, crop in composite_crops(cutouts, backgrounds, options):
        skus.append(cutouts[i].sku)
        pending.append(crop)
        if len(pending) == batch:
            chunks.append(np.asarray(embedder.embed(pending), dtype=np.float32))
            bar.update(len(pending))
            pending = []
    if pending:
        chunks.append(np.asarray(embedder.embed(pending), dtype=np.float32))
        bar.update(len(pending))
    bar.close()
    return skus, np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)


@dataclass(frozen=True)
class AdapterOptions:
    epochs: int = 30
    lr: float = 1e-4
    batch: int = 256
    temperature: float = 0.05
    decay: float = 0.1  # weight of ||W - I||² (Frobenius) in the loss
    rank: int | None = None  # None: a full W; r: W = I + U Vᵀ of rank r
    val_share: float = 0.1  # composites held out of training for the report
    seed: int = 0
    progress: bool = True


def _top1(q: Any, catalog: Any, targets: Any) -> float:
    import torch

    if len(targets) == 0:
        return float("nan")
    with torch.no_grad():
        return float(((q @ catalog.T).argmax(1) == targets).float().mean())


def train_adapter(
    queries: npt.NDArray[np.float32],
    targets: npt.NDArray[np.int64],
    catalog: npt.NDArray[np.float32],
    options: AdapterOptions,
) -> tuple[LinearAdapter, dict[str, Any]]:
    """The adapter that maps `queries` (composite crops' vectors) nearest their `targets`
    (row indices into `catalog`, the clean catalog vectors) and a report of the loss and of
    top-1 on the composites held out (`val_share`), before and after."""
    import torch
    import torch.nn.functional as F
    from tqdm import trange

    torch.manual_seed(options.seed)
    gen = np.random.default_rng(options.seed)
    n, dim = queries.shape
    perm = gen.permutation(n)
    n_val = int(round(n * options.val_share))
    val, train = perm[:n_val], perm[n_val:]
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    t = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    c = torch.from_numpy(np.ascontiguousarray(catalog, dtype=np.float32))
    eye = torch.eye(dim)
    if options.rank is None:
        params = [torch.nn.Parameter(eye.clone())]
    else:
        u = torch.nn.Parameter(torch.zeros(dim, options.rank))
        v = torch.nn.Parameter(torch.randn(dim, options.rank) / math.sqrt(dim))
        params = [u, v]

    def mapped(x: torch.Tensor) -> torch.Tensor:
        y = x @ params[0].T if options.rank is None else x + (x @ params[1]) @ params[0].T
        return F.normalize(y, dim=1)

    def penalty() -> torch.Tensor:
        if options.rank is None:
            return ((params[0] - eye) ** 2).sum()
        uu, vv = params[0].T @ params[0], params[1].T @ params[1]
        return (uu * vv).sum()  # ||U Vᵀ||² = trace(UᵀU VᵀV)

    optimiser = torch.optim.Adam(params, lr=options.lr)
    val_before = _top1(q[val], c, t[val])
    train_before = _top1(q[train], c, t[train])
    history: list[dict[str, float]] = []
    bar = trange(options.epochs, desc="adapter", unit="epoch", disable=not options.progress)
    for epoch in bar:
        order = torch.from_numpy(gen.permutation(train))
        total, seen = 0.0, 0
        for start in range(0, len(order), options.batch):
            idx = order[start : start + options.batch]
            logits = mapped(q[idx]) @ c.T / options.temperature
            nce = F.cross_entropy(logits, t[idx])
            loss = nce + options.decay * penalty()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(nce.detach()) * len(idx)
            seen += len(idx)
        with torch.no_grad():
            val_top1 = _top1(mapped(q[val]), c, t[val]) if n_val else float("nan")
            drift = float(penalty())
        history.append(
            {"epoch": epoch + 1, "loss": total / max(seen, 1), "val_top1": val_top1, "drift": drift}
        )
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", val=f"{val_top1:.3f}")
    with torch.no_grad():
        train_after = _top1(mapped(q[train]), c, t[train])
    meta = {
        "temperature": options.temperature,
        "decay": options.decay,
        "rank": options.rank,
        "epochs": options.epochs,
        "lr": options.lr,
        "seed": options.seed,
        "composites": n,
    }
    if options.rank is None:
        adapter = LinearAdapter(dim, weight=params[0].detach().numpy().copy(), meta=meta)
    else:
        adapter = LinearAdapter(
            dim, u=params[0].detach().numpy().copy(), v=params[1].detach().numpy().copy(), meta=meta
        )
    report = {
        **meta,
        "train": len(train),
        "val": n_val,
        "train_top1_before": train_before,
        "train_top1_after": train_after,
        "val_top1_before": val_before,
        "val_top1_after": history[-1]["val_top1"] if history else val_before,
        "loss_first": history[0]["loss"] if history else None,
        "loss_last": history[-1]["loss"] if history else None,
        "drift": history[-1]["drift"] if history else 0.0,
        "history": history,
    }
    return adapter, report
