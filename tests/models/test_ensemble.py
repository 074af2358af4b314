"""ConcatEmbedder: the parts' vectors side by side, unit length, cosine = mean of the parts'."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.config import ModelSettings
from search.models.base import Embedder
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
