"""open_clip image and text embedder.

Model and preprocessing come together from `open_clip.create_model_and_transforms`: the eval
transform it returns is the only preprocessing used. Weights (`pretrained`):

- None: random init, seeded, so two builds are identical (tests, no download);
- a local checkpoint file (state dict: .pt, .pth, .bin, .safetensors) for `model_name`;
- "local-dir:PATH": a folder holding `open_clip_config.json` (model and preprocessing config) and a
  checkpoint, loaded by open_clip 3.x's own `local-dir:` schema (the layout of the Hugging Face
  repos open_clip publishes; `model_name` is then ignored);
- a pretrained tag of `model_name` (e.g. "laion2b_s34b_b79k"): taken from the open_clip /
  Hugging Face cache without any network access when it is there, else downloaded by open_clip
  after a short reachability probe, so an offline machine fails in seconds with
  `ModelUnavailable` saying which file to place where.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from search.errors import ModelUnavailable
from search.models.device import set_torch_threads
from search.models.weights import PROBE_TIMEOUT_S, file_sha256, probe_url
from search.types import Vectors

logger = logging.getLogger(__name__)

RANDOM_SEED = 0
BATCH_SIZE = 32  # images or texts per forward pass
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")
DIR_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip looks for in a folder
# open_clip's own preference inside a local-dir folder (factory._find_checkpoint_in_dir).
PREFERRED_CHECKPOINTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_OPEN_CLIP_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    KeyError,
    AssertionError,
    EOFError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True)
class HubCheckpoint:
    """Where open_clip downloads a pretrained tag from, and the cached copy when there is one."""

    url: str
    cached: Path | None
    hint: str  # what to download and where to put it on an offline machine
    hf_repo: str | None  # Hugging Face repo id when the download goes through huggingface_hub


@dataclass(frozen=True)
class ClipSource:
    """The weights an `OpenClipEmbedder` would load, resolved without loading them."""

    model_name: str
    kind: str  # random | file | dir | tag
    value: str | None  # the file, the folder or the tag
    checkpoint: Path | None  # the local weights file, if any (for a tag: its cached copy)
    sha256: str | None = None  # of `checkpoint`, for files and folders
    hint: str = ""  # for an uncached tag: what to place where

    @property
    def identity(self) -> str:
        """The embedder's name: model plus weights, stable across machines."""
        if self.kind == "random":
            return f"open-clip:{self.model_name}:random"
        if self.kind == "tag":
            return f"open-clip:{self.model_name}:{self.value}"
        model = "local-dir" if self.kind == "dir" else self.model_name
        return f"open-clip:{model}:file-{(self.sha256 or '')[:12]}"


# ----------------------------------------------------------------------------- weights sources


def _clean_tag(tag: str) -> str:
    """open_clip's tag normalisation: lower case, '-' as '_'."""
    return tag.lower().replace("-", "_")


def _looks_like_path(value: str) -> bool:
    """Whether `pretrained` names a file rather than a tag."""
    return (
        os.sep in value
        or value.startswith((".", "~"))
        or value.endswith(CHECKPOINT_SUFFIXES)
        or Path(value).exists()
    )


def _dir_checkpoint(folder: Path) -> Path:
    """The checkpoint open_clip picks inside a local-dir folder; ModelUnavailable if none."""
    found = [
        p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in DIR_CHECKPOINT_SUFFIXES
    ]
    for name in PREFERRED_CHECKPOINTS:
        if folder / name in found:
            return folder / name
    safetensors = [p for p in found if p.suffix == ".safetensors"]
    if safetensors or found:
        return (safetensors or found)[0]
    raise ModelUnavailable(
        f"no checkpoint in {folder}: put open_clip_model.safetensors (or "
        f"open_clip_pytorch_model.bin) next to {CONFIG_FILE}"
    )


def _hf_checkpoint(model_name: str, tag: str, hf_hub: str) -> HubCheckpoint:
    """A tag hosted on the Hugging Face Hub: its URL and cached file (safetensors preferred)."""
    from huggingface_hub import constants, hf_hub_url, try_to_load_from_cache
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    candidates = [filename]
    if filename == HF_WEIGHTS_NAME:
        candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    cached = None
    for candidate in candidates:
        hit = try_to_load_from_cache(repo_id, candidate, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(hit, str):
            cached = Path(hit)
            break
    urls = [hf_hub_url(repo_id, name, endpoint=constants.ENDPOINT) for name in candidates]
    config_url = hf_hub_url(repo_id, HF_CONFIG_NAME, endpoint=constants.ENDPOINT)
    hint = (
        f"download {' or '.join(urls)}, and {config_url}, into a folder DIR and set "
        "ROOMLENS_MODELS__CLIP_PRETRAINED=local-dir:DIR (or copy a Hugging Face cache holding "
        f"{repo_id} into {constants.HF_HUB_CACHE})"
    )
    return HubCheckpoint(urls[0], cached, hint, repo_id)


def hub_checkpoint(model_name: str, tag: str) -> HubCheckpoint:
    """Where open_clip gets pretrained `tag` of `model_name`; ModelUnavailable for unknown tags."""
    config = open_clip.get_pretrained_cfg(model_name, tag)
    if not config:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelUnavailable(
            f"open_clip has no pretrained tag {tag!r} for {model_name}; "
            f"known tags: {', '.join(tags) or 'none'}"
        )
    hf_hub = config.get("hf_hub", "")
    if hf_hub and open_clip.pretrained.has_hf_hub():
        return _hf_checkpoint(model_name, tag, hf_hub)
    url = config.get("url", "")
    target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    hint = f"download {url} and put it at {target}"
    return HubCheckpoint(url, target if target.is_file() else None, hint, None)


def resolve_source(model_name: str, pretrained: str | None) -> ClipSource:
    """Classify `pretrained` (None, file, local-dir:PATH or tag) and find its local file."""
    if not pretrained:
        return ClipSource(model_name, "random", None, None)
    if pretrained.startswith(LOCAL_DIR_PREFIX):
        folder = Path(pretrained[len(LOCAL_DIR_PREFIX) :]).expanduser()
        if not (folder / CONFIG_FILE).is_file():
            raise ModelUnavailable(f"{folder} is not an open_clip folder: it needs {CONFIG_FILE}")
        checkpoint = _dir_checkpoint(folder)
        return ClipSource(model_name, "dir", str(folder), checkpoint, file_sha256(checkpoint))
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"open_clip checkpoint file not found: {path}")
        return ClipSource(model_name, "file", str(path), path, file_sha256(path))
    tag = _clean_tag(pretrained)
    hub = hub_checkpoint(model_name, tag)
    return ClipSource(model_name, "tag", tag, hub.cached, hint=hub.hint)


# ----------------------------------------------------------------------------- building


@contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub in offline mode for the block, so a cached file loads with no network call.

    huggingface_hub reads `constants.HF_HUB_OFFLINE` at call time (it is what `HF_HUB_OFFLINE=1`
    sets); open_clip offers no `local_files_only` switch to pass instead.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _hf_offline_requested() -> bool:
    """Whether the user asked huggingface_hub to stay offline (HF_HUB_OFFLINE, at start or now)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def _ensure_downloadable(model_name: str, tag: str, probe_timeout_s: float) -> None:
    """Raise ModelUnavailable fast when an uncached tag cannot be downloaded from here."""
    hub = hub_checkpoint(model_name, tag)
    if hub.cached is not None:
        return
    offline = hub.hf_repo is not None and _hf_offline_requested()
    reason = "HF_HUB_OFFLINE is set" if offline else probe_url(hub.url, probe_timeout_s)
    if reason is not None:
        raise ModelUnavailable(
            f"open_clip weights {model_name}:{tag} are not cached and cannot be downloaded "
            f"({reason}); {hub.hint}"
        )


def _create(
    source: ClipSource, probe_timeout_s: float
) -> tuple[torch.nn.Module, Callable[..., Any]]:
    """The model (eval mode, CPU) and its eval transform, from open_clip's factory."""
    kwargs: dict[str, Any] = {"pretrained_text": False, "pretrained_image": False}
    try:
        if source.kind == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    source.model_name, pretrained=None, **kwargs
                )
        elif source.kind == "dir":
            model, _, preprocess = open_clip.create_model_and_transforms(
                f"{LOCAL_DIR_PREFIX}{source.value}", **kwargs
            )
        elif source.kind == "file":
            model, _, preprocess = open_clip.create_model_and_transforms(
                source.model_name, pretrained=source.value, **kwargs
            )
        else:
            model, preprocess = _create_from_tag(source, probe_timeout_s, kwargs)
    except _OPEN_CLIP_ERRORS as exc:
        raise ModelUnavailable(f"cannot build open_clip {source.identity}: {exc}") from exc
    return model.eval(), preprocess


def _create_from_tag(
    source: ClipSource, probe_timeout_s: float, kwargs: dict[str, Any]
) -> tuple[torch.nn.Module, Callable[..., Any]]:
    """A tagged model: from the cache with no network call, or downloaded by open_clip."""
    tag = str(source.value)
    _ensure_downloadable(source.model_name, tag, probe_timeout_s)
    if source.checkpoint is not None:
        with _hub_offline():
            model, _, preprocess = open_clip.create_model_and_transforms(
                source.model_name, pretrained=tag, **kwargs
            )
    else:
        logger.info("downloading open_clip weights %s:%s", source.model_name, tag)
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.model_name, pretrained=tag, **kwargs
        )
    return model, preprocess


def config_dim(source: ClipSource) -> int:
    """The embedding size from the model's config alone (no weights loaded): open_clip's
    built-in config, or the `open_clip_config.json` of a local folder."""
    if source.kind == "dir":
        config = json.loads((Path(str(source.value)) / CONFIG_FILE).read_text())
        model_cfg = config.get("model_cfg", {})
    else:
        model_cfg = open_clip.get_model_config(source.model_name) or {}
    dim = model_cfg.get("embed_dim")
    if not isinstance(dim, int):
        raise ModelUnavailable(f"no embed_dim in the open_clip config of {source.identity}")
    return dim


def _output_dim(model: torch.nn.Module) -> int:
    """The embedding size: the visual tower's output_dim, else the text projection's width."""
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    if isinstance(dim, int):
        return dim
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor) and projection.ndim == 2:
        return int(projection.shape[1])
    raise ModelUnavailable(f"cannot tell the embedding size of {type(model).__name__}")


class OpenClipEmbedder:
    """Images (and texts) → L2-normalised open_clip embeddings, float32."""

    has_text = True

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        *,
        device: str = "cpu",
        threads: int = 0,
        probe_timeout_s: float | None = None,
    ) -> None:
        set_torch_threads(threads)
        self.source = resolve_source(model_name, pretrained)
        self.name = self.source.identity
        self.device = torch.device(device)
        timeout = PROBE_TIMEOUT_S if probe_timeout_s is None else probe_timeout_s
        model, self._preprocess = _create(self.source, timeout)
        self._model = model.to(self.device)
        self.dim = _output_dim(self._model)
        self._tokenizer: Callable[..., torch.Tensor] | None = None
        logger.info("open_clip embedder %s (dim %d) on %s", self.name, self.dim, self.device)

    @property
    def preprocess(self) -> Callable[..., Any]:
        """open_clip's eval transform for this model: PIL image → normalised (3, S, S) tensor."""
        return self._preprocess

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids for `texts` with the model's own tokenizer (built on first use)."""
        if self._tokenizer is None:
            tokenizer_name = self.source.model_name
            if self.source.kind == "dir":
                tokenizer_name = f"{LOCAL_DIR_PREFIX}{self.source.value}"
            try:
                self._tokenizer = open_clip.get_tokenizer(tokenizer_name)
            except _OPEN_CLIP_ERRORS as exc:
                raise ModelUnavailable(f"no tokenizer for {self.name}: {exc}") from exc
        return self._tokenizer(list(texts))

    def _embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-norm image embeddings of one batch, on the CPU."""
        batch = torch.stack([self._preprocess(image) for image in images]).to(self.device)
        features = self._model.encode_image(batch)  # type: ignore[operator]
        return F.normalize(features.float(), dim=-1).cpu()

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings of one batch, on the CPU."""
        tokens = self._tokenize(texts).to(self.device)
        features = self._model.encode_text(tokens)  # type: ignore[operator]
        return F.normalize(features.float(), dim=-1).cpu()

    def _batched(
        self, items: Sequence[Any], encode: Callable[[Sequence[Any]], torch.Tensor]
    ) -> Vectors:
        """(n, dim) float32 rows from `encode` run over batches of BATCH_SIZE."""
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            chunks = [
                encode(items[start : start + BATCH_SIZE])
                for start in range(0, len(items), BATCH_SIZE)
            ]
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        """An (n, dim) float32 array of unit rows, one per image."""
        return self._batched(images, self._embed_images)

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        """An (n, dim) float32 array of unit rows, one per text, in the image embedding space."""
        return self._batched(texts, self._embed_texts)
