"""ConcatEmbedder: the parts' vectors side by side, unit length, cosine = mean of the parts'."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.config import ModelSettings
from search.models.base import Embedder, MaskPoolingEmbedder
from search.models.efficientnet import EfficientNetLiteEmbedder
from search.models.ensemble import ConcatEmbedder
from search.models.registry import build_embedder


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]


def test_concatenation_is_unit_and_averages_cosines() -> None:
    a = EfficientNetLiteEmbedder(0, pretrained=False)
    b = EfficientNetLiteEmbedder(0, pretrained=False, pooling="gem")
    both = ConcatEmbedder([a, b])
    assert isinstance(both, Embedder)
    assert both.name == "efficientnet-lite0-random+efficientnet-lite0-gem-random"
    assert both.dim == a.dim + b.dim
    images = _images()
    va, vb, v = a.embed(images), b.embed(images), both.embed(images)
    assert v.shape == (3, both.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v @ v.T, (va @ va.T + vb @ vb.T) / 2, atol=1e-5)
    assert both.embed([]).shape == (0, both.dim)


def test_an_ensemble_needs_two_parts() -> None:
    with pytest.raises(ValueError, match="at least two"):
        ConcatEmbedder([EfficientNetLiteEmbedder(0, pretrained=False)])


def test_registry_builds_plus_joined_names() -> None:
    settings = ModelSettings(embedder="efficientnet-lite0+efficientnet-lite0-gem", threads=1)
    embedder = build_embedder(settings, pretrained=False)
    assert isinstance(embedder, ConcatEmbedder)
    assert [part.name for part in embedder.parts] == [
        "efficientnet-lite0-random",
        "efficientnet-lite0-gem-random",
    ]


def test_mask_pooling_pools_each_part_under_the_mask() -> None:
    """Uniform masks on square photos (no padding to leave out) give the plain vectors; a
    partial mask gives other unit vectors, the ones the parts pool under it; a part that
    cannot pool by mask embeds as usual."""
    a = EfficientNetLiteEmbedder(0, pretrained=False)
    b = EfficientNetLiteEmbedder(0, pretrained=False, pooling="gem")
    both = ConcatEmbedder([a, b])
    assert isinstance(both, MaskPoolingEmbedder)
    images = [im.resize((64, 64)) for im in _images()]
    ones = [np.ones((64, 64), np.float32) for _ in images]
    np.testing.assert_allclose(both.embed_weighted(images, ones), both.embed(images), atol=1e-5)
    left = np.zeros((64, 64), np.float32)
    left[:, :24] = 1.0
    pooled = both.embed_weighted(images, [left] * 3)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    expected = np.concatenate(
        [a.embed_weighted(images, [left] * 3), b.embed_weighted(images, [left] * 3)], axis=1
    ) / np.sqrt(2)
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    assert np.max(np.abs(pooled - both.embed(images))) > 1e-3

    class Plain:
        name, dim = "plain", a.dim

        def embed(self, images: list[Image.Image]) -> np.ndarray:
            return a.embed(images)

    mixed = ConcatEmbedder([b, Plain()])
    out = mixed.embed_weighted(images, [left] * 3)
    np.testing.assert_allclose(out[:, b.dim :] * np.sqrt(2), a.embed(images), atol=1e-5)
