"""indexer run history, API keys and the search log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "index_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed", sa.Text(), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("started_at", utc(), nullable=False),
        sa.Column("finished_at", utc(), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("failures", JSON, nullable=False),
        sa.Column("timings_ms", JSON, nullable=False),
        sa.Column("progress", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_index_runs"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed', 'interrupted')",
            name="ck_index_runs_status",
        ),
    )
    op.create_index("ix_index_runs_started_at", "index_runs", ["started_at"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False),
        sa.Column("merchant", sa.String(256), nullable=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("revoked_at", utc(), nullable=True),
        sa.Column("last_used_at", utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"], unique=True)
    op.create_index("ix_api_keys_merchant", "api_keys", ["merchant"])

    op.create_table(
        "search_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("merchant", sa.String(256), nullable=True),
        sa.Column("filters", JSON, nullable=False),
        sa.Column("index_version", sa.String(64), nullable=True),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("top_products", JSON, nullable=False),
        sa.Column("product_count", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("timings_ms", JSON, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("image_path", sa.Text(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_search_log"),
    )
    op.create_index("ix_search_log_created_at", "search_log", ["created_at"])
    op.create_index("ix_search_log_merchant", "search_log", ["merchant"])


def downgrade() -> None:
    op.drop_index("ix_search_log_merchant", table_name="search_log")
    op.drop_index("ix_search_log_created_at", table_name="search_log")
    op.drop_table("search_log")
    op.drop_index("ix_api_keys_merchant", table_name="api_keys")
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_index_runs_started_at", table_name="index_runs")
    op.drop_table("index_runs")
