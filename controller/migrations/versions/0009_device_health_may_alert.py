"""The newest health samples that may give a fleet alert, indexed, so the fleet page reads
those few instead of parsing every device's payload.

On PostgreSQL a partial index whose predicate is a superset of the dashboard's health alerts
(a skewed clock, outbox messages dropped, a hot temperature, a `*_now` throttling flag, with
thresholds a little lower; a payload with a \\u escape is always in, since its jsonb cast
could fail on \\u0000). On SQLite, which cannot look inside the JSON in an index, it is a plain
index on the table's key, which the ingest's upserts never change.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the same text as controller.db.DEVICE_HEALTH_MAY_ALERT_PG when this revision was written
MAY_ALERT = (
    "CASE WHEN strpos(payload::text, '\\u') > 0 THEN true ELSE ("
    "abs(received - ts) > 29.0 OR jsonb_path_exists(payload::jsonb, '$ ? ("
    'exists(@.outbox_dropped ? (@.type() != "number" || @ > 0)) || '
    "exists(@.temperatures_c.* ? (@ >= 79)) || "
    'exists(@.throttling.keyvalue() ? (@.value == true && @.key like_regex "_now$")))'
    "', '{}', true)) END"
)


def upgrade() -> None:
    op.create_index(
        "ix_device_health_may_alert",
        "device_health",
        ["device"],
        postgresql_where=sa.text(MAY_ALERT),
    )


def downgrade() -> None:
    op.drop_index("ix_device_health_may_alert", table_name="device_health")
