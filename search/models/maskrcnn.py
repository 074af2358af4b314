"""Instance segmentation with torchvision's Mask R-CNN v2 (ResNet-50 FPN, COCO).

Weights: None builds seeded random weights (never a download: `weights_backbone=None` too);
"DEFAULT" loads `MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT` (torch hub cache, else a download
after a short reachability probe: an offline machine fails in seconds with `ModelUnavailable`);
anything else is a local .pth state dict. Preprocessing is the weights' own `transforms()` (PIL →
float tensor); resizing and normalisation happen inside the model (`GeneralizedRCNNTransform`).

An image larger than the model's working size is first downscaled to exactly that size (the
scale the model would apply itself), so torchvision pastes its masks at working size; the kept
masks are then upsampled to the full image one at a time. This keeps memory bounded on 12 MP
photos (torchvision would paste up to 100 float masks at full size).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_V2_Weights
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2 as build_maskrcnn_v2

from search.coco import COCO_CLASSES
from search.crops import largest_or_cutout
from search.errors import InvalidInput, ModelUnavailable
from search.models.device import set_torch_threads
from search.models.weights import PROBE_TIMEOUT_S, file_sha256, probe_url
from search.types import BoolMask, Box, Instance

logger = logging.getLogger(__name__)

WEIGHTS = MaskRCNN_ResNet50_FPN_V2_Weights.DEFAULT
RANDOM_SEED = 0
MASK_THRESHOLD = 0.5  # mask probability above which a pixel belongs to the instance

ClassNames = Sequence[str | None]


@dataclass(frozen=True)
class MaskRCNNOptions:
    """Test-time knobs of the torchvision model (the defaults are torchvision's own)."""

    min_size: int = 800  # shorter side the model resizes to
    max_size: int = 1333  # cap on the longer side
    proposals: int = 1000  # RPN proposals kept per image (pre- and post-NMS)
    detections_per_image: int = 100


DEFAULT_OPTIONS = MaskRCNNOptions()


# ----------------------------------------------------------------------------- conversion


def category_names(categories: Sequence[str]) -> tuple[str | None, ...]:
    """torchvision's 91-entry COCO category list as our names; None for background and 'N/A'."""
    known = set(COCO_CLASSES)
    return tuple(name if name in known else None for name in categories)


def check_classes(classes: frozenset[str] | None) -> frozenset[str] | None:
    """`classes` unchanged when every name is a COCO class; InvalidInput otherwise."""
    if classes is not None:
        unknown = sorted(set(classes) - set(COCO_CLASSES))
        if unknown:
            raise InvalidInput(f"not COCO class names: {unknown}")
    return classes


def select_detections(
    scores: Sequence[float],
    labels: Sequence[str | None],
    *,
    score_threshold: float,
    classes: frozenset[str] | None,
    max_instances: int,
) -> list[int]:
    """Indices of the detections to keep (named, over the threshold, in `classes`), best first."""
    keep = [
        i
        for i, (score, label) in enumerate(zip(scores, labels, strict=True))
        if label is not None and score >= score_threshold and (classes is None or label in classes)
    ]
    keep.sort(key=lambda i: -scores[i])
    return keep[:max_instances]


def box_mask(box: Box, width: int, height: int) -> BoolMask:
    """A (height, width) mask that is True on the pixels `box` covers (at least one pixel)."""
    x0 = min(max(math.floor(box.x0), 0), width - 1)
    y0 = min(max(math.floor(box.y0), 0), height - 1)
    x1 = max(min(math.ceil(box.x1), width), x0 + 1)
    y1 = max(min(math.ceil(box.y1), height), y0 + 1)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_instance(
    box: Box, label: str, score: float, mask: BoolMask | None, size: tuple[int, int]
) -> Instance:
    """An Instance with its box clipped to `size` (width, height); no or empty mask → the box."""
    width, height = size
    clipped = box.clip(width, height)
    if mask is None or not mask.any():
        mask = box_mask(clipped, width, height)
    return Instance(box=clipped, label=label, score=score, mask=mask)


def _full_size_mask(probability: torch.Tensor, height: int, width: int) -> BoolMask:
    """A (1, h, w) mask probability map → (height, width) bool mask (bilinear when resized)."""
    if tuple(probability.shape[-2:]) != (height, width):
        probability = F.interpolate(
            probability[None].float(), size=(height, width), mode="bilinear", align_corners=False
        )[0]
    return np.asarray((probability[0] > MASK_THRESHOLD).cpu().numpy(), dtype=bool)


def instances_from_torchvision(
    output: Mapping[str, torch.Tensor],
    image_size: tuple[int, int],
    class_names: ClassNames,
    *,
    score_threshold: float = 0.0,
    classes: frozenset[str] | None = None,
    max_instances: int = 100,
) -> list[Instance]:
    """Instances from one torchvision detection output dict, best first.

    `output` has boxes (N, 4) XYXY, labels (N,), scores (N,) and masks (N, 1, h, w) of
    probabilities, boxes and masks both in the pixels of the tensor the model saw; they are
    scaled to `image_size` = (width, height) of the original image. Labels index `class_names`.
    """
    width, height = image_size
    scores = output["scores"].detach().float().cpu().numpy().tolist()
    labels = [
        class_names[i] if 0 <= i < len(class_names) else None
        for i in output["labels"].detach().cpu().numpy().tolist()
    ]
    keep = select_detections(
        scores,
        labels,
        score_threshold=score_threshold,
        classes=classes,
        max_instances=max_instances,
    )
    if not keep:
        return []
    boxes = output["boxes"].detach().float().cpu().numpy()
    masks = output.get("masks")
    scale = np.ones(4, dtype=np.float64)
    if masks is not None:
        seen_h, seen_w = masks.shape[-2:]
        scale = np.array([width / seen_w, height / seen_h] * 2, dtype=np.float64)
    instances = []
    for i in keep:
        box = Box(*(float(v) for v in boxes[i] * scale))
        mask = None if masks is None else _full_size_mask(masks[i], height, width)
        instances.append(make_instance(box, str(labels[i]), float(scores[i]), mask, image_size))
    return instances


# ----------------------------------------------------------------------------- weights


def weights_label(weights: str | None) -> str:
    """The weights part of the segmenter's name: random, default or file-<sha256[:12]>."""
    if weights is None:
        return "random"
    if weights.upper() == "DEFAULT":
        return "default"
    path = Path(weights).expanduser()
    return f"file-{file_sha256(path)[:12]}" if path.is_file() else f"file-{path.name}"


def cached_default_weights() -> Path:
    """Where torch hub keeps the DEFAULT COCO weights (it may not exist yet)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(WEIGHTS.url)


def _default_state_dict(probe_timeout_s: float) -> dict[str, torch.Tensor]:
    """The COCO weights via torchvision (from the torch hub cache, else downloaded)."""
    cached = cached_default_weights()
    if not cached.is_file():
        reason = probe_url(WEIGHTS.url, probe_timeout_s)
        if reason is not None:
            raise ModelUnavailable(
                f"Mask R-CNN v2 COCO weights are not cached and cannot be downloaded ({reason}); "
                f"download {WEIGHTS.url} and put it at {cached}, or set "
                "ROOMLENS_MODELS__MASKRCNN_WEIGHTS=/path/to/that.pth"
            )
        logger.info("downloading %s to %s", WEIGHTS.url, cached)
    try:
        state: dict[str, torch.Tensor] = WEIGHTS.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelUnavailable(f"cannot get Mask R-CNN v2 COCO weights: {exc}") from exc
    return state


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local .pth (a bare state dict or torchvision's {"model": ...})."""
    if not path.is_file():
        raise ModelUnavailable(f"Mask R-CNN weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelUnavailable(f"cannot read Mask R-CNN weights {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelUnavailable(f"{path} does not hold a state dict")
    return state


def _build_model(
    weights: str | None, options: MaskRCNNOptions, score_threshold: float, probe_timeout_s: float
) -> MaskRCNN:
    """The network in eval mode, seeded random weights then the requested ones loaded on top."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = build_maskrcnn_v2(
            weights=None,
            weights_backbone=None,
            num_classes=len(WEIGHTS.meta["categories"]),
            min_size=options.min_size,
            max_size=options.max_size,
            rpn_pre_nms_top_n_test=options.proposals,
            rpn_post_nms_top_n_test=options.proposals,
            box_detections_per_img=options.detections_per_image,
            box_score_thresh=score_threshold,
        )
    if weights is not None:
        is_default = weights.upper() == "DEFAULT"
        state = (
            _default_state_dict(probe_timeout_s)
            if is_default
            else _file_state_dict(Path(weights).expanduser())
        )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelUnavailable(f"Mask R-CNN v2 weights {weights} do not fit: {exc}") from exc
    return model.eval()


# ----------------------------------------------------------------------------- segmenter


def working_size(width: int, height: int, options: MaskRCNNOptions) -> tuple[int, int]:
    """The (width, height) the model resizes an image to when that is a downscale, else the same."""
    scale = min(options.min_size / min(width, height), options.max_size / max(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


class TorchvisionMaskRCNN:
    """Segmenter backed by torchvision's Mask R-CNN v2 trained on COCO (or random weights)."""

    def __init__(
        self,
        weights: str | None = None,
        *,
        score_threshold: float = 0.3,
        classes: frozenset[str] | None = None,
        max_instances: int = 20,
        device: str = "cpu",
        threads: int = 0,
        options: MaskRCNNOptions | None = None,
        probe_timeout_s: float | None = None,
    ) -> None:
        set_torch_threads(threads)
        self.options = options if options is not None else DEFAULT_OPTIONS
        self.score_threshold = score_threshold
        self.classes = check_classes(classes)
        self.max_instances = max_instances
        self.device = torch.device(device)
        self.class_names = category_names(WEIGHTS.meta["categories"])
        self.name = f"torchvision-maskrcnn-v2:{weights_label(weights)}"
        timeout = PROBE_TIMEOUT_S if probe_timeout_s is None else probe_timeout_s
        self._model = _build_model(weights, self.options, score_threshold, timeout).to(self.device)
        self._transform = WEIGHTS.transforms()

    def predict(self, image: Image.Image) -> dict[str, torch.Tensor]:
        """The raw torchvision output for `image` (at working size: see the module docstring)."""
        rgb = image.convert("RGB")
        size = working_size(rgb.width, rgb.height, self.options)
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        tensor = self._transform(rgb).to(self.device)
        with torch.inference_mode():
            output: dict[str, torch.Tensor] = self._model([tensor])[0]
        return output

    def _instances(
        self, image: Image.Image, classes: frozenset[str] | None, limit: int
    ) -> list[Instance]:
        """Instances over the score threshold, of `classes` (None: all), at most `limit`."""
        return instances_from_torchvision(
            self.predict(image),
            image.size,
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
        found = self._instances(image, None, self.options.detections_per_image)
        return largest_or_cutout(found, image)
