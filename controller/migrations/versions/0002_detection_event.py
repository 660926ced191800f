"""Detections say which track event they are: start, update or end.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # rows stored before tracking were one per frame: they read as updates
    with op.batch_alter_table("detections") as batch:
        batch.add_column(sa.Column("event", sa.String(8), nullable=False, server_default="update"))


def downgrade() -> None:
    with op.batch_alter_table("detections") as batch:
        batch.drop_column("event")
