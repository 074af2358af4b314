"""torchvision Mask R-CNN v2: random weights through the registry, output conversion, weights.

A random-weight Mask R-CNN returns junk detections with high scores, which is what the shape
tests need. The registry-built model runs with small test-time options (160 px, 64 proposals):
on CPU the defaults (800 px, 1000 proposals) take ~15 s per image.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from search.coco import COCO_CLASSES, FURNITURE_CLASSES
from search.config import ModelSettings
from search.errors import InvalidInput, ModelUnavailable
from search.models import maskrcnn
from search.models.base import Segmenter
from search.models.maskrcnn import (
    WEIGHTS,
    MaskRCNNOptions,
    TorchvisionMaskRCNN,
    category_names,
    instances_from_torchvision,
    working_size,
)
from search.models.registry import build_segmenter
from search.models.weights import file_sha256
from search.types import Instance

SMALL = MaskRCNNOptions(min_size=160, max_size=320, proposals=64, detections_per_image=16)
WIDTH, HEIGHT = 160, 120
CLASS_NAMES = category_names(WEIGHTS.meta["categories"])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _settings(**overrides: object) -> ModelSettings:
    values: dict[str, object] = {
        "profile": "clip",
        "threads": 1,
        "detector_score": 0.0,
        "detector_classes": "all",
        "max_instances": 5,
    }
    return ModelSettings.model_validate({**values, **overrides})


def _build(settings: ModelSettings) -> TorchvisionMaskRCNN:
    """The registry's segmenter, built with the small test-time options."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maskrcnn, "DEFAULT_OPTIONS", SMALL)
        segmenter = build_segmenter(settings, pretrained=False)
    assert isinstance(segmenter, TorchvisionMaskRCNN)
    return segmenter


def _photo() -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    )


@pytest.fixture(scope="module")
def segmenter() -> TorchvisionMaskRCNN:
    return _build(_settings())


@pytest.fixture(scope="module")
def output(segmenter: TorchvisionMaskRCNN) -> dict[str, torch.Tensor]:
    """One real forward pass of the random model on a 160x120 noise image."""
    return segmenter.predict(_photo())


def _check_instances(instances: list[Instance], width: int, height: int) -> None:
    """Boxes inside the image, full-size non-empty bool masks, COCO labels, best first."""
    scores = [instance.score for instance in instances]
    assert scores == sorted(scores, reverse=True)
    for instance in instances:
        box = instance.box
        assert 0 <= box.x0 <= box.x1 <= width and 0 <= box.y0 <= box.y1 <= height
        assert instance.mask.shape == (height, width) and instance.mask.dtype == np.bool_
        assert instance.mask.any()
        assert instance.label in COCO_CLASSES
        assert 0.0 <= instance.score <= 1.0


def test_registry_builds_random_maskrcnn(segmenter: TorchvisionMaskRCNN) -> None:
    assert isinstance(segmenter, Segmenter)
    assert segmenter.name == "torchvision-maskrcnn-v2:random"
    assert segmenter.options == SMALL
    assert segmenter.max_instances == 5 and segmenter.classes is None


def test_settings_reach_the_model() -> None:
    segmenter = _build(_settings(detector_score=0.4, detector_classes="furniture"))
    assert segmenter.classes == FURNITURE_CLASSES
    assert segmenter._model.roi_heads.score_thresh == 0.4
    assert segmenter._model.transform.min_size == (SMALL.min_size,)
    assert segmenter._model.rpn.post_nms_top_n() == SMALL.proposals


def test_raw_output_format(output: dict[str, torch.Tensor]) -> None:
    n = output["boxes"].shape[0]
    assert 0 < n <= SMALL.detections_per_image
    assert output["masks"].shape == (n, 1, HEIGHT, WIDTH)
    assert output["labels"].shape == output["scores"].shape == (n,)


def test_segment_gives_full_size_instances(segmenter: TorchvisionMaskRCNN) -> None:
    instances = segmenter.segment(_photo())
    assert 0 < len(instances) <= 5
    _check_instances(instances, WIDTH, HEIGHT)


def test_two_builds_are_identical(
    segmenter: TorchvisionMaskRCNN, output: dict[str, torch.Tensor]
) -> None:
    again = _build(_settings())
    first, second = segmenter._model.state_dict(), again._model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    repeated = again.predict(_photo())
    assert all(torch.equal(output[key], repeated[key]) for key in output)


def test_conversion_of_a_real_output(output: dict[str, torch.Tensor]) -> None:
    every = instances_from_torchvision(output, (WIDTH, HEIGHT), CLASS_NAMES)
    named = [CLASS_NAMES[label] for label in output["labels"].tolist()]
    assert len(every) == sum(name is not None for name in named) > 0
    _check_instances(every, WIDTH, HEIGHT)
    top = every[0].label
    only_top = instances_from_torchvision(
        output, (WIDTH, HEIGHT), CLASS_NAMES, classes=frozenset({top})
    )
    assert only_top and {instance.label for instance in only_top} == {top}
    best_two = instances_from_torchvision(output, (WIDTH, HEIGHT), CLASS_NAMES, max_instances=2)
    assert [instance.score for instance in best_two] == [instance.score for instance in every[:2]]
    cut = every[len(every) // 2].score
    above = instances_from_torchvision(output, (WIDTH, HEIGHT), CLASS_NAMES, score_threshold=cut)
    assert all(instance.score >= cut for instance in above)


def test_conversion_scales_a_working_size_output(output: dict[str, torch.Tensor]) -> None:
    """Boxes and masks computed on a downscaled image come back at the full image's size."""
    small = instances_from_torchvision(output, (WIDTH, HEIGHT), CLASS_NAMES)
    big = instances_from_torchvision(output, (4 * WIDTH, 4 * HEIGHT), CLASS_NAMES)
    _check_instances(big, 4 * WIDTH, 4 * HEIGHT)
    for a, b in zip(small, big, strict=True):
        np.testing.assert_allclose(
            np.array(b.box.as_list()), 4 * np.array(a.box.as_list()), rtol=1e-5
        )
        coarse = b.mask.reshape(HEIGHT, 4, WIDTH, 4).mean(axis=(1, 3)) > 0.5
        assert (coarse == a.mask).mean() > 0.95  # bilinear upsampling of the same map


def test_conversion_labels_thresholds_and_empty_masks() -> None:
    masks = torch.zeros(3, 1, 10, 20)
    masks[0, 0, 2:5, 3:9] = 0.9  # a 3x6 blob
    output = {
        "boxes": torch.tensor([[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 30.0, 4.0], [1.0, 1.0, 2.0, 2.0]]),
        "labels": torch.tensor([62, 12, 0]),  # chair, 'N/A', background
        "scores": torch.tensor([0.8, 0.95, 0.99]),
        "masks": masks,
    }
    (chair,) = instances_from_torchvision(output, (20, 10), CLASS_NAMES)
    assert chair.label == "chair" and chair.score == pytest.approx(0.8)
    assert chair.mask.sum() == 18 and chair.mask[2:5, 3:9].all()
    output["masks"] = torch.zeros(3, 1, 10, 20)
    (empty,) = instances_from_torchvision(output, (20, 10), CLASS_NAMES)
    assert empty.mask[2:5, 3:9].all() and empty.mask.sum() == 18  # no mask: the box
    output["labels"] = torch.tensor([62, 62, 62])
    clipped = instances_from_torchvision(output, (20, 10), CLASS_NAMES)
    assert [round(i.score, 2) for i in clipped] == [0.99, 0.95, 0.8]
    assert clipped[1].box.x1 == 20.0  # clipped to the image
    assert instances_from_torchvision(output, (20, 10), CLASS_NAMES, score_threshold=1.0) == []


def test_category_names_map_to_coco() -> None:
    assert len(CLASS_NAMES) == 91
    assert CLASS_NAMES[0] is None and CLASS_NAMES[12] is None  # background, N/A
    assert [name for name in CLASS_NAMES if name is not None] == list(COCO_CLASSES)
    with pytest.raises(InvalidInput, match="sofa"):
        TorchvisionMaskRCNN(classes=frozenset({"sofa"}), options=SMALL)


def test_working_size() -> None:
    default = MaskRCNNOptions()
    assert working_size(4000, 3000, default) == (1067, 800)
    assert working_size(3000, 400, default) == (1333, 178)
    assert working_size(640, 480, default) == (640, 480)  # upscaling is left to the model


def test_segment_product_largest_else_background_difference(
    segmenter: TorchvisionMaskRCNN,
    output: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photo = _photo()
    (product,) = segmenter.segment_product(photo)
    found = instances_from_torchvision(output, photo.size, CLASS_NAMES)
    assert product.mask_area == max(instance.mask_area for instance in found)

    catalog = Image.new("RGB", (WIDTH, HEIGHT), "white")
    ImageDraw.Draw(catalog).rectangle((40, 30, 99, 79), fill=(90, 60, 30))
    nothing = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
        "masks": torch.zeros(0, 1, HEIGHT, WIDTH),
    }
    monkeypatch.setattr(segmenter, "predict", lambda image: nothing)
    (fallback,) = segmenter.segment_product(catalog)
    assert fallback.label == "product"
    assert fallback.box.as_list() == [40.0, 30.0, 100.0, 80.0]


def test_local_state_dict_loads(tmp_path: Path) -> None:
    source = TorchvisionMaskRCNN(None, options=SMALL, threads=1)
    state = source._model.state_dict()
    state["roi_heads.box_predictor.cls_score.bias"] += 1.0  # off the seeded init
    path = tmp_path / "maskrcnn.pth"
    torch.save({"model": state}, path)  # torchvision's training-script layout

    loaded = build_segmenter(_settings(maskrcnn_weights=str(path)))
    assert isinstance(loaded, TorchvisionMaskRCNN)
    assert loaded.name == f"torchvision-maskrcnn-v2:file-{file_sha256(path)[:12]}"
    loaded_state = loaded._model.state_dict()
    assert all(torch.equal(state[key], loaded_state[key]) for key in state)

    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelUnavailable, match="do not fit"):
        TorchvisionMaskRCNN(str(tmp_path / "wrong.pth"), options=SMALL)
    with pytest.raises(ModelUnavailable, match="not found"):
        TorchvisionMaskRCNN(str(tmp_path / "missing.pth"), options=SMALL)


def test_default_weights_offline_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in the torch hub cache and the host refuses: ModelUnavailable in seconds."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    unreachable = SimpleNamespace(
        url="http://127.0.0.1:9/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        meta=WEIGHTS.meta,
        transforms=WEIGHTS.transforms,
    )
    monkeypatch.setattr(maskrcnn, "WEIGHTS", unreachable)
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        build_segmenter(_settings(maskrcnn_weights="DEFAULT"))
    assert time.monotonic() - start < 10
    expected = tmp_path / "checkpoints" / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    assert f"put it at {expected}" in str(caught.value)
