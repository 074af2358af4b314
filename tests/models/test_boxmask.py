"""The box-prompted mask model: random-weight builds (shapes, dtypes, determinism, masks only
inside the crop), the crop geometry, and a few training steps on tiny data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.evaluation.masks import load_ground_truth
from search.masks import box_mask
from search.models.base import BoxMasker
from search.models.boxmask import SIZE, LiteBoxMasker, crop_rect, paste, paste_mask, prepare
from search.models.boxmask_train import (
    TrainOptions,
    build_features,
    save_head,
    train_head,
)
from search.models.weights import file_sha256
from search.types import Box, Instance
from tests.tiny_coco import write_annotations

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def random_masker() -> LiteBoxMasker:
    return LiteBoxMasker(None, threads=1)


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8))


def test_random_masker_shapes_dtypes_and_determinism(random_masker: LiteBoxMasker) -> None:
    assert isinstance(random_masker, BoxMasker)
    assert random_masker.name == "lite0-boxmask-random"
    photo = _photo()
    boxes = [Box(10, 5, 60, 70), Box(80, 20, 139, 89), Box(0, 0, 1, 1)]
    probabilities = random_masker.probabilities(photo, boxes)
    masks = random_masker.masks(photo, boxes)
    assert len(masks) == 3 and random_masker.masks(photo, []) == []
    for box, prob, mask in zip(boxes, probabilities, masks, strict=True):
        assert prob.shape == mask.shape == (90, 140)
        assert prob.dtype == np.float32 and mask.dtype == np.bool_
        assert prob.min() >= 0.0 and prob.max() <= 1.0
        x0, y0, x1, y1 = crop_rect(box, 140, 90)
        outside = np.ones_like(mask)
        outside[y0:y1, x0:x1] = False
        assert not prob[outside].any(), "the head sees only the crop"
        x0, y0, x1, y1 = box.pixels(140, 90)
        outside[:] = True
        outside[y0:y1, x0:x1] = False
        assert not mask[outside].any(), "a mask never leaves its box"
    again = LiteBoxMasker(None, threads=1).probabilities(photo, boxes)
    assert all(np.array_equal(a, b) for a, b in zip(probabilities, again, strict=True))


def test_masks_are_the_thresholded_probabilities_inside_each_box(
    random_masker: LiteBoxMasker,
) -> None:
    """The masks come box by box, without a float map of the whole photo per box, and are
    what thresholding those maps gives."""
    photo = _photo(1)
    boxes = [Box(10, 5, 60, 70), Box(80, 20, 139, 89), Box(30, 30, 120, 80)]
    probabilities = random_masker.probabilities(photo, boxes)
    for threshold in (random_masker.threshold, 0.5):
        masker = LiteBoxMasker(None, threads=1, threshold=threshold)
        for box, prob, mask in zip(boxes, probabilities, masker.masks(photo, boxes), strict=True):
            want = (prob >= threshold) & box_mask(box, photo.width, photo.height)
            assert np.array_equal(mask, want)


def test_paste_mask_is_paste_thresholded() -> None:
    rng = np.random.default_rng(0)
    rgb = np.zeros((90, 140, 3), dtype=np.uint8)
    square = rng.random((SIZE // 4, SIZE // 4), dtype=np.float32)
    for box in (Box(20, 10, 100, 50), Box(0, 0, 140, 90), Box(130, 80, 140, 90)):
        _, _, crop = prepare(rgb, box)
        full = paste(square, crop, (90, 140))
        for threshold in (0.0, 0.3, 0.7, 1.1):
            mask = paste_mask(square, crop, (90, 140), threshold)
            assert mask.dtype == np.bool_ and np.array_equal(mask, full >= threshold)


def test_crop_geometry_round_trips() -> None:
    rgb = np.zeros((90, 140, 3), dtype=np.uint8)
    box = Box(20, 10, 100, 50)
    pixels, prompt, crop = prepare(rgb, box)
    assert pixels.shape == (3, SIZE, SIZE) and prompt.shape == (SIZE // 4, SIZE // 4)
    assert crop.rect == (12, 6, 108, 54)  # the box grown by 10% of its size per side
    square = np.zeros((SIZE // 4, SIZE // 4), dtype=np.float32)
    square[:] = 1.0
    full = paste(square, crop, (90, 140))
    ys, xs = np.nonzero(full > 0.5)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == crop.rect[0::2] + crop.rect[
        1::2
    ] or ((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == crop.rect)


def test_a_few_training_steps_lower_the_loss_and_the_weights_load(
    tmp_path: Path, random_masker: LiteBoxMasker
) -> None:
    _, images = load_ground_truth(write_annotations(tmp_path))
    options = TrainOptions(aug=4, batch=4, seed=1, progress=False)
    features = build_features(random_masker.frozen, images, options)
    assert len(features.owner) == 3 * 4 and features.s4.dtype == torch.float16
    result = train_head(features, replace(options, lr_decoder=5e-3), steps=30)
    assert len(result.losses) == 30
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5])
    path = tmp_path / "head.pt"
    save_head(result.head, path)
    trained = LiteBoxMasker(path, threads=1, expected_sha256=None)
    assert trained.name == "lite0-boxmask"
    photo = Image.open(images[0].path)
    masks = trained.masks(photo, [inst.box for inst in images[0].instances])
    assert [m.shape for m in masks] == [(80, 120), (80, 120)]
    with pytest.raises(Exception, match="sha256"):
        LiteBoxMasker(path, threads=1, expected_sha256="0" * 64)


def test_onnxruntime_and_torch_give_the_same_probabilities(random_masker: LiteBoxMasker) -> None:
    eager = LiteBoxMasker(None, threads=1, runtime="torch")
    assert random_masker._session is not None and eager._session is None
    photo, boxes = _photo(3), [Box(5, 5, 70, 80), Box(60, 10, 130, 60)]
    for a, b in zip(
        random_masker.probabilities(photo, boxes), eager.probabilities(photo, boxes), strict=True
    ):
        assert np.abs(a - b).max() < 1e-4


def test_train_masks_reports_k_fold_figures_and_writes_the_head(tmp_path: Path) -> None:
    from search.models.boxmask_train import train_masks

    out = tmp_path / "models" / "head.pt"
    options = TrainOptions(epochs=1, aug=2, batch=2, progress=False)
    report = train_masks(write_annotations(tmp_path), out, folds=2, options=options)
    kfold = report["kfold"]
    assert isinstance(kfold, dict) and kfold["instances"] == 3
    assert kfold["furniture_instances"] == 2  # the chair and the couch; the person is not
    assert 0.0 <= kfold["all_miou"] <= 1.0 and 0.7 < kfold["box_all_miou"] <= 1.0
    assert out.is_file() and LiteBoxMasker(out, threads=1, expected_sha256=None).name


def test_k_fold_whole_photo_figures_segment_each_photo_with_its_folds_head(
    tmp_path: Path,
) -> None:
    """Every photo is segmented once, by a segmenter masking with the head of the fold that
    never saw it, and all folds are scored together."""
    from search.models.boxmask_train import train_masks

    seen: list[tuple[str, int]] = []

    class OneChair:
        """Masks a fixed box with the fold's head and calls it a chair."""

        name = "one-chair"

        def __init__(self, head: Path) -> None:
            self.masker = LiteBoxMasker(head, threads=1, expected_sha256=None)
            self.head = file_sha256(head)

        def segment(self, image: Image.Image) -> list[Instance]:
            seen.append((self.head, image.width))
            box = Box(10, 20, 50, 60)
            (mask,) = self.masker.masks(image, [box])
            return [Instance(box, "chair", 0.9, mask)]

        def segment_product(self, image: Image.Image) -> list[Instance]:
            return self.segment(image)

    options = TrainOptions(epochs=1, aug=2, batch=2, progress=False)
    report = train_masks(
        write_annotations(tmp_path),
        tmp_path / "head.pt",
        folds=2,
        options=options,
        segmenter_for=OneChair,
    )
    whole = report["kfold_whole_photo"]
    assert isinstance(whole, dict) and whole["masks"] == 2  # one per photo, both folds
    assert 0.0 <= whole["mask_ap"] <= 1.0 and 0.0 <= whole["box_ap"] <= 1.0
    assert len(seen) == 2 and seen[0][0] != seen[1][0]  # two photos, two folds' heads


def test_features_with_occluders_and_composites(
    tmp_path: Path, random_masker: LiteBoxMasker
) -> None:
    """Copy-paste and catalog composites add crops (aug // 4 per composite) whose targets
    stay in [0, 1], and the real crops are still there."""
    from search.models.boxmask_augment import Cutout

    _, images = load_ground_truth(write_annotations(tmp_path))
    piece = np.zeros((30, 20, 3), dtype=np.uint8)
    cutouts = [Cutout(piece, np.ones((30, 20), dtype=bool))]
    options = TrainOptions(aug=4, batch=4, seed=1, paste=1.0, composites=2, progress=False)
    features = build_features(random_masker.frozen, images, options, cutouts)
    assert len(features.owner) == 3 * 4 + 2 * 1
    assert len(set(features.owner)) == 5
    assert float(features.target.min()) >= 0.0 and float(features.target.max()) <= 1.0
    plain = build_features(random_masker.frozen, images, replace(options, composites=0))
    assert len(plain.owner) == 3 * 4
