"""Issue 2's store: one table, unique on (scope, key), SQLite in WAL with a busy timeout."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from flask_cnerium.store import open_database
from tests.conftest import BACKENDS
from tests.durable_helpers import ORDER, RECORDS, post, query, records

COLUMNS = {"scope", "idempotency_key", "operation", "fingerprint", "state", "status", "headers",
           "body", "node_id", "owner", "lease_expires_at", "created_at", "expires_at"}


def columns(url: str) -> set[str]:
    if url.startswith("sqlite:///"):
        return {row[1] for row in query(url, f"PRAGMA table_info({RECORDS})")}
    return {row[0] for row in query(
        url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
        (RECORDS,))}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_one_table_with_the_record_columns_unique_on_scope_and_key(make_app, backend):
    app = make_app(**backend.app_kwargs(), config={"CNERIUM_NODE_ID": "node-7"})
    before = time.time()
    post(app.test_client(), ORDER)
    assert columns(backend.records_url) >= COLUMNS
    [record] = records(app)
    assert (record.scope, record.key, record.operation) == ("", "order-123", "orders.create")
    assert (record.state, record.status, record.node_id) == ("completed", 201, "node-7")
    assert before <= record.created_at <= time.time()
    assert len(record.fingerprint) == 64

    with pytest.raises(Exception, match=r"(?i)unique"):
        query(backend.records_url,
              f"INSERT INTO {RECORDS} (scope, idempotency_key, operation, fingerprint, "
              "raw_fingerprint, state, node_id, owner, created_at, expires_at) "
              "VALUES ('', 'order-123', 'x', 'f', 'f', 'completed', 'n', 'o', 0, 0)")
    query(backend.records_url,  # the same key in another scope is another record
          f"INSERT INTO {RECORDS} (scope, idempotency_key, operation, fingerprint, "
          "raw_fingerprint, state, node_id, owner, created_at, expires_at) "
          "VALUES ('user-1', 'order-123', 'x', 'f', 'f', 'completed', 'n', 'o', 0, 0)")


def test_sqlite_store_uses_wal_and_a_busy_timeout(app, client):
    post(client, ORDER)
    database = app.extensions["cnerium"].store.database
    with database.connection_context():
        assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_a_new_sqlite_store_waits_while_another_process_holds_the_file(tmp_path):
    """Processes opening a new store together race to switch it to WAL, and SQLite answers
    the loser "database is locked" at once, whatever its busy timeout: the store retries."""
    path = tmp_path / "cnerium.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE started (a)")  # still in rollback-journal mode
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO started VALUES (1)")
    finishing = threading.Timer(0.3, other.execute, ("COMMIT",))
    finishing.start()
    try:  # opened and used while the other transaction still runs
        database = open_database(f"sqlite:///{path}")
        with database.connection_context():
            assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        database.close_all()
    finally:
        finishing.join()
        other.close()
