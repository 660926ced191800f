"""The test run's PostgreSQL database, made ready for one more test."""

from __future__ import annotations

from sqlalchemy import text

from controller.db import Base, make_engine, upgrade_database


def fresh_postgres(url: str) -> str:
    """Migrate the database at `url` and empty every table; returns `url`."""
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
    finally:
        engine.dispose()
    return url
