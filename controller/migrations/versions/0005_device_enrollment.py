"""Device identities: enrollment tokens, identities awaiting or holding certificates, and the
certificates issued (with their revocations).

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.Column("used_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_enrollment_tokens"),
    )
    op.create_table(
        "device_identities",
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("csr", sa.Text(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device", name="pk_device_identities"),
    )
    op.create_index("ix_device_identities_status", "device_identities", ["status"])
    op.create_table(
        "device_certificates",
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("not_before", sa.Float(), nullable=False),
        sa.Column("not_after", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("serial", name="pk_device_certificates"),
    )
    op.create_index("ix_device_certificates_device", "device_certificates", ["device"])
    op.create_index("ix_device_certificates_revoked_at", "device_certificates", ["revoked_at"])


def downgrade() -> None:
    op.drop_index("ix_device_certificates_revoked_at", table_name="device_certificates")
    op.drop_index("ix_device_certificates_device", table_name="device_certificates")
    op.drop_table("device_certificates")
    op.drop_index("ix_device_identities_status", table_name="device_identities")
    op.drop_table("device_identities")
    op.drop_table("enrollment_tokens")
