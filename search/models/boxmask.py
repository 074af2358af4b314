"""A box-prompted mask model on EfficientNet-Lite0: given a photo and boxes, each object's pixels.

The crop is the embedder's kind: the box grown by `MARGIN` of its size per side, resized
keeping its aspect into a `SIZE` square, centred, padded with white. Lite0's stem and blocks
0-7 stay frozen at their ImageNet weights (the embedder's own), so they can be shared with the
embedding; blocks 8-15 are fine-tuned (BatchNorm frozen) and a small FPN decoder over strides
4, 8, 16 and 32, with the prompt box as an extra input, gives 56×56 mask logits over the
square. Trained by `roomlens train masks` (`search/models/boxmask_train.py`); the head's
weights (blocks 8-15 and the decoder) are `data/models/box-mask-lite0.pt`, checked against
the sha256 on their card (data/models/README.md).
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from torch import nn

from search.crops import crop_rect
from search.errors import ModelUnavailable
from search.masks import box_mask
from search.models.device import set_torch_threads
from search.models.efficientnet import (
    LITE_SPECS,
    ONNX_OPSET,
    build_model,
    square_geometry,
    weights_file,
)
from search.models.ort import cpu_session
from search.models.weights import file_sha256
from search.types import BoolMask, Box

logger = logging.getLogger(__name__)

SIZE = 224
MARGIN = 0.1
MEAN, STD = 127.0, 128.0  # Lite0's normalisation
THRESHOLD = 0.3  # 4-fold: best of 0.3, 0.4, 0.5 on all four folds (docs/MASKS.md)
WEIGHTS_FILE = "box-mask-lite0.pt"
# sha256 of the committed weights (data/models/README.md); a file that differs is refused
WEIGHTS_SHA256 = "8cdc8348d95bbe39480d3a47a19c6372603d691bae5031ffb9fa363f97362d37"
# The committed int8 copy of the network with these weights (`roomlens quantize`,
# search/models/quantize.py) and its sha256 on the card
INT8_FILE = "box-mask-lite0-int8.onnx"
INT8_SHA256 = "05a5f4477fab3e0b778132e4816905e758e943a85ea0e19cbac28cf701c38875"
FROZEN_BLOCKS = 8
TAPS = (2, 4, 7)  # frozen blocks whose outputs feed the decoder: strides 4, 8, 16
CL = torch.channels_last
Array = npt.NDArray[np.float32]


# --- the crop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """Where a box's crop lies in the photo and how it maps into the square."""

    rect: tuple[int, int, int, int]  # left, top, right, bottom in the photo
    geometry: tuple[int, int, int, int]  # new_w, new_h, left, top inside the square


def _resize(values: Array, width: int, height: int) -> Array:
    up = width > values.shape[1] or height > values.shape[0]
    method = cv2.INTER_LINEAR if up else cv2.INTER_AREA
    return np.asarray(cv2.resize(values, (width, height), interpolation=method), dtype=np.float32)


def to_square(
    values: Array, geometry: tuple[int, int, int, int], fill: float, size: int = SIZE
) -> Array:
    """`values` (h, w[, c]) resized into the square as `geometry` says, padded with `fill`."""
    new_w, new_h, left, top = geometry
    out = np.full((size, size, *values.shape[2:]), fill, dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = _resize(values, new_w, new_h).reshape(
        new_h, new_w, *values.shape[2:]
    )
    return out


def prompt_map(box: Box, rect: tuple[int, int, int, int]) -> Array:
    """1 inside the prompt box, 0 elsewhere, over the crop rectangle."""
    left, top, right, bottom = rect
    out = np.zeros((bottom - top, right - left), dtype=np.float32)
    x0, y0 = max(0, round(box.x0 - left)), max(0, round(box.y0 - top))
    x1, y1 = round(min(box.x1, right) - left), round(min(box.y1, bottom) - top)
    out[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = 1.0
    return out


def prepare(
    rgb: npt.NDArray[np.uint8], box: Box, margin: float = MARGIN
) -> tuple[Array, Array, Crop]:
    """The network's inputs for one box: normalised pixels (3, S, S), the prompt map at a
    quarter of the size (S/4, S/4), and where the crop lies."""
    height, width = rgb.shape[:2]
    rect = crop_rect(box, width, height, margin)
    left, top, right, bottom = rect
    geometry = square_geometry(right - left, bottom - top, SIZE)
    pixels = to_square(rgb[top:bottom, left:right].astype(np.float32), geometry, 255.0)
    prompt = to_square(prompt_map(box, rect), geometry, 0.0)
    quarter = _resize(prompt, SIZE // 4, SIZE // 4)
    normalised = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    return np.ascontiguousarray(normalised, dtype=np.float32), quarter, Crop(rect, geometry)


def _over_crop(probability: Array, crop: Crop) -> Array:
    """A probability map over the square, as a map over the crop's rectangle of the photo."""
    new_w, new_h, left, top = crop.geometry
    full = _resize(probability, SIZE, SIZE)[top : top + new_h, left : left + new_w]
    x0, y0, x1, y1 = crop.rect
    return _resize(full, x1 - x0, y1 - y0)


def paste(probability: Array, crop: Crop, shape: tuple[int, int]) -> Array:
    """A probability map over the square, as a map over the whole photo (0 outside the crop)."""
    x0, y0, x1, y1 = crop.rect
    out = np.zeros(shape, dtype=np.float32)
    out[y0:y1, x0:x1] = _over_crop(probability, crop)
    return out


def paste_mask(
    probability: Array, crop: Crop, shape: tuple[int, int], threshold: float
) -> BoolMask:
    """`paste(probability, crop, shape) >= threshold`, without the float map of the whole
    photo (4 bytes a pixel, per box: hundreds of MB for a big photo with many boxes)."""
    x0, y0, x1, y1 = crop.rect
    out = np.full(shape, threshold <= 0.0, dtype=bool)  # what 0 outside the crop gives
    out[y0:y1, x0:x1] = _over_crop(probability, crop) >= threshold
    return out


# --- the network ----------------------------------------------------------------------------


def lite0(pretrained: bool = True) -> EfficientNet:
    """EfficientNet-Lite0 with its ImageNet weights (the embedder's), or seeded random ones."""
    return build_model(0, weights_file(0, LITE_SPECS[0]) if pretrained else None)


class Frozen(nn.Module):
    """Stem and blocks 0-7: the stride-4, 8 and 16 maps the decoder reads."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:FROZEN_BLOCKS])
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.act(self.bn0(self.stem(x)))
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                taps.append(x)
        return tuple(taps)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class MaskHead(nn.Module):
    """Blocks 8-15 (a copy, fine-tuned) and the FPN decoder; the prompt box enters at every
    scale. Inputs: the frozen taps and the prompt map (n, 1, S/4, S/4); output: logits."""

    def __init__(self, net: EfficientNet, channels: int = 64) -> None:
        super().__init__()
        ch = channels
        self.blocks = nn.ModuleList(copy.deepcopy(net._blocks[FROZEN_BLOCKS:]))
        self.box_in = nn.Conv2d(1, 80, 1)
        nn.init.zeros_(self.box_in.weight)
        assert self.box_in.bias is not None
        nn.init.zeros_(self.box_in.bias)
        self.lat32, self.lat16 = nn.Conv2d(320, ch, 1), nn.Conv2d(112, ch, 1)
        self.lat8, self.lat4 = nn.Conv2d(40, ch, 1), nn.Conv2d(24, ch // 2, 1)
        self.m16, self.m8 = _conv_bn_relu(ch + 1, ch), _conv_bn_relu(ch + 1, ch)
        self.red4 = nn.Conv2d(ch, ch // 2, 1)
        self.m4 = nn.Sequential(
            _conv_bn_relu(ch // 2 + 1, ch // 2), _conv_bn_relu(ch // 2, ch // 2)
        )
        self.out = nn.Conv2d(ch // 2, 1, 1)

    def train(self, mode: bool = True) -> MaskHead:
        super().train(mode)
        self.blocks.eval()  # BatchNorm frozen, no drop-connect, in the fine-tuned blocks
        return self

    def forward(
        self, s4: torch.Tensor, s8: torch.Tensor, s16: torch.Tensor, box4: torch.Tensor
    ) -> torch.Tensor:
        # plain average pools (the maps divide exactly): the same values as an adaptive pool,
        # and they export to ONNX
        box16 = F.avg_pool2d(box4, box4.shape[-1] // s16.shape[-1])
        box8 = F.avg_pool2d(box4, box4.shape[-1] // s8.shape[-1])
        x = s16 + self.box_in(box16)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 2:
                deep16 = x
        p = _up(self.lat32(x), deep16)
        p = self.m16(torch.cat([p + self.lat16(deep16), box16], 1))
        p = self.m8(torch.cat([_up(p, s8) + self.lat8(s8), box8], 1))
        p = self.m4(torch.cat([_up(self.red4(p), s4) + self.lat4(s4), box4], 1))
        return self.out(p)[:, 0]


def new_head(net: EfficientNet, seed: int = 0) -> MaskHead:
    """A head whose decoder has seeded random weights (blocks 8-15 are `net`'s)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskHead(net)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


# --- the masker -----------------------------------------------------------------------------


class _Network(nn.Module):
    """The frozen blocks and the head as one module: pixels and prompt in, logits out."""

    def __init__(self, frozen: Frozen, head: MaskHead) -> None:
        super().__init__()
        self.frozen, self.head = frozen, head

    def forward(self, pixels: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(*self.frozen(pixels), prompt)
        return out


def _export(network: _Network) -> bytes:
    """The network as an ONNX model (bytes) with a dynamic batch."""
    buffer = io.BytesIO()
    example = (torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 1, SIZE // 4, SIZE // 4))
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on tracing
        torch.onnx.export(
            network.eval(),
            example,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to files too
            input_names=["pixels", "prompt"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "n"}, "prompt": {0: "n"}, "logits": {0: "n"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class LiteBoxMasker:
    """`BoxMasker`: the pixels of the object in each box, from the Lite0 mask head."""

    def __init__(
        self,
        weights: Path | None,
        *,
        threads: int = 0,
        threshold: float = THRESHOLD,
        expected_sha256: str | None = WEIGHTS_SHA256,
        runtime: str = "onnx",
        int8: Path | None = None,
        int8_card: bool = True,
    ) -> None:
        """`runtime` "onnx" runs the network in onnxruntime (exported at load, ~1 s; 2-3x
        faster than torch eager on the CPU), "torch" in torch eager. `expected_sha256`: what
        `weights` must be (None: the user's own head). `int8`: onnxruntime runs that int8 copy
        of the network instead (checked against its card unless `int8_card` is False), where
        it was made from `weights` (its metadata names the head); otherwise the fp32 network
        runs, with a warning."""
        if int8 is not None and (weights is None or runtime != "onnx"):
            raise ValueError("an int8 copy is of trained weights, run by onnxruntime")
        set_torch_threads(threads)
        net = lite0(pretrained=True)
        self.frozen = Frozen(net).to(memory_format=CL).eval()
        self.head = new_head(net).to(memory_format=CL).eval()
        self.threshold = threshold
        self.name = "lite0-boxmask" if weights is not None else "lite0-boxmask-random"
        head_sha256 = None
        if weights is not None:
            head_sha256 = self._load(weights, expected_sha256)
        self._session = None
        quantized = None if int8 is None else _paired_int8(int8, int8_card, head_sha256)
        self.precision = "fp32" if quantized is None else "int8"
        if quantized is not None:
            self._session = cpu_session(quantized, threads)
        elif runtime == "onnx":
            self._session = cpu_session(self.export(), threads)

    def export(self) -> bytes:
        """The network (frozen blocks and head) as an ONNX model, as onnxruntime runs it."""
        return _export(_Network(self.frozen, self.head))

    def _load(self, path: Path, expected: str | None) -> str:
        """Load the head's weights from `path` (checked against `expected`); their sha256."""
        if not path.is_file():
            raise ModelUnavailable(f"box-mask weights not found: {path} (roomlens train masks)")
        sha256 = file_sha256(path)
        if expected is not None and sha256 != expected:
            raise ModelUnavailable(
                f"{path} is not the box-mask model on its card (sha256); serve a head you "
                "trained with ROOMLENS_MODELS__MASK_WEIGHTS=PATH"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.head.load_state_dict({k: v.float() for k, v in state.items()})
        logger.info("loaded box-mask head from %s", path)
        return sha256

    def probabilities(self, image: Image.Image, boxes: Sequence[Box]) -> list[Array]:
        """Per box, the object's probability over the whole photo."""
        shape = (image.height, image.width)
        return [paste(square, crop, shape) for square, crop in self._run(image, boxes)]

    def _run(self, image: Image.Image, boxes: Sequence[Box]) -> list[tuple[Array, Crop]]:
        """Per box, the probabilities over its square and where its crop lies."""
        if not boxes:
            return []
        rgb = np.asarray(image.convert("RGB"))
        prepared = [prepare(rgb, box) for box in boxes]
        squares = self._squares(
            np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])[:, None]
        )
        return [(square, crop) for square, (_, _, crop) in zip(squares, prepared, strict=True)]

    def _squares(self, pixels: Array, prompts: Array) -> Array:
        """Probabilities over the square of each crop, (n, S/4, S/4)."""
        if self._session is not None:
            (logits,) = self._session.run(None, {"pixels": pixels, "prompt": prompts})
            return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(pixels).contiguous(memory_format=CL)
            p = torch.from_numpy(prompts).contiguous(memory_format=CL)
            return torch.sigmoid(self.head(*self.frozen(x), p)).numpy()

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[BoolMask]:
        """Per box, the object's mask over the whole photo, inside the box (as Mask R-CNN's
        are: the head sees a margin around the box for context, and an instance's mask never
        leaves its box)."""
        shape = (image.height, image.width)
        return [
            paste_mask(square, crop, shape, self.threshold)
            & box_mask(box, image.width, image.height)
            for box, (square, crop) in zip(boxes, self._run(image, boxes), strict=True)
        ]


def _paired_int8(int8: Path, card: bool, head: str | None) -> bytes | None:
    """The int8 network at `int8` when it was made from the head whose sha256 is `head`,
    else None."""
    from search.models.quantize import head_sha256, read_quantized

    model = read_quantized(int8, INT8_SHA256 if card else None)
    if head is not None and head_sha256(model) == head:
        return model
    _warn_unpaired(int8, head)
    return None


@functools.cache
def _warn_unpaired(int8: Path, head: str | None) -> None:
    """Once per process and pair (a process may build the masker more than once)."""
    logger.warning(
        "%s was made from another mask head (sha256 %s): the fp32 network runs instead "
        "(`roomlens quantize --models box-mask` makes a copy of this head)",
        int8,
        head,
    )


def parameter_count(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
