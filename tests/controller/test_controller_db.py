"""The schema: migrations match the models on SQLite and PostgreSQL; engine settings."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from controller.db import Base, alembic_config, downgrade_database, make_engine, upgrade_database


def schema_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_schema_of_the_models(db_url):
    downgrade_database(db_url)  # from nothing, not from what earlier tests left
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert not set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
    engine.dispose()

    upgrade_database(db_url)
    upgrade_database(db_url)  # a second start-up finds nothing to do
    assert schema_diff(db_url) == []
    engine = make_engine(db_url)
    with engine.connect() as conn:
        applied = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert applied == head_revision()
    engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_models_with_a_change_the_migrations_lack_show_a_diff(db_url):
    upgrade_database(db_url)
    # the check itself must be able to fail: drop an index and it has to notice
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_detections_label_ts"))
    engine.dispose()
    diff = schema_diff(db_url)
    assert any(d[0] == "add_index" and d[1].name == "ix_detections_label_ts" for d in diff)
    downgrade_database(db_url)
    upgrade_database(db_url)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_runs_in_wal_mode_with_foreign_keys(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_other_databases_are_refused():
    with pytest.raises(ValueError, match="unsupported database"):
        make_engine("mysql://u@127.0.0.1/x")
