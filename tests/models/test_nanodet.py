"""NanoDet: decoding, NMS, pre-processing, and the converted weights on real room photos."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.coco import COCO_CLASSES, FURNITURE_CLASSES
from search.errors import InvalidInput, ModelUnavailable
from search.models.base import Detector
from search.models.nanodet import (
    DEFAULT_NANODET_PATH,
    INPUT_SIZE,
    STRIDES,
    NanoDetDetector,
    ScaleInfo,
    decode,
    distances,
    nms,
    preprocess,
)
from search.types import Box

REPO_ROOT = Path(__file__).resolve().parents[2]
IKEA = REPO_ROOT.parent / "shared" / "datasets" / "ikea"
ROOMS = IKEA / "rooms"
# Rooms where the detector is known to see a chair / a potted plant clearly.
ROOM_PHOTOS = (
    "ikea-a-bright-kitchen-idea-with-custom-character__1364316015597-s4.jpg",
    "ikea-a-cosy-space-for-coffee-and-conversation__1364308407140-s4.jpg",
    "ikea-a-living-space-to-snuggle-and-enjoy__1364308444726-s4.jpg",
)
WANTED = frozenset({"chair", "couch", "potted plant"})

needs_model = pytest.mark.skipif(
    not DEFAULT_NANODET_PATH.is_file(),
    reason=f"{DEFAULT_NANODET_PATH} missing: run scripts/convert_nanodet.py",
)


# ----------------------------------------------------------------------------- helpers


def _empty_outputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    scores = [np.zeros(((INPUT_SIZE // s) ** 2, 80), np.float32) for s in STRIDES]
    dists = [np.zeros(((INPUT_SIZE // s) ** 2, 44), np.float32) for s in STRIDES]
    return scores, dists


def _one_hot_sides(bins: tuple[int, int, int, int]) -> np.ndarray:
    """44 logits whose softmax puts (almost) all mass on one bin per side."""
    logits = np.full((4, 11), -50.0, np.float32)
    for side, b in enumerate(bins):
        logits[side, b] = 50.0
    return logits.reshape(44)


def _brute_force_nms(
    boxes: np.ndarray, scores: np.ndarray, thr: float, ids: np.ndarray | None
) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        bi = Box(*boxes[i])
        if all(
            (ids is not None and ids[i] != ids[k]) or bi.iou(Box(*boxes[k])) <= thr for k in kept
        ):
            kept.append(i)
    return kept


# ----------------------------------------------------------------------------- classes


def test_coco_classes() -> None:
    assert len(COCO_CLASSES) == 80 == len(set(COCO_CLASSES))
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[56] == "chair"
    assert COCO_CLASSES[57] == "couch" and COCO_CLASSES[79] == "toothbrush"
    assert set(COCO_CLASSES) >= FURNITURE_CLASSES
    assert {"chair", "couch", "bed", "dining table", "potted plant"} <= FURNITURE_CLASSES


# ----------------------------------------------------------------------------- decode


def test_decode_single_hot_cell_gives_known_box() -> None:
    scores, dists = _empty_outputs()
    stride, row, col, cls = 16, 3, 5, 56
    grid = INPUT_SIZE // stride
    cell = row * grid + col
    level = STRIDES.index(stride)
    scores[level][cell, cls] = 0.9
    dists[level][cell] = _one_hot_sides((2, 1, 4, 3))

    boxes, got_scores, ids = decode(scores, dists, score_threshold=0.3)

    cx, cy = (col + 0.5) * stride, (row + 0.5) * stride  # cell centre: 88, 56
    expected = [cx - 2 * stride, cy - 1 * stride, cx + 4 * stride, cy + 3 * stride]
    np.testing.assert_allclose(boxes, [expected], atol=1e-3)
    np.testing.assert_allclose(got_scores, [0.9])
    assert ids.tolist() == [cls]


def test_decode_accepts_batch_axis_and_every_level() -> None:
    scores, dists = _empty_outputs()
    for level in range(len(STRIDES)):
        scores[level][0, 7] = 0.5  # top-left cell of every level
        dists[level][0] = _one_hot_sides((0, 0, 1, 1))
    boxes, _, ids = decode([s[None] for s in scores], [d[None] for d in dists])
    assert ids.tolist() == [7, 7, 7]
    for box, stride in zip(boxes, STRIDES, strict=True):
        c = 0.5 * stride
        np.testing.assert_allclose(box, [c, c, c + stride, c + stride], atol=1e-3)


def test_decode_threshold_and_empty() -> None:
    scores, dists = _empty_outputs()
    scores[0][10, 3] = 0.29
    boxes, got, ids = decode(scores, dists, score_threshold=0.3)
    assert boxes.shape == (0, 4) and got.shape == (0,) and ids.shape == (0,)


def test_decode_rejects_wrong_grid() -> None:
    scores, dists = _empty_outputs()
    scores[0] = scores[0][:-1]
    with pytest.raises(ValueError):
        decode(scores, dists)


def test_distances_is_expected_bin() -> None:
    logits = np.full((1, 4, 11), -50.0, np.float32)
    logits[0, 0, [3, 4]] = 0.0  # half on bin 3, half on bin 4
    logits[0, 1, 10] = 0.0
    logits[0, 2, :] = 0.0  # uniform: mean bin 5
    logits[0, 3, 0] = 0.0
    np.testing.assert_allclose(distances(logits.reshape(1, 44)), [[3.5, 10, 5, 0]], atol=1e-4)


# ----------------------------------------------------------------------------- nms


@pytest.mark.parametrize("class_aware", [False, True])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(class_aware: bool, thr: float) -> None:
    rng = np.random.default_rng(1234)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(5, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        ids = rng.integers(0, 3, n) if class_aware else None
        got = nms(boxes, scores, thr, ids)
        assert got.tolist() == _brute_force_nms(boxes, scores, thr, ids)


def test_nms_edge_cases() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, max_output=1).tolist() == [1]
    assert nms(boxes, scores, 0.5, np.array([0, 1, 0])).tolist() == [1, 2, 0]


# ----------------------------------------------------------------------------- preprocess


@pytest.mark.parametrize("letterbox", [False, True])
def test_preprocess_shape_and_round_trip(letterbox: bool) -> None:
    img = Image.new("RGB", (640, 320), (123, 116, 103))
    tensor, info = preprocess(img, letterbox=letterbox)
    assert tensor.shape == (1, 3, INPUT_SIZE, INPUT_SIZE) and tensor.dtype == np.float32
    box = np.array([[100.0, 50.0, 300.0, 250.0]], np.float32)
    to_net = box.copy()
    to_net[:, 0::2] = box[:, 0::2] * info.scale_x + info.pad_x
    to_net[:, 1::2] = box[:, 1::2] * info.scale_y + info.pad_y
    np.testing.assert_allclose(info.to_original(to_net), box, atol=1e-3)
    if letterbox:
        assert info.scale_x == pytest.approx(info.scale_y, rel=1e-2)
        assert info.pad_y > 0 and info.pad_x == 0


def test_preprocess_is_bgr_normalised() -> None:
    tensor, _ = preprocess(Image.new("RGB", (32, 32), (255, 0, 0)), letterbox=False)
    pixel = tensor[0, :, 16, 16]
    np.testing.assert_allclose(
        pixel, [(0 - 103.53) / 57.375, (0 - 116.28) / 57.12, (255 - 123.675) / 58.395], rtol=1e-5
    )


def test_scale_info_clips_to_image() -> None:
    info = ScaleInfo(0.5, 0.5, 0.0, 0.0, 100, 80)
    out = info.to_original(np.array([[-10, -10, 60, 60]], np.float32))
    np.testing.assert_allclose(out, [[0, 0, 100, 80]])


# ----------------------------------------------------------------------------- the detector


def test_missing_model_raises_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="convert_nanodet.py"):
        NanoDetDetector(tmp_path / "absent.onnx")


@needs_model
def test_unknown_class_names_are_rejected() -> None:
    with pytest.raises(InvalidInput):
        NanoDetDetector(classes=frozenset({"sofa"}))


def test_recorded_sha256_matches_file() -> None:
    readme = (REPO_ROOT / "data" / "models" / "README.md").read_text()
    section = readme.split("## nanodet-m-416.onnx", 1)[1]
    recorded = re.search(r"sha256\s*\|\s*`([0-9a-f]{64})`", section)
    assert recorded, "no sha256 recorded for nanodet-m-416.onnx in data/models/README.md"
    if not DEFAULT_NANODET_PATH.is_file():
        pytest.skip(f"{DEFAULT_NANODET_PATH} missing")
    digest = hashlib.sha256(DEFAULT_NANODET_PATH.read_bytes()).hexdigest()
    assert digest == recorded.group(1)
    assert DEFAULT_NANODET_PATH.stat().st_size < 20_000_000


@pytest.fixture(scope="module")
def detector() -> NanoDetDetector:
    if not DEFAULT_NANODET_PATH.is_file():
        pytest.skip(f"{DEFAULT_NANODET_PATH} missing: run scripts/convert_nanodet.py")
    return NanoDetDetector(threads=1)


@pytest.fixture(scope="module")
def rooms() -> list[Image.Image]:
    missing = [p for p in ROOM_PHOTOS if not (ROOMS / p).is_file()]
    if missing:
        pytest.skip(f"IKEA room photos not available under {ROOMS} (shared dataset absent)")
    return [Image.open(ROOMS / p).convert("RGB") for p in ROOM_PHOTOS]


def test_detector_implements_protocol(detector: NanoDetDetector) -> None:
    assert isinstance(detector, Detector)
    assert detector.name == "nanodet-m-416"


def test_blank_image_finds_nothing(detector: NanoDetDetector) -> None:
    assert detector.detect(Image.new("RGB", (300, 200), (128, 128, 128))) == []


@pytest.mark.slow
def test_real_rooms_have_furniture(detector: NanoDetDetector, rooms: list[Image.Image]) -> None:
    results = detector.detect_batch(rooms)
    for name, img, dets in zip(ROOM_PHOTOS, rooms, results, strict=True):
        w, h = img.size
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
        for d in dets:
            assert 0 <= d.box.x0 < d.box.x1 <= w and 0 <= d.box.y0 < d.box.y1 <= h
            assert d.label in COCO_CLASSES and d.score >= detector.score_threshold
        found = [d for d in dets if d.label in WANTED]
        assert found, f"{name}: no chair/couch/potted plant in {dets[:5]}"
        best = found[0]
        frac = best.box.area / (w * h)
        assert 0.002 < frac < 0.6, f"{name}: implausible {best.label} box {best.box}"
        assert best.box.width > 10 and best.box.height > 10


@pytest.mark.slow
def test_batch_matches_single_and_class_filter(rooms: list[Image.Image]) -> None:
    if not DEFAULT_NANODET_PATH.is_file():
        pytest.skip(f"{DEFAULT_NANODET_PATH} missing")
    det = NanoDetDetector(threads=1, classes=FURNITURE_CLASSES, class_agnostic_nms=True)
    batch = det.detect_batch(rooms[:2])
    for img, dets in zip(rooms[:2], batch, strict=True):
        single = det.detect(img)
        assert [d.label for d in single] == [d.label for d in dets]
        for a, b in zip(single, dets, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            np.testing.assert_allclose(a.box.as_list(), b.box.as_list(), atol=0.05)
        assert all(d.label in FURNITURE_CLASSES for d in dets)
