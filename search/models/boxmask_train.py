"""`roomlens train masks`: the box-prompted mask head trained on real instance masks.

Ground truth in COCO format (e.g. `../shared/datasets/coco-masks/instances.json`). Every
instance of area >= `TRAIN_MIN_AREA` gives `aug` augmented crops (horizontal flip, each box
edge jittered by up to 5% of its side, a margin of 5-20%, colour jitter); the frozen blocks
run once per crop and their maps are kept in memory, so each step runs only blocks 8-15 and
the decoder. AdamW (blocks 2e-4, decoder 2e-3), warm-up then cosine, BCE + dice on the 56×56
logits. `folds` > 1 trains one model per fold of the images (split by image, seeded) and
measures each on the images it never saw; the shipped head is trained on all of them.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from search.evaluation.masks import (
    MIN_AREA,
    Detections,
    GtImage,
    GtInstance,
    detect,
    load_ground_truth,
    score_detections,
)
from search.masks import box_mask, mask_iou
from search.models.base import Segmenter
from search.models.boxmask import (
    CL,
    SIZE,
    THRESHOLD,
    Frozen,
    MaskHead,
    crop_rect,
    lite0,
    new_head,
    paste,
    prepare,
)
from search.models.boxmask_augment import Cutout, cutout, occlude
from search.models.boxmask_composite import catalog_cutouts, composite
from search.types import Box

logger = logging.getLogger(__name__)

TRAIN_MIN_AREA = 16 * 16


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 24
    aug: int = 12  # augmented crops per training instance
    batch: int = 16
    lr_blocks: float = 2e-4
    lr_decoder: float = 2e-3
    paste: float = 0.0  # share of crops with real objects pasted over them as occluders
    composites: int = 0  # catalog cut-outs composited into the training photos
    seed: int = 0
    progress: bool = True


@dataclass
class Features:
    """The frozen maps of every crop, its prompt and target maps, and which instance it is."""

    s4: torch.Tensor
    s8: torch.Tensor
    s16: torch.Tensor
    prompt: torch.Tensor
    target: torch.Tensor
    owner: list[int]  # index of the training instance of each crop


@dataclass(frozen=True)
class TrainResult:
    head: MaskHead
    losses: list[float]
    seconds: float


def _jitter(box: Box, rng: np.random.Generator) -> tuple[Box, float, bool]:
    w, h = box.width, box.height
    j = rng.uniform(-0.05, 0.05, 4)
    jittered = Box(box.x0 + j[0] * w, box.y0 + j[2] * h, box.x1 + j[1] * w, box.y1 + j[3] * h)
    if jittered.width < 2 or jittered.height < 2:
        jittered = box
    return jittered, float(rng.uniform(0.05, 0.2)), bool(rng.random() < 0.5)


def _colour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rgb.astype(np.float32) * rng.uniform(0.75, 1.25)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.25) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * rng.uniform(0.75, 1.25) + grey
    return np.clip(x, 0, 255).astype(np.uint8)


def sample(
    rgb: np.ndarray,
    inst: GtInstance,
    rng: np.random.Generator | None,
    occluders: Sequence[Cutout] = (),
    paste: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, prompt, target) of one crop of `inst`, augmented when `rng` is given: box
    jitter, margin, flip, colour jitter of the crop, and with probability `paste` real
    objects from `occluders` pasted over it (`search.models.boxmask_augment`)."""
    if rng is None:
        box, margin, flip = inst.box, 0.1, False
    else:
        box, margin, flip = _jitter(inst.box, rng)
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = crop_rect(box, width, height, margin)
    image, mask = rgb[y0:y1, x0:x1], inst.mask[y0:y1, x0:x1]
    box = Box(box.x0 - x0, box.y0 - y0, box.x1 - x0, box.y1 - y0)
    if rng is not None:
        if occluders and rng.random() < paste:
            image, mask = occlude(image, mask, box, occluders, rng)
        image = _colour(image, rng)
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
        box = Box(image.shape[1] - box.x1, box.y0, image.shape[1] - box.x0, box.y1)
    pixels, prompt, crop = prepare(np.ascontiguousarray(image), box, margin)
    cx0, cy0, cx1, cy1 = crop.rect
    target_crop = np.ascontiguousarray(mask[cy0:cy1, cx0:cx1], dtype=np.float32)
    new_w, new_h, left, top = crop.geometry
    square = np.zeros((SIZE, SIZE), dtype=np.float32)
    square[top : top + new_h, left : left + new_w] = cv2.resize(
        target_crop, (new_w, new_h), interpolation=cv2.INTER_AREA
    )
    target = cv2.resize(square, (SIZE // 4, SIZE // 4), interpolation=cv2.INTER_AREA)
    return pixels, prompt, target


def read_rgb(image: GtImage) -> np.ndarray:
    from search.images import read_image_file

    return np.asarray(read_image_file(image.path))


def occluder_pool(images: Sequence[GtImage], photos: Sequence[np.ndarray]) -> list[Cutout]:
    """Every training object cut out by its own mask: the occluders copy-paste draws from."""
    pool = []
    for gt, rgb in zip(images, photos, strict=True):
        for inst in gt.instances:
            if inst.area >= TRAIN_MIN_AREA and (piece := cutout(rgb, inst.mask, inst.box)):
                pool.append(piece)
    return pool


def with_composites(
    images: Sequence[GtImage],
    photos: Sequence[np.ndarray],
    cutouts: Sequence[Cutout],
    options: TrainOptions,
) -> tuple[list[GtImage], list[np.ndarray]]:
    """`options.composites` photos made of a training photo and a catalog cut-out pasted in
    (`search.models.boxmask_composite`), each with the cut-out as its one instance."""
    made_images: list[GtImage] = []
    made_photos: list[np.ndarray] = []
    if not cutouts or not photos:
        return made_images, made_photos
    rng = np.random.default_rng([options.seed, 7])
    for j in range(options.composites * 2):
        if len(made_images) >= options.composites:
            break
        k = int(rng.integers(len(photos)))
        made = composite(photos[k], cutouts[j % len(cutouts)], rng)
        if made is None:
            continue
        rgb, mask, box = made
        inst = GtInstance("composite", box, mask, float(mask.sum()))
        made_images.append(GtImage(-1 - j, images[k].path, [inst]))
        made_photos.append(rgb)
    return made_images, made_photos


def build_features(
    frozen: Frozen,
    images: Sequence[GtImage],
    options: TrainOptions,
    cutouts: Sequence[Cutout] = (),
) -> Features:
    """Run the frozen blocks once on `aug` augmented crops of every training instance (and
    `aug` // 4 of each composite made from `cutouts`)."""
    maps: list[list[torch.Tensor]] = [[], [], []]
    prompts, targets, owner = [], [], []
    photos = [read_rgb(gt) for gt in images]
    pool = occluder_pool(images, photos) if options.paste > 0 else []
    extra_images, extra_photos = with_composites(images, photos, cutouts, options)
    real = len(images)
    images, photos = [*images, *extra_images], [*photos, *extra_photos]
    n = 0
    for index, (gt, rgb) in tqdm(
        list(enumerate(zip(images, photos, strict=True))),
        desc="crops",
        disable=not options.progress,
        unit="photo",
    ):
        for inst in (i for i in gt.instances if i.area >= TRAIN_MIN_AREA):
            for k in range(options.aug if index < real else max(1, options.aug // 4)):
                rng = np.random.default_rng([options.seed, abs(gt.image_id), n, k])
                pixels, prompt, target = sample(rgb, inst, rng, pool, options.paste)
                with torch.inference_mode():
                    x = torch.from_numpy(pixels[None]).contiguous(memory_format=CL)
                    for store, tap in zip(maps, frozen(x), strict=True):
                        store.append(tap.half())
                prompts.append(prompt)
                targets.append(target)
                owner.append(n)
            n += 1
    if not owner:
        raise ValueError("no instance of the training images is large enough to train on")
    s4, s8, s16 = (torch.cat(m) for m in maps)
    return Features(
        s4,
        s8,
        s16,
        prompt=torch.from_numpy(np.stack(prompts)).half(),
        target=torch.from_numpy(np.stack(targets)).half(),
        owner=owner,
    )


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + dice.mean()


def _batch(features: Features, ids: torch.Tensor) -> list[torch.Tensor]:
    taps = [
        t[ids].float().contiguous(memory_format=CL)
        for t in (features.s4, features.s8, features.s16)
    ]
    prompt = features.prompt[ids].float()[:, None].contiguous(memory_format=CL)
    return [*taps, prompt]


def train_head(features: Features, options: TrainOptions, steps: int | None = None) -> TrainResult:
    """Train a fresh head on `features`; `steps` caps the number of steps (tests)."""
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    head = new_head(lite0(), options.seed).to(memory_format=CL).train()
    decoder = [p for name, p in head.named_parameters() if not name.startswith("blocks.")]
    groups = [
        {"params": list(head.blocks.parameters()), "lr": options.lr_blocks},
        {"params": decoder, "lr": options.lr_decoder},
    ]
    optimiser = torch.optim.AdamW(groups, weight_decay=1e-4)
    by_instance: dict[int, list[int]] = {}
    for crop, inst in enumerate(features.owner):
        by_instance.setdefault(inst, []).append(crop)
    instances = sorted(by_instance)
    per_epoch = max(1, -(-len(instances) // options.batch))
    total = steps or per_epoch * options.epochs
    warm = max(1, min(50, total // 10))
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(total=total, desc="train masks", disable=not options.progress)
    while len(losses) < total:
        order = rng.permutation(instances)
        for b in range(per_epoch):
            if len(losses) >= total:
                break
            step = len(losses)
            scale = (step + 1) / warm if step < warm else 0.5 * (1 + np.cos(np.pi * step / total))
            for group, base in zip(
                optimiser.param_groups, (options.lr_blocks, options.lr_decoder), strict=True
            ):
                group["lr"] = base * scale
            chosen = order[b * options.batch : (b + 1) * options.batch]
            ids = torch.tensor([by_instance[i][rng.integers(len(by_instance[i]))] for i in chosen])
            loss = loss_fn(head(*_batch(features, ids)), features.target[ids].float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    bar.close()
    return TrainResult(head.eval(), losses, time.perf_counter() - started)


def folds_of(images: Sequence[GtImage], k: int, seed: int = 0) -> dict[int, int]:
    """image id -> fold: a seeded split by image."""
    order = np.random.default_rng(seed).permutation(len(images))
    return {images[j].image_id: i % k for i, j in enumerate(order)}


def evaluate_head(
    frozen: Frozen, head: MaskHead, images: Sequence[GtImage]
) -> list[tuple[float, float, str]]:
    """(IoU, box IoU, category) of every prompted instance (area >= 32²) of `images`."""
    rows = []
    for gt in images:
        rgb = read_rgb(gt)
        for inst in (i for i in gt.instances if i.area >= MIN_AREA):
            pixels, prompt, crop = prepare(rgb, inst.box)
            with torch.inference_mode():
                x = torch.from_numpy(pixels[None]).contiguous(memory_format=CL)
                p = torch.from_numpy(prompt[None, None]).contiguous(memory_format=CL)
                square = torch.sigmoid(head(*frozen(x), p))[0].numpy()
            boxed = box_mask(inst.box, rgb.shape[1], rgb.shape[0])
            mask = (paste(square, crop, inst.mask.shape) >= THRESHOLD) & boxed  # as the masker
            rows.append((mask_iou(mask, inst.mask), mask_iou(boxed, inst.mask), inst.category))
    return rows


def save_head(head: MaskHead, path: Path) -> None:
    """The head's weights as float16 (half the size; the masker widens them back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in head.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_masks(
    annotations: Path,
    out: Path,
    *,
    folds: int = 1,
    options: TrainOptions = TrainOptions(),
    feed: Path | None = None,
    segmenter_for: Callable[[Path], Segmenter] | None = None,
) -> dict[str, object]:
    """Train (k-fold figures first when `folds` > 1) and save the head trained on every image;
    with `feed` and `options.composites`, catalog cut-outs composited into the photos too.

    With `segmenter_for` (a head file -> the segmenter that masks with it), the k-fold run
    also segments each fold's photos whole with that fold's head and scores all of them at
    once: the whole-photo mask and box AP out of sample (`kfold_whole_photo`)."""
    coco, images = load_ground_truth(annotations)
    frozen = Frozen(lite0()).to(memory_format=CL).eval()
    cutouts: list[Cutout] = []
    if feed is not None and options.composites > 0:
        cutouts = catalog_cutouts(feed, limit=options.composites, seed=options.seed)
    report: dict[str, object] = {"images": len(images), "folds": folds, "cutouts": len(cutouts)}
    if folds > 1:
        fold_of = folds_of(images, folds, options.seed)
        rows: list[tuple[float, float, str]] = []
        found = Detections()
        for fold in range(folds):
            train = [g for g in images if fold_of[g.image_id] != fold]
            test = [g for g in images if fold_of[g.image_id] == fold]
            result = train_head(build_features(frozen, train, options, cutouts), options)
            rows += evaluate_head(frozen, result.head, test)
            if segmenter_for is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    save_head(result.head, Path(tmp) / "fold.pt")
                    segmenter = segmenter_for(Path(tmp) / "fold.pt")
                    detect(coco, test, segmenter, found, progress=options.progress)
            logger.info("fold %d: %d test instances, %.0f s", fold, len(rows), result.seconds)
        report["kfold"] = summarise(rows)
        if segmenter_for is not None:
            whole = score_detections(coco, found)
            report["kfold_whole_photo"] = {
                "mask_ap": round(whole.mask_ap, 4),
                "box_ap": round(whole.box_ap, 4),
                "ratio": round(whole.ratio, 4),
                "box_shaped": round(whole.box_shaped, 4),
                "masks": whole.instances,
            }
    result = train_head(build_features(frozen, images, options, cutouts), options)
    save_head(result.head, out)
    report.update(final_loss=float(np.mean(result.losses[-20:])), seconds=round(result.seconds, 1))
    return report


def summarise(rows: Sequence[tuple[float, float, str]]) -> dict[str, float]:
    from search.evaluation.masks import FURNITURE_LIKE

    furniture = [r for r in rows if r[2] in FURNITURE_LIKE]
    return {
        "instances": len(rows),
        "furniture_instances": len(furniture),
        "all_miou": float(np.mean([r[0] for r in rows])),
        "furniture_miou": float(np.mean([r[0] for r in furniture])) if furniture else float("nan"),
        "box_all_miou": float(np.mean([r[1] for r in rows])),
        "box_furniture_miou": float(np.mean([r[1] for r in furniture]))
        if furniture
        else float("nan"),
    }
