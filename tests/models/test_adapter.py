"""The query-side adapter: identity at the start, loss falls, seeded, saved and loaded; the
composite crops it is trained on, made from tiny synthetic photos."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.models.adapter import AdaptedEmbedder, LinearAdapter
from search.models.adapter_train import (
    AdapterOptions,
    CompositeOptions,
    LabelledCutout,
    composite_crops,
    split_rooms,
    train_adapter,
)
from search.models.boxmask_augment import Cutout
from search.types import Vectors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Catalog vectors and queries that are their products seen through a fixed distortion."""
    rng = np.random.default_rng(seed)
    catalog = _unit(rng.normal(size=(12, DIM)))
    targets = rng.integers(0, 12, size=120)
    distort = np.eye(DIM) + 0.6 * rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)
    queries = _unit(catalog[targets] @ distort.T + 0.05 * rng.normal(size=(120, DIM)))
    return queries, targets.astype(np.int64), catalog


class _Fixed:
    name = "fixed"
    dim = DIM

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        if not images:
            return np.zeros((0, DIM), np.float32)
        return _unit(
            np.stack([np.resize(np.asarray(im, np.float32).mean((0, 1)), DIM) + 1 for im in images])
        )


def test_identity_adapter_changes_nothing() -> None:
    q, _, _ = _problem()
    np.testing.assert_allclose(LinearAdapter.identity(DIM).apply(q), q, atol=1e-6)
    low = LinearAdapter(DIM, u=np.zeros((DIM, 4), np.float32), v=np.ones((DIM, 4), np.float32))
    np.testing.assert_allclose(low.apply(q), q, atol=1e-6)


def test_adapted_embedder_keeps_identity_and_unit_rows() -> None:
    rng = np.random.default_rng(1)
    adapter = LinearAdapter(DIM, weight=rng.normal(size=(DIM, DIM)).astype(np.float32))
    wrapped = AdaptedEmbedder(_Fixed(), adapter)
    assert (wrapped.name, wrapped.dim) == ("fixed", DIM)
    out = wrapped.embed([Image.new("RGB", (8, 8), (10 * i, 50, 90)) for i in range(3)])
    assert out.shape == (3, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert wrapped.embed([]).shape == (0, DIM)


class _Pooling(_Fixed):
    """Its mask-pooled vector is the plain one of the image's left half."""

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[np.ndarray | None] | None
    ) -> Vectors:
        return self.embed([im.crop((0, 0, im.width // 2, im.height)) for im in images])


def test_adapted_embedder_adapts_mask_pooled_vectors_where_the_inner_one_pools() -> None:
    rng = np.random.default_rng(2)
    adapter = LinearAdapter(DIM, weight=rng.normal(size=(DIM, DIM)).astype(np.float32))
    image = Image.new("RGB", (8, 8), (200, 10, 10))
    image.paste((10, 10, 200), (4, 0, 8, 8))
    masks = [np.ones((8, 8), np.float32)]
    pooled = AdaptedEmbedder(_Pooling(), adapter).embed_weighted([image], masks)
    left = image.crop((0, 0, 4, 8))
    np.testing.assert_allclose(pooled, adapter.apply(_Fixed().embed([left])), atol=1e-6)
    plain = AdaptedEmbedder(_Fixed(), adapter)  # cannot pool by mask: plain vectors, adapted
    np.testing.assert_allclose(plain.embed_weighted([image], masks), plain.embed([image]))


@pytest.mark.parametrize("rank", [None, 4])
def test_training_starts_at_identity_and_loss_falls(rank: int | None) -> None:
    q, t, c = _problem()
    options = AdapterOptions(epochs=0, rank=rank, lr=1e-2, batch=32, progress=False)
    start, _ = train_adapter(q, t, c, options)
    np.testing.assert_allclose(start.apply(q), q, atol=1e-6)
    trained = AdapterOptions(epochs=15, rank=rank, lr=1e-2, decay=1e-3, batch=32, progress=False)
    adapter, report = train_adapter(q, t, c, trained)
    assert report["loss_last"] < report["loss_first"]
    assert report["train_top1_after"] >= report["train_top1_before"]
    assert adapter.rank == rank


def test_decay_keeps_the_map_near_identity() -> None:
    q, t, c = _problem()
    loose = AdapterOptions(epochs=10, lr=1e-2, decay=0.0, batch=32, progress=False)
    tight = AdapterOptions(epochs=10, lr=1e-2, decay=10.0, batch=32, progress=False)
    assert train_adapter(q, t, c, tight)[1]["drift"] < train_adapter(q, t, c, loose)[1]["drift"]


def test_training_is_deterministic() -> None:
    q, t, c = _problem()
    options = AdapterOptions(epochs=3, lr=1e-2, batch=32, seed=3, progress=False)
    a, _ = train_adapter(q, t, c, options)
    b, _ = train_adapter(q, t, c, options)
    assert a.weight is not None and b.weight is not None
    np.testing.assert_array_equal(a.weight, b.weight)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    low = LinearAdapter(
        DIM,
        u=rng.normal(size=(DIM, 3)).astype(np.float32),
        v=rng.normal(size=(DIM, 3)).astype(np.float32),
        meta={"rank": 3},
    )
    low.save(tmp_path / "a.pt")
    back = LinearAdapter.load(tmp_path / "a.pt")
    q, _, _ = _problem()
    np.testing.assert_allclose(back.apply(q), low.apply(q), atol=1e-6)
    assert back.meta == {"rank": 3}


def test_split_rooms_is_seeded_and_disjoint() -> None:
    rooms = [f"rooms/{i}.jpg" for i in range(20)]
    keep, held = split_rooms(rooms, 5, seed=0)
    assert len(held) == 5 and len(keep) == 15 and not set(keep) & set(held)
    assert split_rooms(list(reversed(rooms)), 5, seed=0) == (keep, held)
    assert split_rooms(rooms, 5, seed=1)[1] != held


def _piece(colour: tuple[int, int, int]) -> Cutout:
    rgb = np.zeros((40, 30, 3), np.uint8) + np.asarray(colour, np.uint8)
    mask = np.zeros((40, 30), bool)
    mask[4:36, 3:27] = True
    return Cutout(rgb, mask)


def test_composite_crops_are_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    room = tmp_path / "room.png"
    Image.fromarray(rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)).save(room)
    cutouts = [
        LabelledCutout("a", _piece((200, 30, 30))),
        LabelledCutout("b", _piece((30, 30, 200))),
    ]
    options = CompositeOptions(count=6, seed=4)
    first = list(composite_crops(cutouts, [room], options))
    again = list(composite_crops(cutouts, [room], options))
    assert len(first) == 6 and {i for i, _ in first} == {0, 1}
    for (i, a), (j, b) in zip(first, again, strict=True):
        assert i == j and a.size == b.size
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_train_embedder_subcommand_parses() -> None:
    from roomlens.cli import build_parser

    args = build_parser().parse_args(
        ["train", "embedder", "--feed", "f.jsonl", "--backgrounds", "rooms", "--rank", "64"]
    )
    assert args.rank == 64 and args.composites == 3000
    assert args.func.__name__ == "cmd_train_embedder"
