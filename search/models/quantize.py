"""int8 copies of the ONNX networks: static QDQ quantization with calibration photos.

What was measured (docs/PERFORMANCE.md, "int8"), on a CPU with AVX-512 VNNI:
- Activations uint8 and weights int8 (U8S8), per-channel weights, MinMax ranges. This is the
  format onnxruntime's x86 int8 kernels are made for. Signed activations (S8S8) ran only 1.15x
  faster than fp32 with two threads; U8S8 ran about 2x faster.
- Quantizing every layer of EfficientNet-Lite0 gave a mean cosine of 0.988 to the fp32 vectors,
  and 0.91 at worst. Nearly all of that loss comes from the first layers: the stem and the
  blocks at stride 2 and 4, where the maps are large and have few channels. Those stay fp32
  (`early_nodes`), which gives a mean cosine of 0.998 and 0.994 at worst, still 1.6x faster.

A quantized file is made by `roomlens quantize` (roomlens/cli_quantize.py) from the fp32
network, which is exported the same way the runtime exports it. It is committed under
data/models/ with its sha256 on its card. The runtime loads the file instead of exporting
the network, and refuses one whose sha256 differs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from search.errors import ModelUnavailable
from search.models.quantize_data import Calibration
from search.models.weights import file_sha256

log = logging.getLogger(__name__)

Feed = dict[str, npt.NDArray[np.float32]]

FP32_MAX_STRIDE = 4  # EfficientNet-Lite: the stem and the blocks up to this stride stay fp32
RANGE_FLUSH = 16  # calibration runs whose activations are held before their ranges merge
HEAD_KEY = "roomlens.head_sha256"  # int8 mask networks: the head file they were made from


def early_nodes(
    model: EfficientNet,
    names: Iterable[str],
    *,
    stem: Sequence[str] = ("/_conv_stem/", "/_bn0/"),
    blocks: str = "/_blocks.",
) -> list[str]:
    """The nodes of an exported EfficientNet-Lite (`names`, as the exporter names them: the
    `stem` prefixes, then `/_blocks.3/...`) in the stem or in a block whose output stride is
    at most `FP32_MAX_STRIDE`: the layers kept fp32."""
    stride, prefixes = 2, list(stem)
    for i, block in enumerate(model._blocks):
        step = block._block_args.stride
        stride *= step[0] if isinstance(step, list | tuple) else int(step)
        if stride <= FP32_MAX_STRIDE:
            prefixes.append(f"{blocks}{i}/")
    return [name for name in names if name.startswith(tuple(prefixes))]


def quantize(
    model: bytes,
    feeds: Sequence[Feed],
    *,
    keep_fp32: Sequence[str] = (),
    progress: Callable[[Sequence[Feed]], Iterable[Feed]] = iter,
) -> bytes:
    """The int8 (QDQ, U8S8, per-channel) copy of an ONNX model, its activation ranges taken
    from running `feeds` (input name -> array), and the `keep_fp32` nodes left unquantized;
    `progress` wraps the feeds (a bar)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, items: Iterator[Feed]) -> None:
            self.items = items

        def get_next(self) -> Feed | None:
            return next(self.items, None)

    if len(feeds) % RANGE_FLUSH == 0:
        # onnxruntime's calibrator refuses a run whose last flush left nothing to merge
        # ("No data is collected"); one repeated feed changes no MinMax range
        feeds = [*feeds, feeds[-1]]
    with tempfile.TemporaryDirectory(prefix="roomlens-quantize-") as tmp:
        folder = Path(tmp)
        source, prepared, out = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
        source.write_bytes(model)
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            Reader(iter(progress(feeds))),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(keep_fp32),
            extra_options={"CalibMaxIntermediateOutputs": RANGE_FLUSH},
        )
        return out.read_bytes()


def node_names(model: bytes) -> list[str]:
    """Every node name of an ONNX model."""
    import onnx

    return [node.name for node in onnx.load_from_string(model).graph.node]


def read_quantized(path: Path, expected_sha256: str | None) -> bytes:
    """The int8 model at `path`, or ModelUnavailable when it is missing or is not the file
    on its card (`expected_sha256`; None: the user's own file, `models.int8_dir`)."""
    if not path.is_file():
        raise ModelUnavailable(
            f"int8 model not found: {path} (make it with `roomlens quantize`, or set "
            "ROOMLENS_MODELS__PRECISION=fp32)"
        )
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ModelUnavailable(
            f"{path} is not the int8 model on its card (sha256); serve your own copies with "
            "ROOMLENS_MODELS__INT8_DIR=DIR (`roomlens quantize --out DIR`)"
        )
    return path.read_bytes()


def head_sha256(model: bytes) -> str | None:
    """The sha256 of the mask head an int8 mask network was made from (its metadata)."""
    import onnx

    props = onnx.load_from_string(model).metadata_props
    return next((p.value for p in props if p.key == HEAD_KEY), None)


def _with_head_sha256(model: bytes, sha256: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = HEAD_KEY, sha256
    return bytes(proto.SerializeToString())


def quantize_lite(
    variant: int,
    calibration: Calibration,
    *,
    long_side: int,
    progress: bool = True,
) -> bytes:
    """The int8 copy of the pretrained EfficientNet-Lite `variant`'s feature extractor,
    calibrated on the crops and cut-outs (and, for Lite0, which also makes the lamp class
    maps, on the whole photos at `long_side`)."""
    from search.models.efficientnet import (
        LITE_SPECS,
        EfficientNetLiteEmbedder,
        _export_features,
    )

    embedder = EfficientNetLiteEmbedder(variant, runtime="torch")  # preprocessing, weights
    fp32 = _export_features(embedder._model, LITE_SPECS[variant].resolution)
    images = calibration.crops + calibration.cutouts
    feeds: list[Feed] = [{"pixels": embedder.pixels([image])} for image in images]
    if variant == 0:
        feeds += [{"pixels": embedder.map_pixels(s, long_side)} for s in calibration.scenes]
    keep = early_nodes(embedder._model, node_names(fp32))
    return quantize(fp32, feeds, keep_fp32=keep, progress=_bar(f"lite{variant}", progress))


def quantize_mask_head(
    calibration: Calibration,
    weights: Path,
    *,
    card_sha256: str | None,
    progress: bool = True,
) -> bytes:
    """The int8 copy of the box-mask network with the head `weights` (checked against
    `card_sha256`; None: the user's own), calibrated on the calibration photos' boxes, with
    the head file's sha256 in its metadata (`head_sha256`): the masker pairs a copy only with
    the head it was made from. Its frozen stem and blocks up to stride 4 stay fp32, as in the
    embedders (the decoder at stride 4 was measured too: quantizing it costs no IoU)."""
    from search.models.boxmask import LiteBoxMasker, lite0, prepare

    masker = LiteBoxMasker(weights, runtime="torch", expected_sha256=card_sha256)
    fp32 = masker.export()
    feeds: list[Feed] = []
    for scene, box in calibration.prompts:
        pixels, prompt, _ = prepare(np.asarray(calibration.scenes[scene]), box)
        feeds.append({"pixels": pixels[None], "prompt": prompt[None, None]})
    keep = early_nodes(
        lite0(pretrained=False),
        node_names(fp32),
        stem=("/frozen/stem/", "/frozen/bn0/", "/frozen/act"),
        blocks="/frozen/blocks.",
    )
    made = quantize(fp32, feeds, keep_fp32=keep, progress=_bar("box-mask", progress))
    return _with_head_sha256(made, file_sha256(weights))


def _bar(name: str, show: bool) -> Callable[[Sequence[Feed]], Iterable[Feed]]:
    from tqdm import tqdm

    return lambda feeds: tqdm(feeds, desc=f"calibrate {name}", disable=not show)


def cosine_to_fp32(
    variant: int, int8: Path, images: Sequence[Image.Image]
) -> npt.NDArray[np.float32]:
    """Per image, the cosine between the int8 model's GeM vector and the fp32 one's."""
    from search.models.efficientnet import EfficientNetLiteEmbedder

    fp32 = EfficientNetLiteEmbedder(variant, pooling="gem", runtime="onnx")
    quantized = EfficientNetLiteEmbedder(
        variant, pooling="gem", runtime="onnx", int8=int8, int8_card=False
    )
    return np.sum(fp32.embed(images) * quantized.embed(images), axis=1)
