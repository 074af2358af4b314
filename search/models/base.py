"""The Protocols at the heavy seams: every segmenter and embedder backend implements one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from search.types import BoolMask, Box, Detection, FloatMask, Instance, Vectors


@runtime_checkable
class Detector(Protocol):
    """Finds labelled boxes in an image."""

    name: str

    def detect(self, image: Image.Image) -> list[Detection]:
        """Boxes in pixels of `image`, best first."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Turns an image into instances: box, label, score and a full-size boolean mask."""

    name: str

    def segment(self, image: Image.Image) -> list[Instance]:
        """Every object found in a scene photo (a room)."""
        ...

    def segment_product(self, image: Image.Image) -> list[Instance]:
        """The product in a catalog photo (one item on a plain background)."""
        ...


class EmbedderId(Protocol):
    """What an index records of its embedder: an `Embedder` has it, and so has the
    registry's `EmbedderIdentity`, known without loading any weights."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...


@runtime_checkable
class Embedder(Protocol):
    """Maps images to L2-normalised float32 vectors."""

    name: str  # identity recorded in the index sidecar, e.g. "efficientnet-lite0"
    dim: int

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        """An (n, dim) float32 array, each row of unit L2 norm."""
        ...


@runtime_checkable
class MaskPoolingEmbedder(Embedder, Protocol):
    """An `Embedder` that can also pool its feature map under a soft mask per image, so the
    vector describes the masked object while the network still sees the whole crop."""

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[FloatMask | None] | None
    ) -> Vectors:
        """`embed` with each image's pooling weighted by its mask (image-sized, 0..1; None:
        uniform)."""
        ...


@runtime_checkable
class BoxMasker(Protocol):
    """Box-prompted instance masks: the pixels of the object inside each box."""

    name: str

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[BoolMask]:
        """One (height, width) bool mask of the whole image per box, in the boxes' order."""
        ...
