"""The model registry: names, settings plumbing, random builds of every backend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.coco import FURNITURE_CLASSES
from search.config import ModelSettings
from search.errors import InvalidInput
from search.models.base import Embedder, Segmenter
from search.models.ensemble import ConcatEmbedder
from search.models.registry import (
    EMBEDDERS,
    SEGMENTERS,
    available_embedders,
    available_segmenters,
    build_embedder,
    build_segmenter,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_available_names() -> None:
    assert available_segmenters() == ["detectron2", "lite", "torchvision"] == sorted(SEGMENTERS)
    assert available_embedders() == sorted(EMBEDDERS)
    lite = {f"efficientnet-lite{v}{pooling}" for v in range(5) for pooling in ("", "-gem")}
    assert set(available_embedders()) == lite | {"open-clip"}


def test_profiles_pick_backends() -> None:
    offline, clip = ModelSettings(), ModelSettings(profile="clip")
    ensemble = "efficientnet-lite0-gem+efficientnet-lite2-gem"
    assert (offline.segmenter, offline.embedder) == ("lite", ensemble)
    assert (clip.segmenter, clip.embedder) == ("torchvision", "open-clip")
    for name in (clip.segmenter, offline.segmenter):
        assert name in available_segmenters()
    for name in (clip.embedder, *offline.embedder.split("+")):
        assert name in available_embedders()


def test_unknown_names_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="choose one of: .*open-clip"):
        build_embedder(ModelSettings(embedder="resnet"))
    with pytest.raises(InvalidInput, match="unknown embedder 'resnet'"):
        build_embedder(ModelSettings(embedder="efficientnet-lite0+resnet"), pretrained=False)
    with pytest.raises(InvalidInput, match="choose one of: detectron2, lite, torchvision"):
        build_segmenter(ModelSettings(segmenter="sam"))


def test_random_open_clip_ignores_the_configured_tag() -> None:
    """pretrained=False never looks at clip_pretrained: no download, no file needed."""
    settings = ModelSettings(
        profile="clip", clip_model="ViT-S-32", clip_pretrained="laion2b_s34b_b79k", threads=1
    )
    embedder = build_embedder(settings, pretrained=False)
    assert isinstance(embedder, Embedder)
    assert embedder.name == "open-clip:ViT-S-32:random"
    vectors = embedder.embed([Image.new("RGB", (32, 48), "gray")])
    assert vectors.shape == (1, embedder.dim) and vectors.dtype == np.float32


def test_random_efficientnet_and_lite_build() -> None:
    settings = ModelSettings(threads=1)
    embedder = build_embedder(settings, pretrained=False)
    assert isinstance(embedder, Embedder) and isinstance(embedder, ConcatEmbedder)
    assert embedder.name == "efficientnet-lite0-gem-random+efficientnet-lite2-gem-random"
    assert embedder.dim == 2 * 1280
    segmenter = build_segmenter(settings, pretrained=False)
    assert isinstance(segmenter, Segmenter) and segmenter.name.startswith("lite(")


def test_torchvision_gets_its_settings() -> None:
    settings = ModelSettings(
        profile="clip",
        maskrcnn_weights="DEFAULT",  # ignored: pretrained=False
        detector_score=0.45,
        max_instances=7,
        threads=1,
        device="cpu",
    )
    segmenter = build_segmenter(settings, pretrained=False)
    assert isinstance(segmenter, Segmenter)
    assert segmenter.name == "torchvision-maskrcnn-v2:random"
    assert getattr(segmenter, "score_threshold", None) == 0.45
    assert getattr(segmenter, "classes", None) == FURNITURE_CLASSES
    assert getattr(segmenter, "max_instances", None) == 7
    assert str(getattr(segmenter, "device", "")) == "cpu"


def test_the_lamp_proposer_shares_the_embedders_lite0() -> None:
    """One Lite0 network and onnxruntime session serve the lamp class maps and the embedder's
    Lite0 part; another thread count gets its own session."""
    from search.models.cam import ClassMapProposer
    from search.models.efficientnet import EfficientNetLiteEmbedder
    from search.models.lite import LiteSegmenter

    settings = ModelSettings(threads=1)
    embedder, segmenter = build_embedder(settings), build_segmenter(settings)
    assert isinstance(embedder, ConcatEmbedder) and isinstance(segmenter, LiteSegmenter)
    lite0, proposer = embedder.parts[0], segmenter.proposer
    assert isinstance(lite0, EfficientNetLiteEmbedder) and isinstance(proposer, ClassMapProposer)
    assert lite0.variant == proposer.model.variant == 0
    assert proposer.model._session is lite0._session is not None
    assert proposer.model._model is lite0._model
    assert EfficientNetLiteEmbedder(0, threads=2)._session is not lite0._session


@pytest.mark.parametrize(
    ("embedder", "profile"),
    [
        ("efficientnet-lite0", "offline"),
        ("efficientnet-lite0-gem+efficientnet-lite2-gem", "offline"),
        ("open-clip", "clip"),
    ],
)
def test_identity_without_weights_is_what_the_built_embedder_says(
    embedder: str, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.models import clip, efficientnet
    from search.models.registry import embedder_identity

    settings = ModelSettings(profile=profile, embedder=embedder, clip_model="ViT-S-32", threads=1)
    built = build_embedder(settings, pretrained=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the identity must not build a model")

    monkeypatch.setattr(efficientnet.EfficientNetLiteEmbedder, "__init__", refuse)
    monkeypatch.setattr(clip.OpenClipEmbedder, "__init__", refuse)
    identity = embedder_identity(settings, pretrained=False)
    assert (identity.name, identity.dim) == (built.name, built.dim)


def test_default_identity_names_the_pretrained_ensemble() -> None:
    from search.models.registry import embedder_identity

    identity = embedder_identity(ModelSettings())
    assert identity.name == "efficientnet-lite0-gem+efficientnet-lite2-gem"
    assert identity.dim == 2560


def test_the_lite_segmenter_masks_every_box_with_the_configured_masker() -> None:
    from search.models.boxmask import LiteBoxMasker
    from search.models.lite import LiteSegmenter
    from search.models.registry import build_masker

    settings = ModelSettings(threads=1, lamp_proposals=False)
    masker = build_masker(settings, pretrained=False)
    assert isinstance(masker, LiteBoxMasker) and masker.name == "lite0-boxmask-random"
    segmenter = build_segmenter(settings, pretrained=False, masker=masker)
    assert isinstance(segmenter, LiteSegmenter) and segmenter.box_masker is masker
    assert "lite0-boxmask-random" in segmenter.name
    assert build_masker(ModelSettings(masker="u2netp")) is None
    old = build_segmenter(ModelSettings(masker="u2netp", threads=1, lamp_proposals=False))
    assert isinstance(old, LiteSegmenter) and old.box_masker is None
