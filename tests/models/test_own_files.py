"""Own weights: a mask head trained here and int8 copies quantized here are served when the
settings name them, and an int8 mask network pairs only with the head it was made from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from roomlens.cli import main
from search.config import ModelSettings
from search.errors import ModelUnavailable
from search.models import efficientnet
from search.models.boxmask import INT8_FILE, LiteBoxMasker, lite0, new_head
from search.models.boxmask_train import save_head
from search.models.quantize import head_sha256, quantize_mask_head
from search.models.quantize_data import calibration_set
from search.models.registry import build_embedder, build_masker
from search.models.status import boxmask_status, efficientnet_status
from search.models.weights import file_sha256
from search.types import Box
from tests.tiny_coco import write_annotations


def _own_head(tmp_path: Path) -> Path:
    path = tmp_path / "head.pt"
    save_head(new_head(lite0(pretrained=True), seed=3), path)
    return path


def test_an_own_mask_head_is_served_and_pairs_only_with_its_own_int8_copy(
    tmp_path: Path,
) -> None:
    head = _own_head(tmp_path)
    with pytest.raises(ModelUnavailable, match="MASK_WEIGHTS"):
        LiteBoxMasker(head, threads=1)  # not the head on the card
    own = ModelSettings(mask_weights=head, threads=1)
    unpaired = build_masker(own)
    assert unpaired is not None and unpaired.precision == "fp32"  # type: ignore[attr-defined]

    int8_dir = tmp_path / "int8"
    int8_dir.mkdir()
    calibration = calibration_set(write_annotations(tmp_path), photos=2)
    made = quantize_mask_head(calibration, head, card_sha256=None, progress=False)
    assert head_sha256(made) == file_sha256(head)
    (int8_dir / INT8_FILE).write_bytes(made)
    paired = build_masker(own.model_copy(update={"int8_dir": int8_dir}))
    assert paired is not None and paired.precision == "int8"  # type: ignore[attr-defined]
    photo = calibration.scenes[0]
    boxes = [Box(10, 10, 70, 60), Box(40, 20, 110, 75)]
    for a, b in zip(
        unpaired.probabilities(photo, boxes),  # type: ignore[attr-defined]
        paired.probabilities(photo, boxes),  # type: ignore[attr-defined]
        strict=True,
    ):
        assert np.abs(a - b).max() < 0.15

    # the committed head with that directory: the copy there is of another head
    committed = build_masker(ModelSettings(int8_dir=int8_dir, threads=1))
    assert committed is not None and committed.precision == "fp32"  # type: ignore[attr-defined]
    rows = boxmask_status(own.model_copy(update={"int8_dir": int8_dir}), check_load=True)
    assert [(r.name, r.loads) for r in rows] == [
        ("lite0-boxmask (own)", True),
        ("lite0-boxmask int8 (own)", True),
    ]
    rows = boxmask_status(ModelSettings(int8_dir=int8_dir, threads=1), check_load=True)
    assert [(r.name, r.loads) for r in rows] == [
        ("lite0-boxmask", True),
        ("lite0-boxmask int8 (own)", False),
    ]


def test_quantize_on_other_photos_makes_copies_that_int8_dir_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8"
    annotations = write_annotations(tmp_path)
    argv = ["quantize", "--annotations", str(annotations), "--models", "lite0"]
    code = main([*argv, "--photos", "1", "--check", "1", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    made = report["models"]["efficientnet-lite0-int8.onnx"]
    assert made["on_its_card"] is False  # calibrated on other photos than the committed copy
    assert made["cosine_to_fp32"]["min"] > 0.9
    assert report["serve"] == f"ROOMLENS_MODELS__INT8_DIR={out.resolve()}"

    settings = ModelSettings(int8_dir=out, threads=1, embedder="efficientnet-lite0-gem")
    embedder = build_embedder(settings)
    assert getattr(embedder, "precision", None) == "int8"
    rows = efficientnet_status("efficientnet-lite0-gem", settings, check_load=True, fetch_s=None)
    assert [(r.name, r.loads) for r in rows][-1] == ("efficientnet-lite0-gem int8 (own)", True)
    with pytest.raises(ModelUnavailable, match="INT8_DIR"):  # the card still guards data/models
        efficientnet.EfficientNetLiteEmbedder(0, int8=out / "efficientnet-lite0-int8.onnx")
