"""`roomlens label`: real photos segmented by the real lite segmenter (resumable), and the real
indexed catalog on a migrated database, exported as data sets and validated with pycocotools."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from roomlens.cli import main
from search.config import IndexSettings, ModelSettings, Settings
from search.datasets import check_coco, check_yolo, coco_self_ap
from search.db import InstanceRow, Product, ProductImage
from search.labeling import PROGRESS_FILE, LabelOptions, label_catalog, label_photos
from search.masks import encode_rle
from search.models.base import Segmenter
from search.models.registry import build_masker, build_segmenter

ONE_THREAD = ModelSettings(threads=1)
READABLE = ["r0.jpg", "r1.jpg", "sub/r2.jpg", "sub/r3.jpg"]  # sorted; r3 is EXIF-rotated


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    """The configured (offline) segmenter and masker, built as the service builds them."""
    return build_segmenter(ONE_THREAD, masker=build_masker(ONE_THREAD))


def make_photos(folder: Path, sample_dir: Path) -> Path:
    """Four small room photos (one stored on its side with an EXIF orientation), a broken one,
    and files that are no photos."""
    landscape = (r for r in sorted((sample_dir / "rooms").glob("*.jpg")) if _wide(r))
    rooms = [next(landscape) for _ in READABLE]
    for room, name in zip(rooms, READABLE, strict=True):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(room).convert("RGB")
        image = image.resize((480, round(480 * image.height / image.width)))
        if name == "sub/r3.jpg":  # stored turned; orientation 6 says: turn 90 deg clockwise
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
        else:
            image.save(path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    shutil.copyfile(folder / "r0.jpg", folder / ".hidden.jpg")
    return folder


def _wide(path: Path) -> bool:
    with Image.open(path) as image:
        return bool(image.width > image.height)


def progress_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / PROGRESS_FILE).read_text().splitlines()]


def test_photo_run_resumes_where_it_stopped(
    tmp_path: Path, sample_dir: Path, segmenter: Segmenter
) -> None:
    photos = make_photos(tmp_path / "photos", sample_dir)
    out = tmp_path / "out"
    options = LabelOptions(progress=False)
    seen: list[str] = []

    def crash_after_two(rel: str) -> None:
        seen.append(rel)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_photos(photos, out, segmenter=segmenter, options=options, on_photo=crash_after_two)
    assert not (out / "annotations.json").exists()
    assert [r["file"] for r in progress_lines(out)] == READABLE[:2]

    rest: list[str] = []
    report = label_photos(photos, out, segmenter=segmenter, options=options, on_photo=rest.append)
    assert rest == READABLE[2:], "only the photos not labelled before"
    assert (report.reused, report.labelled) == (2, 2)
    assert list(report.failed) == ["broken.jpg"]
    path = out / "annotations.json"
    doc = json.loads(path.read_text())
    assert [im["file_name"] for im in doc["images"]] == READABLE
    stored = Image.open(photos / "sub" / "r3.jpg").size
    upright = doc["images"][3]["height"], doc["images"][3]["width"]
    assert stored == upright and stored[0] < stored[1], "stored on its side, labelled upright"
    assert doc["annotations"], "the lite segmenter finds furniture in these rooms"
    assert check_coco(doc) == []
    assert coco_self_ap(path) == pytest.approx({"segm": 1.0, "bbox": 1.0})

    fresh = label_photos(photos, tmp_path / "fresh", segmenter=segmenter, options=options)
    assert fresh.labelled == 4
    assert json.loads((tmp_path / "fresh" / "annotations.json").read_text()) == doc

    # a changed photo is labelled again, the others are not
    changed = photos / "r1.jpg"
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    os.utime(changed, ns=(1, 1))
    again: list[str] = []
    label_photos(photos, out, segmenter=segmenter, options=options, on_photo=again.append)
    assert again == ["r1.jpg"]
    assert len(progress_lines(out)) == 4, "the checkpoint is compacted after a complete run"

    # a line cut short by a crash is dropped; the next line is whole again
    with (out / PROGRESS_FILE).open("a") as f:
        f.write('{"file": "sub/r2.jpg", "stamp": "1:')
    report = label_photos(photos, out, segmenter=segmenter, options=options, on_photo=again.append)
    assert (report.reused, report.labelled) == (4, 0)
    assert len(progress_lines(out)) == 4


def test_photo_run_min_score_and_yolo(
    tmp_path: Path, sample_dir: Path, segmenter: Segmenter
) -> None:
    photos = make_photos(tmp_path / "photos", sample_dir)
    out = tmp_path / "out"
    label_photos(photos, out, segmenter=segmenter, options=LabelOptions(progress=False))
    all_scores = [o["score"] for r in progress_lines(out) for o in r["objects"]]
    options = LabelOptions(format="yolo-seg", min_score=0.4, progress=False)
    report = label_photos(photos, out, segmenter=segmenter, options=options)
    assert report.labelled == 0, "min_score applies to the checkpoint; nothing is segmented"
    assert report.objects == sum(s >= 0.4 for s in all_scores) < len(all_scores)
    assert check_yolo(out) == []
    labels = sorted(
        p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.txt")
    )
    assert labels == [name.replace(".jpg", ".txt") for name in READABLE]
    assert (out / "images" / "sub" / "r3.jpg").resolve() == (photos / "sub" / "r3.jpg").resolve()


def test_cli_label_photos_partial_and_usage(
    tmp_path: Path,
    sample_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["label", "--out", str(tmp_path / "x")]) == 2
    assert main(["label", str(tmp_path), "--catalog", "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(sorted((sample_dir / "rooms").glob("*.jpg"))[0], photos / "room.jpg")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    monkeypatch.setenv("ROOMLENS_MODELS__THREADS", "1")
    out = tmp_path / "out"
    args = ["label", str(photos), "--out", str(out), "--format", "yolo-seg", "--no-progress"]
    assert main(args) == 3, "some photos could not be read: partial"
    body = json.loads(capsys.readouterr().out)
    assert body["images"] == 1 and body["objects"] > 0 and list(body["failed"]) == ["broken.png"]
    assert check_yolo(out) == []


# --------------------------------------------------------------------------- catalog mode


@pytest.fixture(scope="module")
def index_models() -> IndexModels:
    return IndexModels.build(ONE_THREAD)


def indexed_catalog(
    root: Path, sample_dir: Path, db_url: str, models: IndexModels
) -> list[dict[str, Any]]:
    """The first catalog products, their images copied under `root`, really indexed."""
    rows = [json.loads(line) for line in (sample_dir / "catalog.jsonl").open()][:3]
    (root / "images").mkdir(parents=True)
    for row in rows:
        shutil.copyfile(sample_dir / row["image"], root / row["image"])
    feed = root / "feed.jsonl"
    feed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = Settings(database_url=db_url, index=IndexSettings(dir=root / "index"))
    report = run_index(feed, settings=settings, options=IndexOptions(progress=False), models=models)
    assert report.status == "succeeded"
    return rows


def add_product(
    session: Session, sku: str, category: str | None, resolved: str, status: str = "ok"
) -> ProductImage:
    """A product with one 40x30 image holding a rectangle instance (and a retired one)."""
    product = Product(sku=sku, title=sku, category=category)
    image = ProductImage(
        product=product, source=resolved, resolved=resolved, width=40, height=30, status=status
    )
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:25, 10:30] = True
    for retired in (None, 1):
        image.instances.append(
            InstanceRow(
                label="product",
                score=0.9,
                x0=10,
                y0=5,
                x1=30,
                y1=25,
                mask_rle=encode_rle(mask),
                mask_area=int(mask.sum()),
                embedder="e",
                retired_in_run=retired,
            )  # fmt: skip
        )
    session.add(product)
    return image


def test_catalog_as_a_data_set(
    tmp_path: Path,
    sample_dir: Path,
    db_url: str,
    engine: Engine,
    session_factory: sessionmaker[Session],
    index_models: IndexModels,
) -> None:
    root = tmp_path / "catalog"
    rows = indexed_catalog(root, sample_dir, db_url, index_models)
    extra = root / "extra" / "y.png"
    extra.parent.mkdir()
    Image.new("RGB", (40, 30)).save(extra)
    with session_factory() as session:
        add_product(session, "remote", "sofa", "https://images.example/x.jpg")
        add_product(session, "no-category", None, str(extra))
        add_product(session, "pending", "bed", str(extra), status="pending")
        session.commit()

    out = tmp_path / "coco"
    with session_factory() as session:
        report = label_catalog(out, session=session, options=LabelOptions(progress=False))
    path = out / "annotations.json"
    doc = json.loads(path.read_text())
    assert check_coco(doc) == []
    assert coco_self_ap(path) == pytest.approx({"segm": 1.0, "bbox": 1.0})
    files = [im["file_name"] for im in doc["images"]]
    assert files == [row["image"] for row in rows] + ["https://images.example/x.jpg", "extra/y.png"]
    assert doc["info"]["image_root"] == str(root)
    names = {c["id"]: c["name"] for c in doc["categories"]}
    by_image = {a["image_id"]: names[a["category_id"]] for a in doc["annotations"]}
    expected = [row["category"] for row in rows] + ["sofa", "product"]
    assert [by_image[n] for n in range(1, 6)] == expected, "product category, else the label"
    assert len(doc["annotations"]) == report.objects == 5, "one active instance per image"
    assert {c["supercategory"] for c in doc["categories"]} == {"product"}

    yolo = tmp_path / "yolo"
    with session_factory() as session:
        report = label_catalog(yolo, session=session, options=LabelOptions(format="yolo-seg"))
    assert (report.images, report.remote) == (4, 1)
    assert check_yolo(yolo) == []
    assert (yolo / "images" / "extra" / "y.png").resolve() == extra.resolve()


def test_cli_label_catalog(
    tmp_path: Path,
    sample_dir: Path,
    db_url: str,
    index_models: IndexModels,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    indexed_catalog(tmp_path / "catalog", sample_dir, db_url, index_models)
    monkeypatch.setenv("ROOMLENS_DATABASE_URL", db_url)
    out = tmp_path / "out"
    assert main(["label", "--catalog", "--out", str(out), "--min-score", "0"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["images"] == 3 and body["files"] == [str(out / "annotations.json")]
    assert check_coco(json.loads((out / "annotations.json").read_text())) == []
