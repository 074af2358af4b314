"""int8 copies: the committed files are the ones on their cards and give the fp32 vectors
and masks; the quantizer keeps the stated layers fp32 and is deterministic."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from search.config import ModelSettings
from search.errors import ModelUnavailable
from search.models import boxmask, efficientnet
from search.models.efficientnet import EfficientNetLiteEmbedder, build_model
from search.models.own_files import lite_int8_file
from search.models.quantize import early_nodes, node_names, quantize, read_quantized
from search.models.quantize_data import calibration_set
from search.models.registry import build_embedder, build_masker
from search.models.weights import file_sha256
from search.types import Box
from tests.tiny_coco import write_annotations

MODELS = ModelSettings().models_dir
DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ikea"


def _photos() -> list[Image.Image]:
    """Real photos when the IKEA set is beside the checkout, else textured synthetic ones."""
    rooms = sorted((DATASET / "rooms").glob("*.jpg"))[:2] if DATASET.is_dir() else []
    if rooms:
        return [Image.open(p).convert("RGB") for p in rooms]
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return [Image.fromarray(base).resize((320, 240), Image.Resampling.BICUBIC)]


@pytest.mark.parametrize("variant", sorted(efficientnet.INT8_FILES))
def test_committed_int8_embedders_are_on_their_cards(variant: int) -> None:
    found = lite_int8_file(ModelSettings(), variant)
    assert found is not None and not found.own
    path = found.path
    assert file_sha256(path) == efficientnet.INT8_FILES[variant][1]
    assert path.name in (MODELS / "README.md").read_text()


def test_int8_lite0_vectors_and_class_maps_match_fp32() -> None:
    fp32 = EfficientNetLiteEmbedder(0, pooling="gem")
    int8 = EfficientNetLiteEmbedder(0, pooling="gem", int8=MODELS / efficientnet.INT8_FILES[0][0])
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    photos = _photos()
    crops = [p.crop((p.width // 4, p.height // 4, p.width // 2, p.height)) for p in photos]
    cosine = np.sum(fp32.embed(photos + crops) * int8.embed(photos + crops), axis=1)
    assert cosine.min() > 0.98, cosine
    maps32, maps8 = fp32.class_maps(photos[0], 640), int8.class_maps(photos[0], 640)
    assert maps32.shape == maps8.shape
    top32, top8 = maps32.argmax(axis=0), maps8.argmax(axis=0)
    assert np.mean(top32 == top8) > 0.8  # the same class wins at most cells


def test_settings_pick_the_precision() -> None:
    """int8 by default (pretrained weights); fp32 when asked, and for random weights."""
    for settings, pretrained, expected in (
        (ModelSettings(), True, "int8"),
        (ModelSettings(precision="fp32"), True, "fp32"),
        (ModelSettings(), False, "fp32"),
    ):
        embedder = build_embedder(settings, pretrained=pretrained)
        assert {part.precision for part in embedder.parts} == {expected}  # type: ignore[attr-defined]
        masker = build_masker(settings, pretrained=pretrained)
        assert masker is not None and masker.precision == expected  # type: ignore[attr-defined]


def test_int8_needs_the_pretrained_weights_and_the_file_on_the_card(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 copies exist only"):
        EfficientNetLiteEmbedder(0, pretrained=False, int8=MODELS / efficientnet.INT8_FILES[0][0])
    with pytest.raises(ValueError, match="int8 copies exist only"):
        EfficientNetLiteEmbedder(1, int8=MODELS / "lite1.onnx")
    with pytest.raises(ModelUnavailable, match="roomlens quantize"):
        read_quantized(tmp_path / "missing.onnx", "0" * 64)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the committed model")
    with pytest.raises(ModelUnavailable, match="sha256"):
        read_quantized(other, efficientnet.INT8_FILES[0][1])
    with pytest.raises(ValueError, match="of trained weights"):
        boxmask.LiteBoxMasker(None, int8=MODELS / boxmask.INT8_FILE)


def test_int8_box_masks_match_fp32() -> None:
    weights = MODELS / boxmask.WEIGHTS_FILE
    assert file_sha256(MODELS / boxmask.INT8_FILE) == boxmask.INT8_SHA256
    fp32 = boxmask.LiteBoxMasker(weights, threads=1)
    int8 = boxmask.LiteBoxMasker(weights, threads=1, int8=MODELS / boxmask.INT8_FILE)
    photo = _photos()[0]
    w, h = photo.size
    boxes = [Box(w * 0.1, h * 0.3, w * 0.5, h * 0.9), Box(w * 0.45, h * 0.2, w * 0.95, h * 0.7)]
    for a, b in zip(fp32.masks(photo, boxes), int8.masks(photo, boxes), strict=True):
        union = (a | b).sum()
        assert union == 0 or (a & b).sum() / union > 0.9


def _tiny_conv_net() -> bytes:
    """An exported two-layer conv net whose first layer is named like Lite's stem."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self._conv_stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.body = torch.nn.Conv2d(8, 16, 3, padding=1)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(torch.relu(self._conv_stem(pixels))))

    buffer = io.BytesIO()
    torch.onnx.export(
        Net().eval(),
        (torch.zeros(1, 3, 32, 32),),
        buffer,
        input_names=["pixels"],
        output_names=["features"],
        opset_version=efficientnet.ONNX_OPSET,
        dynamo=False,
    )
    return buffer.getvalue()


def test_quantize_keeps_the_named_layers_fp32_and_is_deterministic() -> None:
    model = _tiny_conv_net()
    rng = np.random.default_rng(0)
    feeds = [{"pixels": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    stem = [name for name in node_names(model) if name.startswith("/_conv_stem/")]
    first = quantize(model, feeds, keep_fp32=stem)
    assert first == quantize(model, feeds, keep_fp32=stem)
    graph = onnx.load_from_string(first).graph
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert len(convs) == 2
    stem_conv = next(n for name, n in convs.items() if name.startswith("/_conv_stem/"))
    body_conv = next(n for name, n in convs.items() if not name.startswith("/_conv_stem/"))
    assert not set(stem_conv.input) & quantized_inputs  # fp32: no dequantized inputs
    assert set(body_conv.input) & quantized_inputs


def test_early_nodes_are_the_stem_and_the_blocks_up_to_stride_4() -> None:
    model = build_model(0, None)
    names = ["/_conv_stem/Conv", "/_bn0/X"] + [
        f"/_blocks.{i}/_project_conv/Conv" for i in range(16)
    ]
    kept = early_nodes(model, names)
    assert kept == names[:2] + [f"/_blocks.{i}/_project_conv/Conv" for i in range(3)]


def test_calibration_set_from_coco(tmp_path: Path) -> None:
    annotations = write_annotations(tmp_path)
    first = calibration_set(annotations, photos=2, seed=1)
    assert len(first.scenes) == 2 and first.crops and len(first.prompts) == len(first.crops)
    assert all(c.size[0] > 0 for c in first.crops + first.cutouts)
    rest = calibration_set(annotations, photos=10, seed=1, skip=2)
    assert len(first.scenes) + len(rest.scenes) == len(
        calibration_set(annotations, photos=99).scenes
    )
