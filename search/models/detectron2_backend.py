"""Instance segmentation with Detectron2 (optional: not on PyPI, installed from source).

detectron2 is imported inside `Detectron2Segmenter.__init__` only, so this module (and
`instances_from_detectron2`, which works on anything shaped like detectron2's `Instances`)
imports without it. Weights: None builds random weights (seeded), "DEFAULT" the model zoo's
checkpoint for the config (downloaded by detectron2 after a short reachability probe), anything
else a local checkpoint file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from search.coco import COCO_CLASSES
from search.crops import largest_or_cutout
from search.errors import ModelUnavailable
from search.models.maskrcnn import (
    ClassNames,
    check_classes,
    make_instance,
    select_detections,
    weights_label,
)
from search.models.weights import PROBE_TIMEOUT_S, probe_url
from search.types import Box, Instance

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "detectron2 is not on PyPI; install it from source (needs torch and a C++ compiler): "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git'"
)
RANDOM_SEED = 0


def instances_from_detectron2(
    instances: Any,
    class_names: ClassNames,
    *,
    score_threshold: float = 0.0,
    classes: frozenset[str] | None = None,
    max_instances: int = 100,
) -> list[Instance]:
    """Instances from a detectron2 `Instances` (or any object of that shape), best first.

    Reads `.image_size` (H, W), `.pred_boxes.tensor` (N, 4) XYXY pixels, `.scores` (N,),
    `.pred_classes` (N,) indices into `class_names` and, when present, `.pred_masks` (N, H, W)
    bool; without masks (or with an empty one) the instance's mask is its box.
    """
    height, width = (int(v) for v in instances.image_size)
    scores = instances.scores.detach().float().cpu().numpy().tolist()
    labels = [
        class_names[i] if 0 <= i < len(class_names) else None
        for i in instances.pred_classes.detach().cpu().numpy().tolist()
    ]
    keep = select_detections(
        scores,
        labels,
        score_threshold=score_threshold,
        classes=classes,
        max_instances=max_instances,
    )
    boxes = instances.pred_boxes.tensor.detach().float().cpu().numpy()
    masks = getattr(instances, "pred_masks", None)
    result = []
    for i in keep:
        mask = None
        if masks is not None:
            mask = np.asarray(masks[i].detach().cpu().numpy(), dtype=bool)
            if mask.shape != (height, width):
                raise ValueError(f"mask shape {mask.shape} is not the image size {(height, width)}")
        box = Box(*(float(v) for v in boxes[i]))
        result.append(make_instance(box, str(labels[i]), float(scores[i]), mask, (width, height)))
    return result


def _checkpoint(config: str, weights: str | None, model_zoo: Any) -> str:
    """cfg.MODEL.WEIGHTS for `weights`: "" (random), the zoo URL (probed first) or a local file."""
    if weights is None:
        return ""
    if weights.upper() == "DEFAULT":
        url = str(model_zoo.get_checkpoint_url(config))
        reason = probe_url(url, PROBE_TIMEOUT_S)
        if reason is not None:
            raise ModelUnavailable(
                f"cannot download detectron2 weights {url} ({reason}); download it and set "
                "ROOMLENS_MODELS__DETECTRON2_WEIGHTS=/path/to/model_final.pkl"
            )
        return url
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"detectron2 weights file not found: {path}")
    return str(path)


class Detectron2Segmenter:
    """Segmenter backed by a detectron2 model-zoo config and its `DefaultPredictor`."""

    def __init__(
        self,
        config: str = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
        weights: str | None = None,
        *,
        score_threshold: float = 0.3,
        classes: frozenset[str] | None = None,
        max_instances: int = 20,
        device: str = "cpu",
    ) -> None:
        try:
            from detectron2 import model_zoo
            from detectron2.config import get_cfg
            from detectron2.data import MetadataCatalog
            from detectron2.engine import DefaultPredictor
        except ImportError as exc:
            raise ModelUnavailable(INSTALL_HINT) from exc
        self.score_threshold = score_threshold
        self.classes = check_classes(classes)
        self.max_instances = max_instances
        cfg = get_cfg()
        try:
            cfg.merge_from_file(model_zoo.get_config_file(config))
        except RuntimeError as exc:
            raise ModelUnavailable(f"unknown detectron2 model-zoo config {config!r}") from exc
        cfg.MODEL.WEIGHTS = _checkpoint(config, weights, model_zoo)
        cfg.MODEL.DEVICE = device
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_threshold
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            self._predictor = DefaultPredictor(cfg)
        datasets = list(cfg.DATASETS.TEST) or ["coco_2017_val"]
        names = MetadataCatalog.get(datasets[0]).get("thing_classes", None)
        self.class_names: ClassNames = tuple(names) if names else COCO_CLASSES
        self.name = f"detectron2:{Path(config).stem}:{weights_label(weights)}"

    def _instances(
        self, image: Image.Image, classes: frozenset[str] | None, limit: int
    ) -> list[Instance]:
        """The predictor's instances over the threshold, of `classes` (None: all), best first."""
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        output = self._predictor(bgr)["instances"].to("cpu")
        return instances_from_detectron2(
            output,
            self.class_names,
            score_threshold=self.score_threshold,
            classes=classes,
            max_instances=limit,
        )

    def segment(self, image: Image.Image) -> list[Instance]:
        """The objects in a room photo, best score first."""
        return self._instances(image, self.classes, self.max_instances)

    def segment_product(self, image: Image.Image) -> list[Instance]:
        """The largest confident instance of any class; else a background-difference mask."""
        return largest_or_cutout(self._instances(image, None, 100), image)
