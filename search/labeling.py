"""`roomlens label`: a folder of photos, or the indexed catalog, as a training data set.

Photo mode (`label_photos`) segments every photo under a folder with the configured segmenter
and exclusive masks, as the service does (`SearchService.instances`, without its whole-photo
fallback), and writes `annotations.json` (COCO) or a YOLO segmentation tree
(`search.datasets`). Photos are the files Pillow opens, found recursively in sorted order;
dot-files, dot-folders and the output's own folders are left out.

It is resumable: each photo's objects (all of them, before `min_score`) are appended to
`OUT_DIR/.progress.jsonl` and fsynced before the next photo, keyed by the photo's path
relative to the folder, its size and mtime, and the segmenter's name. A run skips the photos
whose key is there, relabels changed ones, and rebuilds the data set from the checkpoint, so
a crash loses at most the photo in flight. An unreadable photo is reported and left out (it
is tried again by the next run).

Catalog mode (`label_catalog`) exports the indexed catalog's active instances (images with
status "ok") with the product's category as the class (the instance's label when it has
none). A local image's `file_name` is its path relative to the common folder of all local
images (`info.image_root`); a remote one's is its URL (left out of a YOLO tree).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from search.catalog import active_instances
from search.datasets import LabelledImage, LabelledObject, coco_document, write_json, write_yolo
from search.db import InstanceRow, Product, ProductImage
from search.errors import InvalidInput, UnsupportedImageType
from search.fetch import is_url
from search.images import DEFAULT_MAX_PIXELS, decode_image
from search.masks import exclusive
from search.models.base import Segmenter

log = logging.getLogger(__name__)

Format = Literal["coco", "yolo-seg"]
FORMATS: tuple[Format, ...] = ("coco", "yolo-seg")
PROGRESS_FILE = ".progress.jsonl"
COCO_FILE = "annotations.json"
CATALOG_SUPERCATEGORY = "product"


@dataclass(frozen=True)
class LabelOptions:
    format: Format = "coco"
    min_score: float = 0.0
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class LabelReport:
    images: int = 0  # in the data set
    objects: int = 0  # in the data set
    labelled: int = 0  # photos segmented by this run
    reused: int = 0  # photos taken from the checkpoint
    remote: int = 0  # remote images left out of a YOLO tree
    failed: dict[str, str] = field(default_factory=dict)  # photo -> why it was left out
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- photo mode


def photo_formats() -> tuple[frozenset[str], frozenset[str]]:
    """The file extensions (lower case, with the dot) and formats Pillow can open."""
    Image.init()
    extensions = {
        ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
    }
    return frozenset(extensions), frozenset(extensions.values())


def find_photos(photo_dir: Path, out_dir: Path) -> list[Path]:
    """The photos under `photo_dir`, sorted by relative path (see the module docstring)."""
    extensions, _ = photo_formats()
    skip = {p.resolve() for p in (out_dir, out_dir / "images", out_dir / "labels")}
    found = []
    for root, dirs, files in os.walk(photo_dir):
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() not in skip
        ]
        found += [
            Path(root) / f
            for f in files
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions
        ]
    return sorted(found, key=lambda p: p.relative_to(photo_dir).as_posix())


def photo_stamp(path: Path) -> str:
    """The cheap change check of a photo: "SIZE:MTIME_NS"."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class Checkpoint:
    """The per-photo JSON lines of `OUT_DIR/.progress.jsonl`; the last line of a photo wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a line cut short by a crash: drop it
            raw = raw[: raw.rfind(b"\n") + 1]
            with self.path.open("r+b") as f:
                f.truncate(len(raw))
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                self.records[record["file"]] = record
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s:%d: unreadable checkpoint line skipped (%s)", self.path, n, exc)

    def get(self, file: str, stamp: str, segmenter: str) -> dict[str, Any] | None:
        record = self.records.get(file)
        if record and record.get("stamp") == stamp and record.get("segmenter") == segmenter:
            return record
        return None

    def add(self, record: dict[str, Any]) -> None:
        """Append one photo's record and fsync it."""
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()
        os.fsync(self._out.fileno())
        self.records[record["file"]] = record

    def compact(self, keep: Iterable[str]) -> None:
        """Rewrite the file with only the latest records of the photos in `keep`."""
        self._out.close()
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for file in keep:
                out.write(json.dumps(self.records[file]) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._out = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._out.close()


def _record(file: str, stamp: str, segmenter: str, image: LabelledImage) -> dict[str, Any]:
    objects = [o.to_json() for o in image.objects]
    size = {"width": image.width, "height": image.height}
    return {"file": file, "stamp": stamp, "segmenter": segmenter, **size, "objects": objects}


def _from_record(record: Mapping[str, Any], path: Path) -> LabelledImage:
    objects = tuple(LabelledObject.from_json(o) for o in record["objects"])
    return LabelledImage(record["file"], record["width"], record["height"], objects, path)


def _segment(path: Path, rel: str, segmenter: Segmenter, max_pixels: int) -> LabelledImage:
    """Read (upright) and segment one photo; `InvalidInput` when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        image = decode_image(data, max_pixels=max_pixels, formats=photo_formats()[1])
    except UnsupportedImageType as exc:  # its message lists every format Pillow reads
        raise InvalidInput("not an image Pillow can read") from exc
    instances = exclusive(segmenter.segment(image))
    return LabelledImage.from_instances(rel, image.size, instances, path=path)


def label_photos(
    photo_dir: Path,
    out_dir: Path,
    *,
    segmenter: Segmenter,
    options: LabelOptions | None = None,
    on_photo: Callable[[str], None] | None = None,
) -> LabelReport:
    """Label every photo under `photo_dir` into `out_dir` (resumable; see the module).

    `on_photo(relative path)` runs after each photo is checkpointed."""
    options = options or LabelOptions()
    if not photo_dir.is_dir():
        raise InvalidInput(f"{photo_dir} is not a folder")
    photos = find_photos(photo_dir, out_dir)
    report = LabelReport()
    images: list[LabelledImage] = []
    checkpoint = Checkpoint(out_dir / PROGRESS_FILE)
    try:
        for path in tqdm(photos, desc="label", unit="photo", disable=not options.progress):
            rel = path.relative_to(photo_dir).as_posix()
            stamp = photo_stamp(path)
            record = checkpoint.get(rel, stamp, segmenter.name)
            if record is not None:
                images.append(_from_record(record, path))
                report.reused += 1
                continue
            try:
                image = _segment(path, rel, segmenter, options.max_pixels)
            except InvalidInput as exc:
                log.warning("%s: left out: %s", rel, exc)
                report.failed[rel] = str(exc)
                continue
            checkpoint.add(_record(rel, stamp, segmenter.name, image))
            images.append(image)
            report.labelled += 1
            if on_photo is not None:
                on_photo(rel)
        checkpoint.compact(im.file_name for im in images)
    finally:
        checkpoint.close()
    info = {
        "description": "roomlens label",
        "photo_dir": str(photo_dir.resolve()),
        "segmenter": segmenter.name,
        "min_score": options.min_score,
    }
    _write(out_dir, images, options, report, info=info)
    return report


# --------------------------------------------------------------------------- catalog mode


def catalog_images(*, session: Session) -> Iterator[LabelledImage]:
    """The catalog's "ok" images with their active instances, by image id; the class is the
    product's category, else the instance's label. `file_name` is `resolved` as stored."""
    stmt = (
        select(
            ProductImage.id,
            ProductImage.resolved,
            ProductImage.width,
            ProductImage.height,
            Product.category,
            InstanceRow.label,
            InstanceRow.score,
            InstanceRow.mask_rle,
        )
        .join(Product, Product.id == ProductImage.product_id)
        .join(InstanceRow, InstanceRow.image_id == ProductImage.id)
        .where(active_instances(), ProductImage.status == "ok")
        .order_by(ProductImage.id, InstanceRow.id)
        .execution_options(yield_per=1000)
    )
    for _, rows in groupby(session.execute(stmt), key=lambda r: r[0]):
        rows_ = list(rows)
        _, resolved, width, height, category = rows_[0][:5]
        h, w = rows_[0].mask_rle["size"]
        width, height = width or w, height or h
        objects = []
        for row in rows_:
            if list(row.mask_rle["size"]) != [height, width]:
                log.warning("%s: a mask of size %s left out", resolved, row.mask_rle["size"])
                continue
            objects.append(LabelledObject.from_rle(category or row.label, row.score, row.mask_rle))
        path = None if is_url(resolved) else Path(resolved)
        yield LabelledImage(resolved, width, height, tuple(o for o in objects if o.area), path)


def label_catalog(
    out_dir: Path, *, session: Session, options: LabelOptions | None = None
) -> LabelReport:
    """The indexed catalog's active instances as a data set in `out_dir` (see the module)."""
    options = options or LabelOptions()
    images = list(catalog_images(session=session))
    local = [im.file_name for im in images if im.path is not None]
    root = os.path.commonpath([os.path.dirname(f) for f in local]) if local else ""
    images = [
        im
        if im.path is None
        else replace(im, file_name=Path(im.file_name).relative_to(root).as_posix())
        for im in images
    ]
    report = LabelReport()
    info = {
        "description": "roomlens label --catalog",
        "image_root": root,
        "min_score": options.min_score,
    }
    _write(out_dir, images, options, report, info=info, supercategory=CATALOG_SUPERCATEGORY)
    return report


# --------------------------------------------------------------------------- output


def _write(
    out_dir: Path,
    images: list[LabelledImage],
    options: LabelOptions,
    report: LabelReport,
    **coco: Any,
) -> None:
    """Write the data set of `images` (objects under `min_score` left out) in the format."""
    kept = [im.above(options.min_score) for im in images]
    report.images = len(kept)
    report.objects = sum(len(im.objects) for im in kept)
    if options.format == "coco":
        path = out_dir / COCO_FILE
        write_json(path, coco_document(kept, **coco))
        report.files.append(path)
    elif options.format == "yolo-seg":
        tree = write_yolo(out_dir, kept)
        report.remote = tree.remote
        report.images, report.objects = tree.labels, tree.objects
        report.files += [tree.data_yaml, out_dir / "labels"]
    else:
        raise InvalidInput(f"unknown format {options.format!r}; one of {', '.join(FORMATS)}")
