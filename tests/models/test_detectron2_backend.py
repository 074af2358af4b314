"""Detectron2 backend: the Instances adapter on stand-ins, and the segmenter's wiring.

detectron2 cannot be installed here (not on PyPI), so `Detectron2Segmenter` is exercised against
a small stand-in package with detectron2's API shape (get_cfg, model_zoo, DefaultPredictor,
MetadataCatalog), and its absence must give ModelUnavailable with the install command.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from search.coco import COCO_CLASSES
from search.config import ModelSettings
from search.errors import InvalidInput, ModelUnavailable
from search.models.base import Segmenter
from search.models.detectron2_backend import (
    INSTALL_HINT,
    Detectron2Segmenter,
    instances_from_detectron2,
)
from search.models.registry import build_segmenter

H, W = 40, 60
CHAIR, COUCH, PERSON = COCO_CLASSES.index("chair"), COCO_CLASSES.index("couch"), 0
has_detectron2 = importlib.util.find_spec("detectron2") is not None


def _instances(with_masks: bool = True) -> SimpleNamespace:
    """Four detections shaped like detectron2's Instances (on the CPU)."""
    masks = torch.zeros(4, H, W, dtype=torch.bool)
    masks[0, 10:20, 5:15] = True
    masks[2, 0:5, 0:5] = True  # masks[1] and masks[3] stay empty
    fields: dict[str, Any] = {
        "image_size": (H, W),
        "pred_boxes": SimpleNamespace(
            tensor=torch.tensor(
                [[5.0, 10.0, 15.0, 20.0], [-4.0, 30.0, 70.0, 50.0], [0, 0, 5, 5], [1, 1, 3, 3]]
            )
        ),
        "scores": torch.tensor([0.6, 0.9, 0.2, 0.95]),
        "pred_classes": torch.tensor([CHAIR, COUCH, PERSON, 99]),  # 99: not a class
    }
    if with_masks:
        fields["pred_masks"] = masks
    return SimpleNamespace(**fields)


def test_adapter_orders_filters_and_converts() -> None:
    found = instances_from_detectron2(_instances(), COCO_CLASSES)
    assert [i.label for i in found] == ["couch", "chair", "person"]  # class 99 dropped
    assert [round(i.score, 2) for i in found] == [0.9, 0.6, 0.2]
    for instance in found:
        assert instance.mask.shape == (H, W) and instance.mask.dtype == np.bool_
        assert 0 <= instance.box.x0 <= instance.box.x1 <= W
        assert 0 <= instance.box.y0 <= instance.box.y1 <= H
    couch, chair, _ = found
    assert chair.mask.sum() == 100 and chair.mask[10:20, 5:15].all()
    assert couch.box.as_list() == [0.0, 30.0, 60.0, 40.0]  # clipped to the image
    assert couch.mask.sum() == 60 * 10  # an empty mask becomes the (clipped) box


def test_adapter_threshold_classes_and_limit() -> None:
    found = instances_from_detectron2(
        _instances(), COCO_CLASSES, score_threshold=0.5, classes=frozenset({"chair", "person"})
    )
    assert [i.label for i in found] == ["chair"]
    assert len(instances_from_detectron2(_instances(), COCO_CLASSES, max_instances=2)) == 2
    assert instances_from_detectron2(_instances(), COCO_CLASSES, score_threshold=0.99) == []


def test_adapter_without_masks_uses_boxes() -> None:
    found = instances_from_detectron2(_instances(with_masks=False), COCO_CLASSES)
    chair = next(i for i in found if i.label == "chair")
    assert chair.mask.sum() == 100 and chair.mask[10:20, 5:15].all()


def test_adapter_rejects_masks_of_another_size() -> None:
    wrong = _instances()
    wrong.pred_masks = torch.zeros(4, H + 1, W, dtype=torch.bool)
    with pytest.raises(ValueError, match="mask shape"):
        instances_from_detectron2(wrong, COCO_CLASSES)


@pytest.mark.skipif(has_detectron2, reason="detectron2 is installed")
def test_missing_detectron2_says_how_to_install() -> None:
    with pytest.raises(ModelUnavailable) as caught:
        Detectron2Segmenter()
    assert "git+https://github.com/facebookresearch/detectron2.git" in str(caught.value)
    with pytest.raises(ModelUnavailable, match="not on PyPI"):
        build_segmenter(ModelSettings(segmenter="detectron2"), pretrained=False)
    assert "pip install" in INSTALL_HINT


# ----------------------------------------------------------------------------- stand-in package


class _Predictor:
    """Records its config and inputs; answers with the stand-in instances."""

    last: _Predictor | None = None

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.inputs: list[np.ndarray] = []
        _Predictor.last = self

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        self.inputs.append(image)
        instances = _instances()
        instances.to = lambda device: instances
        return {"instances": instances}


def _config() -> SimpleNamespace:
    cfg = SimpleNamespace(
        MODEL=SimpleNamespace(WEIGHTS=None, DEVICE=None, ROI_HEADS=SimpleNamespace()),
        DATASETS=SimpleNamespace(TEST=("coco_2017_val",)),
        merged=None,
    )
    cfg.merge_from_file = lambda path: setattr(cfg, "merged", path)
    return cfg


def _zoo_config(name: str) -> str:
    if not name.endswith(".yaml"):
        raise RuntimeError(f"{name} not available in Model Zoo!")
    return f"/zoo/configs/{name}"


@pytest.fixture
def fake_detectron2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A `detectron2` package with the four names the segmenter uses."""
    metadata = SimpleNamespace(get=lambda key, default=None: list(COCO_CLASSES))
    parts: dict[str, dict[str, object]] = {
        "detectron2": {},
        "detectron2.model_zoo": {
            "get_config_file": _zoo_config,
            "get_checkpoint_url": lambda name: "http://127.0.0.1:9/model_final_f10217.pkl",
        },
        "detectron2.config": {"get_cfg": _config},
        "detectron2.data": {"MetadataCatalog": SimpleNamespace(get=lambda name: metadata)},
        "detectron2.engine": {"DefaultPredictor": _Predictor},
    }
    for name, attributes in parts.items():
        module = ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["detectron2"].model_zoo = sys.modules["detectron2.model_zoo"]  # type: ignore[attr-defined]
    yield


def test_segmenter_wiring_with_random_weights(fake_detectron2: None) -> None:
    settings = ModelSettings(segmenter="detectron2", detector_score=0.5, max_instances=3)
    segmenter = build_segmenter(settings, pretrained=False)
    assert isinstance(segmenter, Detectron2Segmenter) and isinstance(segmenter, Segmenter)
    assert segmenter.name == "detectron2:mask_rcnn_R_50_FPN_3x:random"
    predictor = _Predictor.last
    assert predictor is not None
    cfg = predictor.cfg
    assert cfg.merged == f"/zoo/configs/{settings.detectron2_config}"
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE in ("cpu", "cuda")
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.5

    image = Image.new("RGB", (W, H), (255, 0, 0))
    found = segmenter.segment(image)
    assert [i.label for i in found] == ["couch", "chair"]  # furniture only, score >= 0.5
    bgr = predictor.inputs[-1]
    assert bgr.shape == (H, W, 3) and tuple(bgr[0, 0]) == (0, 0, 255)  # detectron2 wants BGR
    (product,) = segmenter.segment_product(image)
    assert product.label == "couch"  # the largest mask of any class


def test_segmenter_default_weights_offline_and_bad_config(fake_detectron2: None) -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="DETECTRON2_WEIGHTS"):
        Detectron2Segmenter(weights="DEFAULT")
    assert time.monotonic() - start < 10
    with pytest.raises(ModelUnavailable, match="model-zoo config"):
        Detectron2Segmenter("no/such/config")
    with pytest.raises(ModelUnavailable, match="not found"):
        Detectron2Segmenter(weights="/nonexistent/model_final.pkl")
    with pytest.raises(InvalidInput):
        Detectron2Segmenter(classes=frozenset({"sofa"}))
