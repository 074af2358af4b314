"""Several embedders as one: their unit vectors side by side, scaled back to unit length.

Cosine similarity of the concatenation is the mean of the parts' cosines, so models that err
differently vote. Measured on the IKEA dev rooms (docs/QUALITY.md): EfficientNet-Lite0 and
Lite2 with GeM pooling together beat either alone at the same detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from search.models.base import Embedder, MaskPoolingEmbedder
from search.types import FloatMask, Vectors

SEPARATOR = "+"


class ConcatEmbedder:
    """An `Embedder` whose vector is the concatenation of its parts' vectors / sqrt(parts)."""

    def __init__(self, parts: Sequence[Embedder]) -> None:
        if len(parts) < 2:
            raise ValueError("an ensemble needs at least two embedders")
        self.parts = list(parts)
        self.name = SEPARATOR.join(part.name for part in self.parts)
        self.dim = sum(part.dim for part in self.parts)
        self._scale = 1.0 / math.sqrt(len(self.parts))

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        """An (n, dim) float32 array of unit rows."""
        return self.embed_weighted(images, None)

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[FloatMask | None] | None
    ) -> Vectors:
        """`embed` with mask-weighted pooling in the parts that can (`MaskPoolingEmbedder`);
        the others, and every part without `masks`, embed as usual."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        pieces = [
            np.asarray(
                part.embed_weighted(images, masks)
                if masks is not None and isinstance(part, MaskPoolingEmbedder)
                else part.embed(images),
                dtype=np.float32,
            )
            for part in self.parts
        ]
        return (np.concatenate(pieces, axis=1) * self._scale).astype(np.float32, copy=False)
