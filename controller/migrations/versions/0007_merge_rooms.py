"""Join the rooms' branches (ingest at scale, operators, device enrollment, rollouts) into one head.

Each branch starts from 0002 and touches only its own tables, so their order does not matter.

Revision ID: 0007
Revises: 0003, 0004, 0005, 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007"
down_revision: str | Sequence[str] | None = ("0003", "0004", "0005", "0006")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to change: the merge only records that every branch is applied."""


def downgrade() -> None:
    """Nothing to undo: each branch downgrades on its own."""
