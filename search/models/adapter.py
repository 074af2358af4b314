"""A query-side linear adapter: room-crop vectors mapped towards the catalog's studio vectors.

The catalog index keeps the embedder's own vectors; only a query (a crop of a room photo) is
mapped, `normalise(W v)`, with W the identity plus what `search.models.adapter_train` learnt
from catalog products composited into rooms (issue #16). W is full (dim x dim) or residual
low-rank (`I + U Vᵀ`). `AdaptedEmbedder` wraps any `Embedder` and keeps its name and
dimension, so an index built with the plain embedder still matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from search.models.base import Embedder, MaskPoolingEmbedder
from search.types import FloatMask, Vectors

FORMAT = 1


@dataclass(frozen=True)
class LinearAdapter:
    """`v -> normalise(v Wᵀ)` with W = `weight` (full), or W = I + U Vᵀ (`u`, `v`, low rank)."""

    dim: int
    weight: npt.NDArray[np.float32] | None = None
    u: npt.NDArray[np.float32] | None = None
    v: npt.NDArray[np.float32] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        full = self.weight is not None
        low = self.u is not None and self.v is not None
        if full == low:
            raise ValueError("give either weight, or both u and v")
        if self.weight is not None and self.weight.shape != (self.dim, self.dim):
            raise ValueError(f"weight must be {self.dim}x{self.dim}, got {self.weight.shape}")
        if (
            self.u is not None
            and self.v is not None
            and (self.u.shape != self.v.shape or self.u.shape[0] != self.dim)
        ):
            raise ValueError(f"u, v must both be ({self.dim}, r): {self.u.shape}, {self.v.shape}")

    @classmethod
    def identity(cls, dim: int) -> LinearAdapter:
        return cls(dim, weight=np.eye(dim, dtype=np.float32))

    @property
    def rank(self) -> int | None:
        """The low-rank residual's rank; None for a full matrix."""
        return None if self.u is None else int(self.u.shape[1])

    def apply(self, vectors: npt.ArrayLike) -> Vectors:
        """(n, dim) float32 rows mapped and scaled back to unit length."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {x.shape}")
        if self.weight is not None:
            y = x @ self.weight.T
        else:
            assert self.u is not None and self.v is not None
            y = x + (x @ self.v) @ self.u.T
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return (y / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def save(self, path: Path) -> None:
        """A torch file of the matrices and `meta` (written to a temp file, then replaced)."""
        import torch

        state: dict[str, Any] = {"format": FORMAT, "dim": self.dim, "meta": dict(self.meta)}
        for key in ("weight", "u", "v"):
            value = getattr(self, key)
            if value is not None:
                state[key] = torch.from_numpy(np.ascontiguousarray(value))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LinearAdapter:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not an adapter file of format {FORMAT}")
        arrays = {
            k: state[k].numpy().astype(np.float32) for k in ("weight", "u", "v") if k in state
        }
        return cls(int(state["dim"]), meta=dict(state.get("meta", {})), **arrays)


class AdaptedEmbedder:
    """An `Embedder` whose vectors are `inner`'s mapped by `adapter`; same name and dim, so it
    searches the index `inner` built (the catalog side stays unadapted)."""

    def __init__(self, inner: Embedder, adapter: LinearAdapter) -> None:
        if adapter.dim != inner.dim:
            raise ValueError(f"adapter is for dim {adapter.dim}, embedder gives {inner.dim}")
        self.inner = inner
        self.adapter = adapter
        self.name = inner.name
        self.dim = inner.dim

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        return self._adapt(self.inner.embed(images))

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[FloatMask | None] | None
    ) -> Vectors:
        """The inner embedder's mask-pooled vectors (plain ones if it cannot), adapted."""
        if isinstance(self.inner, MaskPoolingEmbedder):
            return self._adapt(self.inner.embed_weighted(images, masks))
        return self.embed(images)

    def _adapt(self, vectors: Vectors) -> Vectors:
        if len(vectors) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.adapter.apply(vectors)
