"""The merchant features' tables: API keys and the search log. They share the core's
`Base` (one metadata, one Alembic history); `search/` never imports them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from search.db import Base, utcnow


class ApiKey(Base):
    """A merchant's (or an admin's) API key; only a hash of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    merchant: Mapped[str | None] = mapped_column(String(256), index=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class SearchLogEntry(Base):
    """One search as the shopper made it (the photo itself only if configured)."""

    __tablename__ = "search_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    merchant: Mapped[str | None] = mapped_column(String(256), index=True)
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    index_version: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)  # detected label -> count
    top_products: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"skus": [...]}
    product_count: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    timings_ms: Mapped[dict[str, Any]] = mapped_column(default=dict)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer, default=200)
