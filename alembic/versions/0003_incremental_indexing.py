"""incremental indexing: retired instances and a cheap change stamp per image

`instances.retired_in_run`: set (to the `index_runs` id) when a run replaces an image's
instances; the retired rows stay out of new index versions but keep resolving the vector ids
of the version still being served, until a later run purges them.

`product_images.source_stamp`: a cheap change check of the image's source ("file:SIZE:MTIME_NS",
or the HTTP ETag / Last-Modified), compared before the content hash is computed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("retired_in_run", sa.Integer(), nullable=True))
        batch.create_index("ix_instances_retired_in_run", ["retired_in_run"])
    with op.batch_alter_table("product_images") as batch:
        batch.add_column(sa.Column("source_stamp", sa.String(512), nullable=True))


def downgrade() -> None:
    # Retired rows are not part of any index version a downgraded indexer would build.
    op.execute("DELETE FROM instances WHERE retired_in_run IS NOT NULL")
    with op.batch_alter_table("product_images") as batch:
        batch.drop_column("source_stamp")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_retired_in_run")
        batch.drop_column("retired_in_run")
