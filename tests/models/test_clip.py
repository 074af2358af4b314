"""open_clip embedder: random weights built through the registry, checkpoints, tags offline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from search.config import ModelSettings
from search.errors import ModelUnavailable
from search.models import clip
from search.models.base import Embedder
from search.models.clip import OpenClipEmbedder, resolve_source
from search.models.registry import build_embedder
from search.models.weights import file_sha256

SMALL_MODEL = "ViT-S-32"  # same code path as ViT-B-32, half the build time
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and a Hub endpoint that refuses connections."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_PORT_URL)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def _settings(**overrides: object) -> ModelSettings:
    values: dict[str, object] = {"profile": "clip", "clip_model": SMALL_MODEL, "threads": 1}
    return ModelSettings.model_validate({**values, **overrides})


def _images() -> list[Image.Image]:
    """Small images of different sizes and modes (RGB, L, RGBA)."""
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (80, 50), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (200, 30, 4), dtype=np.uint8), mode="RGBA"),
        Image.new("RGB", (64, 64), (200, 30, 30)),
    ]


def _perturb(embedder: OpenClipEmbedder) -> None:
    """Move every weight off the seeded random init, so a failed load cannot pass for a load."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in embedder._model.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return build_embedder(_settings(), pretrained=False)


@pytest.fixture(scope="module")
def reference_transform() -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's own eval transform for SMALL_MODEL, built independently of our code."""
    _, _, transform = open_clip.create_model_and_transforms(SMALL_MODEL, pretrained=None)
    return cast(Callable[[Image.Image], torch.Tensor], transform)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpenClipEmbedder, Path]:
    """A model moved off the seeded random init, and its state dict saved with torch.save."""
    source = OpenClipEmbedder(SMALL_MODEL, None, threads=1)
    _perturb(source)
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(source._model.state_dict(), path)
    return source, path


def _as_clip(embedder: Embedder) -> OpenClipEmbedder:
    assert isinstance(embedder, OpenClipEmbedder)
    return embedder


def test_registry_builds_random_open_clip(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)
    model = _as_clip(embedder)
    assert model.name == f"open-clip:{SMALL_MODEL}:random"
    assert model.dim == open_clip.get_model_config(SMALL_MODEL)["embed_dim"] == 384
    assert model.has_text is True


def test_embed_shapes_dtype_norms(embedder: Embedder) -> None:
    vectors = embedder.embed(_images())
    assert vectors.shape == (4, embedder.dim)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len({row.tobytes() for row in vectors}) == 4  # different images, different vectors


def test_embed_empty_and_batched_equals_single(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, embedder.dim)
    images = _images()[:2]
    together = embedder.embed(images)
    alone = np.concatenate([embedder.embed([image]) for image in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_preprocessing_is_open_clips_eval_transform(
    embedder: Embedder, reference_transform: Callable[[Image.Image], torch.Tensor]
) -> None:
    image = _images()[0]
    assert torch.equal(_as_clip(embedder).preprocess(image), reference_transform(image))


def test_two_builds_are_identical(embedder: Embedder) -> None:
    again = build_embedder(_settings(), pretrained=False)
    images = _images()
    assert np.array_equal(embedder.embed(images), again.embed(images))
    first, second = _as_clip(embedder)._model.state_dict(), _as_clip(again)._model.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_embed_text_shares_the_image_space(embedder: Embedder) -> None:
    model = _as_clip(embedder)
    texts = model.embed_text(["a green armchair", "a wooden dining table", "a lamp"])
    assert texts.shape == (3, model.dim) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert model.embed_text([]).shape == (0, model.dim)
    scores = model.embed(_images()[:1]) @ texts.T  # dims agree: a similarity matrix
    assert scores.shape == (1, 3)


def test_checkpoint_file_loads_bit_identical(trained: tuple[OpenClipEmbedder, Path]) -> None:
    source, path = trained
    loaded = build_embedder(_settings(clip_pretrained=str(path)))
    assert loaded.name == f"open-clip:{SMALL_MODEL}:file-{file_sha256(path)[:12]}"
    images = _images()
    assert np.array_equal(loaded.embed(images), source.embed(images))
    texts = ["a sofa", "a bed"]
    assert np.array_equal(_as_clip(loaded).embed_text(texts), source.embed_text(texts))


def test_local_dir_loads_weights_and_its_preprocessing(
    trained: tuple[OpenClipEmbedder, Path],
    reference_transform: Callable[[Image.Image], torch.Tensor],
    tmp_path: Path,
) -> None:
    source, checkpoint = trained
    (tmp_path / checkpoint.name).symlink_to(checkpoint)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config = {
        "model_cfg": open_clip.get_model_config(SMALL_MODEL),
        "preprocess_cfg": {"mean": mean, "std": std},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))

    loaded = OpenClipEmbedder("ignored", f"local-dir:{tmp_path}", threads=1)
    assert loaded.name == f"open-clip:local-dir:file-{file_sha256(checkpoint)[:12]}"
    image = _images()[0]
    pixels = loaded.preprocess(image)
    # Same resize/crop, the folder's own normalisation: (x - 0.5) / 0.25 vs OpenAI's mean/std.
    restored = reference_transform(image) * torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    restored += torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(pixels, (restored - 0.5) / 0.25, atol=1e-4, rtol=0)
    assert np.array_equal(loaded.embed_text(["a chair"]), source.embed_text(["a chair"]))


def test_local_dir_without_checkpoint_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="no checkpoint"):
        resolve_source(SMALL_MODEL, f"local-dir:{tmp_path}")
    with pytest.raises(ModelUnavailable, match="open_clip_config.json"):
        resolve_source(SMALL_MODEL, f"local-dir:{tmp_path / 'missing'}")


def test_missing_file_and_unknown_tag_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="not found"):
        OpenClipEmbedder(SMALL_MODEL, str(tmp_path / "nope.pt"))
    with pytest.raises(ModelUnavailable, match="known tags: .*laion2b_s34b_b79k"):
        OpenClipEmbedder("ViT-B-32", "no_such_tag")


def test_uncached_tag_offline_fails_fast(offline_hub: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        build_embedder(_settings(clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k"))
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert "unreachable" in message
    assert "open_clip_model.safetensors" in message and "local-dir:" in message


def test_hf_hub_offline_env_fails_without_probing(
    offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(url: str, timeout_s: float) -> str | None:
        raise AssertionError("probed the network although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(clip, "probe_url", no_probe)
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        OpenClipEmbedder("ViT-B-32", "laion2b_s34b_b79k")


@pytest.mark.slow
def test_default_model_and_a_cached_tag_load_offline(offline_hub: Path) -> None:
    """Default ViT-B-32 via the registry; its weights in the HF cache load by tag, no network."""
    from safetensors.torch import save_file

    settings = ModelSettings(profile="clip", threads=1)
    random_model = _as_clip(build_embedder(settings, pretrained=False))
    assert random_model.name == "open-clip:ViT-B-32:random" and random_model.dim == 512

    repo = offline_hub / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    state = {key: value.contiguous() for key, value in random_model._model.state_dict().items()}
    save_file(state, str(snapshot / "open_clip_model.safetensors"))

    tagged = OpenClipEmbedder("ViT-B-32", "laion2b_s34b_b79k", threads=1)
    assert tagged.name == "open-clip:ViT-B-32:laion2b_s34b_b79k"
    images = _images()[:2]
    assert np.array_equal(tagged.embed(images), random_model.embed(images))
