"""The one typed settings object: built once (`Settings()`) and passed in, never a global.

Environment variables use the prefix `ROOMLENS_` and `__` for nesting, e.g.
`ROOMLENS_DATABASE_URL`, `ROOMLENS_MODELS__EMBEDDER=efficientnet-lite2`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from search.fetch import FetchPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLE_DIR = REPO_ROOT.parent / "shared" / "datasets" / "ikea"


PROFILES: dict[str, dict[str, str]] = {
    "offline": {"segmenter": "lite", "embedder": "efficientnet-lite0-gem+efficientnet-lite2-gem"},
    "clip": {"segmenter": "torchvision", "embedder": "open-clip"},
}


class ModelSettings(BaseModel):
    """Which models run. `profile` picks defaults; any piece can still be set on its own."""

    profile: Literal["offline", "clip"] = "offline"
    segmenter: str = ""  # "" = the profile's: lite | torchvision | detectron2
    embedder: str = ""  # "" = the profile's: efficientnet-lite0..4 | open-clip
    detector_score: float = Field(0.3, ge=0.0, le=1.0)
    detector_classes: Literal["furniture", "all"] = "furniture"
    max_instances: int = Field(20, ge=1)
    masker: Literal["lite0-boxmask", "u2netp"] = Field(
        "lite0-boxmask",
        description="instance masks: the box-prompted Lite0 mask head (data/models/"
        "box-mask-lite0.pt), or U²-Net-p saliency (mask_mode)",
    )
    mask_weights: Path | None = Field(
        None,
        description="your own mask head (`roomlens train masks --out`), used as it is; unset: "
        "the committed data/models/box-mask-lite0.pt, checked against its card",
    )
    mask_mode: Literal["scene", "box"] = Field(
        "scene", description="masker u2netp: once per photo (scene) or once per box (box)"
    )
    crop_margin: float = Field(0.1, ge=0.0, le=1.0)
    crop_mode: Literal["box", "mask", "soft"] = "box"
    mask_pooling: bool = Field(
        True,
        description="room-photo queries: the embedder pools its feature map under the "
        "instance's mask (it still sees the whole box crop); the catalog side is unchanged "
        "(docs/MASKS.md, 'Mask-aware embedding')",
    )
    lamp_proposals: bool = Field(
        True, description="add lamp boxes from ImageNet class maps (the lite segmenter)"
    )
    lamp_threshold: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="class-map probability that makes a lamp proposal; low, since a weak "
        "proposal's products rank after the confident objects' (confidence_power)",
    )
    lamp_long_side: int = Field(
        960, ge=224, le=2048, description="the photo's longer side for the lamp class maps"
    )
    category_aware: bool = Field(
        True, description="search each detected object among compatible catalog categories"
    )
    closeup: bool = Field(
        True,
        description="a photo one detected object fills most of (closeup_share) is a close-up "
        "of it: the whole photo is searched too, as that object, and its products merged in",
    )
    closeup_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="share of the photo the largest object's box must exceed for a close-up",
    )
    oversample: int = Field(4, ge=1, description="vectors fetched per product asked for")
    score_temperature: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="softmax temperature that turns an instance's similarities into match "
        "probabilities (the score); 0 = raw cosine similarity",
    )
    confidence_power: float = Field(
        2.0,
        ge=0.0,
        le=8.0,
        description="a room photo's product scores are scaled by their instance's detector "
        "confidence to this power, so confident objects rank first across the photo; 0 = off",
    )
    models_dir: Path = REPO_ROOT / "data" / "models"
    threads: int = Field(0, ge=0, description="torch/onnxruntime threads; 0 = all cores")
    device: str = Field("auto", description="auto (cuda when present), cpu or cuda[:N]")
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="EfficientNet-Lite runtime: auto = onnxruntime on the CPU, torch on a GPU",
    )
    precision: Literal["int8", "fp32"] = Field(
        "int8",
        description="int8: onnxruntime runs the committed int8 copies of the pretrained "
        "EfficientNet-Lite0/Lite2 (data/models/, `roomlens quantize`; vectors within a cosine "
        "of ~0.995 of fp32, ~2x faster); fp32 elsewhere and with fp32",
    )
    int8_dir: Path | None = Field(
        None,
        description="a directory of your own int8 copies (`roomlens quantize --out`), used "
        "as they are where a file is there; unset: the committed ones, checked against their "
        "cards",
    )
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = Field(
        None,
        description="open_clip pretrained tag (e.g. laion2b_s34b_b79k), a local checkpoint "
        "file, or local-dir:PATH; None builds random weights",
    )
    maskrcnn_weights: str | None = Field(
        None, description="'DEFAULT' (torchvision download) or a local .pth; None = random"
    )
    detectron2_config: str = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    detectron2_weights: str | None = Field(
        None, description="'DEFAULT' (model zoo download) or a local .pkl/.pth; None = random"
    )

    @model_validator(mode="after")
    def _apply_profile(self) -> ModelSettings:
        defaults = PROFILES[self.profile]
        if not self.segmenter:
            self.segmenter = defaults["segmenter"]
        if not self.embedder:
            self.embedder = defaults["embedder"]
        return self


class IndexSettings(BaseModel):
    """Where the vector index lives. `backend` "faiss" (the default) keeps versioned FAISS
    files under `dir`; "milvus" keeps one Milvus collection per version behind an alias, e.g.
    `ROOMLENS_INDEX__BACKEND=milvus ROOMLENS_INDEX__MILVUS_URI=http://milvus:19530`. `dir`
    still holds the indexer's lock file with either backend."""

    dir: Path = REPO_ROOT / "data" / "index"
    feed: Path | None = Field(None, description="default feed for reindex runs started by the API")
    batch_size: int = Field(16, ge=1)
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss: embedded files under `dir`; milvus: a Milvus server"
    )
    milvus_uri: str = Field(
        "",
        description="http(s)://host:19530 for a Milvus server or cluster, or a local path "
        "ending in .db for embedded milvus-lite (one process only); '' = DIR/milvus.db",
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus credentials: 'user:password' or an API key (none for lite)"
    )
    milvus_db: str = Field("", description="Milvus database name; '' = the server's default")
    milvus_prefix: str = Field(
        "roomlens",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="collection names start with it: PREFIX_v_<version>, alias PREFIX_current",
    )
    milvus_poll_s: float = Field(
        1.0, ge=0.0, description="how often a server asks Milvus which version is current"
    )

    def milvus_target(self) -> str:
        """The Milvus URI to connect to (the configured one, or the lite file under `dir`)."""
        return self.milvus_uri or str(self.dir / "milvus.db")


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    default_k: int = Field(10, ge=1, le=100)
    url_timeout_s: float = Field(10.0, gt=0, description="whole fetch of an `image_url`")
    image_roots: list[Path] = Field(
        default_factory=list,
        description="folders a merchant's product image paths may point into (besides the sample)",
    )
    inference_workers: int = Field(
        1, ge=1, description="searches run at once; the rest queue (models use all cores)"
    )
    photo_cache_mb: int = Field(
        16,
        ge=0,
        description="memory for what searches saw (instances, masks bit-packed, vectors), by "
        "photo hash: the same photo searched again with other filters skips segmenting and "
        "embedding (search.photo_cache; ~100-200 KB a photo); 0 = off",
    )


class FetchSettings(BaseModel):
    """Fetching images from URLs (the API's `image_url`, the indexer's feeds). Loopback,
    private, link-local and other non-public addresses are always refused, except for the
    hosts named here, e.g. `ROOMLENS_FETCH__ALLOW_HOSTS='["images.intranet", "10.1.0.0/16"]'`.
    """

    allow_hosts: list[str] = Field(
        default_factory=list,
        description="host names, addresses or CIDR networks a fetch may reach although they "
        "are not public (an intranet image server; the tests' 127.0.0.1)",
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(20.0, gt=0)
    retries: int = Field(3, ge=0, description="indexer retries on transient failures")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="indexer byte cap")

    def policy(self, **overrides: Any) -> FetchPolicy:
        """The fetch policy these settings describe, with `overrides` (FetchPolicy fields)."""
        fields: dict[str, Any] = {
            "allow_hosts": frozenset(self.allow_hosts),
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "retries": self.retries,
            "max_bytes": self.max_image_bytes,
        }
        return FetchPolicy(**(fields | overrides))


class SearchLogSettings(BaseModel):
    enabled: bool = True
    store_photos: bool = Field(False, description="keep uploaded photos (privacy: off)")
    photo_dir: Path = REPO_ROOT / "data" / "search-photos"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROOMLENS_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = f"sqlite:///{REPO_ROOT / 'data' / 'roomlens.db'}"
    port: int = 8000
    sample_dir: Path | None = DEFAULT_SAMPLE_DIR if DEFAULT_SAMPLE_DIR.exists() else None
    models: ModelSettings = ModelSettings()
    index: IndexSettings = IndexSettings()
    api: ApiSettings = ApiSettings()
    fetch: FetchSettings = FetchSettings()
    search_log: SearchLogSettings = SearchLogSettings()
