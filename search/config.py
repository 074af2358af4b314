"""The one typed settings object. Built once (`Settings()`) and passed in, never imported as a global.

Environment variables use the prefix `ROOMLENS_` and `__` for nesting, e.g.
`ROOMLENS_DATABASE_URL`, `ROOMLENS_MODELS__EMBEDDER=efficientnet-lite2`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLE_DIR = REPO_ROOT.parent / "shared" / "datasets" / "ikea"


class ModelSettings(BaseModel):
    profile: Literal["offline", "clip"] = "offline"
    segmenter: str = "lite"
    embedder: str = "efficientnet-lite0"
    detector_score: float = Field(0.3, ge=0.0, le=1.0)
    max_instances: int = Field(20, ge=1)
    crop_margin: float = Field(0.1, ge=0.0, le=1.0)
    models_dir: Path = REPO_ROOT / "data" / "models"
    threads: int = Field(0, ge=0, description="torch/onnxruntime threads; 0 = all cores")
    device: str = "cpu"


class IndexSettings(BaseModel):
    dir: Path = REPO_ROOT / "data" / "index"
    batch_size: int = Field(16, ge=1)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    default_k: int = Field(10, ge=1, le=100)


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
